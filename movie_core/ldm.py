"""Original single-file checkpoints in the LDM layout (`model.diffusion_model.*`, `first_stage_model.*`,
`cond_stage_model.transformer.*`, e.g. instruct-pix2pix-00-22000.safetensors) -> a diffusers model folder.

The tensors are renamed with diffusers' own single-file mapping functions (the ones `from_single_file` uses) and
loaded into models built from diffusers-format configs: by default the SD-1.5 / InstructPix2Pix configs and the
CLIP tokenizer that ship in this package (no network); `MOVIE_LDM_CONFIG=DIR` (or `config=`) names another folder
of component configs laid out as a diffusers model (unet/config.json, vae/config.json, text_encoder/config.json,
scheduler/, tokenizer/). Every tensor the models need must be in the file with the shape the config gives it.
"""

from __future__ import annotations

import gzip
import json
import os
import shutil
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from movie_core.errors import MovieError

UNET_PREFIX = "model.diffusion_model."
VAE_PREFIX = "first_stage_model."
CLIP_PREFIX = "cond_stage_model.transformer."
PREFIXES = {"unet": UNET_PREFIX, "vae": VAE_PREFIX, "text_encoder": CLIP_PREFIX}
WHAT = {"unet": "UNet", "vae": "autoencoder", "text_encoder": "CLIP text encoder"}
SHIPPED = Path(__file__).parent / "ldm_configs" / "sd15-ip2p"
CONFIG_ENV = "MOVIE_LDM_CONFIG"


def is_ldm(keys: Any) -> bool:
    """Whether a checkpoint's tensor names are in the original LDM layout (a UNet under model.diffusion_model.)."""
    return any(str(k).startswith(UNET_PREFIX) for k in keys)


def config_folder(config: str | Path | None = None) -> Path:
    """The folder of diffusers-format component configs a conversion uses: `config`, $MOVIE_LDM_CONFIG, or the
    shipped SD-1.5 / InstructPix2Pix configs."""
    chosen = config or os.environ.get(CONFIG_ENV) or SHIPPED
    folder = Path(chosen).expanduser()
    if not (folder / "unet" / "config.json").is_file():
        origin = f"${CONFIG_ENV}" if not config and os.environ.get(CONFIG_ENV) else "config folder"
        raise MovieError(f"{folder} ({origin}) has no unet/config.json: not a folder of diffusers component configs")
    return folder


def _read_json(path: Path) -> dict[str, Any]:
    from movie_core.weight_files import read_config

    return read_config(path)


def _mapped(path: Path, name: str, tensors: Mapping[str, Any], cfg: dict[str, Any]) -> dict[str, Any]:
    """The file's tensors of one component under diffusers' names."""
    from diffusers.loaders.single_file_utils import convert_ldm_unet_checkpoint, convert_ldm_vae_checkpoint

    prefix = PREFIXES[name]
    part = {k: v for k, v in tensors.items() if k.startswith(prefix)}
    if not part:
        raise MovieError(f"{path}: no {WHAT[name]} in this checkpoint (no tensors named {prefix}*)")
    try:
        if name == "unet":
            return dict(convert_ldm_unet_checkpoint(part, cfg))
        if name == "vae":
            return dict(convert_ldm_vae_checkpoint(part, cfg))
    except Exception as exc:  # diffusers' mapping indexes the names it expects: a missing one is a KeyError
        reason = " ".join(str(exc).split())[:200] or type(exc).__name__
        what = f"{type(exc).__name__}: {reason}"
        raise MovieError(f"{path}: incomplete {WHAT[name]} in this checkpoint ({what})") from None
    # CLIP: transformers' CLIPTextModel keeps its layers at the top level (older files nest them in text_model.)
    out = {}
    for key, value in part.items():
        key = key[len(prefix):]
        key = key.removeprefix("text_model.")
        if key.endswith("position_ids"):  # a buffer, not a weight
            continue
        out[key] = value
    return out


def build_models(path: Path, tensors: Mapping[str, Any], config: str | Path | None = None) -> dict[str, Any]:
    """The UNet, VAE and CLIP text encoder of an LDM checkpoint, built from the config folder and loaded with the
    file's tensors (meta tensors give meta models: the names and shapes are checked all the same).

    A tensor missing, left over or of another shape than the config's is one MovieError naming the file."""
    import torch
    from diffusers import AutoencoderKL, UNet2DConditionModel
    from transformers import CLIPTextConfig, CLIPTextModel

    folder = config_folder(config)
    unet_cfg = _read_json(folder / "unet" / "config.json")
    conv_in = tensors.get(UNET_PREFIX + "input_blocks.0.0.weight")
    if conv_in is not None and len(conv_in.shape) == 4:  # 8 input channels: InstructPix2Pix; 4: text-to-image
        unet_cfg["in_channels"] = int(conv_in.shape[1])
    vae_cfg = _read_json(folder / "vae" / "config.json")
    text_cfg = CLIPTextConfig.from_pretrained(folder / "text_encoder", local_files_only=True)
    models: dict[str, Any] = {}
    with torch.device("meta"):
        models["unet"] = UNet2DConditionModel.from_config(unet_cfg)
        models["vae"] = AutoencoderKL.from_config(vae_cfg)
        models["text_encoder"] = CLIPTextModel(text_cfg)
    configs = {"unet": unet_cfg, "vae": vae_cfg, "text_encoder": {}}
    for name, model in models.items():
        state = _mapped(path, name, tensors, configs[name])
        wanted = model.state_dict()
        missing = [k for k in wanted if k not in state]
        extra = [k for k in state if k not in wanted]
        if missing or extra:
            head = f"missing {len(missing)} tensors (e.g. {missing[0]})" if missing else ""
            tail = f"{len(extra)} tensors it has no place for (e.g. {extra[0]})" if extra else ""
            raise MovieError(
                f"{path}: its {WHAT[name]} does not match {folder / name}: "
                + "; ".join(x for x in (head, tail) if x)
                + ("" if config or os.environ.get(CONFIG_ENV) else f" (set {CONFIG_ENV}=DIR for other configs)")
            )
        for key, value in wanted.items():
            if tuple(state[key].shape) != tuple(value.shape):
                raise MovieError(
                    f"{path}: its {WHAT[name]} does not match {folder / name}: {key} is {list(state[key].shape)}, "
                    f"the config makes it {list(value.shape)}"
                    + ("" if config or os.environ.get(CONFIG_ENV) else f" (set {CONFIG_ENV}=DIR for other configs)")
                )
        model.load_state_dict(state, strict=True, assign=True)
        model.eval()
    return models


def read_checkpoint(path: Path) -> dict[str, Any]:
    """The tensors of a single-file checkpoint: .safetensors (header checked first), or a pickle .ckpt only with
    MOVIE_ALLOW_PICKLE=1."""
    from movie_core.weight_files import PICKLE_SUFFIXES, PickleRefused, allow_pickle, check_safetensors

    path = Path(path)
    if path.suffix in PICKLE_SUFFIXES:
        if not allow_pickle():
            raise PickleRefused(
                f"{path} is a pickle checkpoint; loading it can run arbitrary code. "
                "Use a .safetensors file, or set MOVIE_ALLOW_PICKLE=1 if you trust it"
            )
        import torch

        try:
            obj = torch.load(str(path), map_location="cpu", weights_only=False)
        except Exception as exc:
            raise MovieError(f"{path}: cannot read: {type(exc).__name__}: {' '.join(str(exc).split())[:200]}") from None
        state = obj.get("state_dict", obj) if isinstance(obj, dict) else None
        if not isinstance(state, dict):
            raise MovieError(f"{path}: not a checkpoint of named tensors")
        return state
    names = check_safetensors(path)
    from safetensors import safe_open

    wanted = [k for k in names if k.startswith(tuple(PREFIXES.values()))] if is_ldm(names) else list(names)
    try:  # only the tensors the models use: EMA copies and the rest of a training checkpoint stay on disk
        with safe_open(str(path), framework="pt") as f:
            return {k: f.get_tensor(k) for k in wanted}
    except Exception as exc:
        raise MovieError(f"{path}: cannot read: {type(exc).__name__}: {' '.join(str(exc).split())[:200]}") from None


def write_tokenizer(src: Path, dest: Path) -> None:
    """Copy a tokenizer folder; a shipped `merges.txt.gz` becomes merges.txt plus the vocab.json CLIP derives
    from it (its byte tokens, their end-of-word forms, one token per merge, then the two specials)."""
    dest.mkdir(parents=True, exist_ok=True)
    for item in src.iterdir():
        if item.is_file() and item.name != "merges.txt.gz":
            shutil.copyfile(item, dest / item.name)
    packed = src / "merges.txt.gz"
    if not packed.is_file():
        return
    text = gzip.decompress(packed.read_bytes()).decode("utf-8")
    (dest / "merges.txt").write_text(text, encoding="utf-8")
    merges = [line.split() for line in text.splitlines()[1:] if line.strip()]
    chars = _byte_chars()
    tokens = chars + [c + "</w>" for c in chars] + ["".join(m) for m in merges] + ["<|startoftext|>", "<|endoftext|>"]
    (dest / "vocab.json").write_text(json.dumps({t: i for i, t in enumerate(tokens)}, ensure_ascii=False),
                                     encoding="utf-8")


def _byte_chars() -> list[str]:
    """The 256 printable characters byte-level BPE stands for bytes with, in CLIP's order."""
    shown = [*range(ord("!"), ord("~") + 1), *range(ord("¡"), ord("¬") + 1), *range(ord("®"), ord("ÿ") + 1)]
    hidden = [b for b in range(256) if b not in shown]
    return [chr(b) for b in shown] + [chr(256 + i) for i in range(len(hidden))]


def convert_file(path: Path, dest: Path, config: str | Path | None = None) -> Path:
    """Write `dest` (a new folder) as a diffusers model folder holding an LDM checkpoint's UNet, VAE and CLIP text
    encoder, with the config folder's scheduler, tokenizer and model_index.json."""
    path = Path(path)
    folder = config_folder(config)
    tensors = read_checkpoint(path)
    if not is_ldm(tensors):
        raise MovieError(f"{path}: not an original (LDM-layout) checkpoint: no tensors named {UNET_PREFIX}*")
    models = build_models(path, tensors, config)
    dest.mkdir(parents=True)
    for name, model in models.items():
        model.save_pretrained(dest / name, safe_serialization=True)
    if (folder / "scheduler").is_dir():
        shutil.copytree(folder / "scheduler", dest / "scheduler")
    if (folder / "tokenizer").is_dir():
        write_tokenizer(folder / "tokenizer", dest / "tokenizer")
    index = _read_json(folder / "model_index.json") if (folder / "model_index.json").is_file() else {
        "_class_name": "StableDiffusionInstructPix2PixPipeline", "scheduler": ["diffusers", "DDIMScheduler"],
        "text_encoder": ["transformers", "CLIPTextModel"], "tokenizer": ["transformers", "CLIPTokenizer"],
        "unet": ["diffusers", "UNet2DConditionModel"], "vae": ["diffusers", "AutoencoderKL"],
    }
    if models["unet"].config.in_channels != 8:  # a text-to-image UNet: say so rather than claim InstructPix2Pix
        index["_class_name"] = "StableDiffusionPipeline"
    (dest / "model_index.json").write_text(json.dumps(index, indent=2) + "\n")
    return dest
