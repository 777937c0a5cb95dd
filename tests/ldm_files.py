"""Original (LDM-layout) single-file checkpoints written by the tests (issue 20, item 9).

`ldm_state_dict(unet, vae, text_encoder)` renames diffusers / transformers state dicts to the names the original
Stable Diffusion code saved (`model.diffusion_model.input_blocks...`, `first_stage_model.encoder.down...`,
`cond_stage_model.transformer.text_model...`); the mapping is written here for any level count and layers per block,
so tiny models give tiny files in the layout of instruct-pix2pix-00-22000.safetensors. `write_ldm(path, pipe)` saves
one, `write_config_folder(folder, pipe)` the diffusers configs (unet/, vae/, text_encoder/, scheduler/, tokenizer/,
model_index.json) a conversion of it needs, as `MOVIE_LDM_CONFIG` takes them.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import torch

_RESNET = {"norm1": "in_layers.0", "conv1": "in_layers.2", "time_emb_proj": "emb_layers.1", "norm2": "out_layers.0",
           "conv2": "out_layers.3", "conv_shortcut": "skip_connection"}
_VAE_ATTN = {"group_norm": "norm", "to_q": "q", "to_k": "k", "to_v": "v", "to_out.0": "proj_out"}


def _swap(rest: str, table: dict[str, str]) -> str:
    for old, new in table.items():
        if rest == old or rest.startswith(old + "."):
            return new + rest[len(old):]
    return rest


def unet_to_ldm(state: dict[str, Any], config: Any) -> dict[str, Any]:
    """A diffusers UNet2DConditionModel state dict under the original UNetModel's names."""
    per = config["layers_per_block"] + 1
    out: dict[str, Any] = {}
    for key, value in state.items():
        p = key.split(".")
        if p[0] == "time_embedding":
            name = f"time_embed.{ {'linear_1': 0, 'linear_2': 2}[p[1]] }." + ".".join(p[2:])
        elif p[0] == "conv_in":
            name = "input_blocks.0.0." + ".".join(p[1:])
        elif p[0] == "conv_norm_out":
            name = "out.0." + ".".join(p[1:])
        elif p[0] == "conv_out":
            name = "out.2." + ".".join(p[1:])
        elif p[0] == "down_blocks":
            i, kind, j, rest = int(p[1]), p[2], int(p[3]), ".".join(p[4:])
            if kind == "resnets":
                name = f"input_blocks.{per * i + j + 1}.0.{_swap(rest, _RESNET)}"
            elif kind == "attentions":
                name = f"input_blocks.{per * i + j + 1}.1.{rest}"
            else:  # downsamplers.0.conv
                name = f"input_blocks.{per * (i + 1)}.0.op." + ".".join(p[5:])
        elif p[0] == "mid_block":
            j, rest = int(p[2]), ".".join(p[3:])
            name = (f"middle_block.{2 * j}.{_swap(rest, _RESNET)}" if p[1] == "resnets"
                    else f"middle_block.1.{rest}")
        elif p[0] == "up_blocks":
            i, kind, j, rest = int(p[1]), p[2], int(p[3]), ".".join(p[4:])
            if kind == "resnets":
                name = f"output_blocks.{per * i + j}.0.{_swap(rest, _RESNET)}"
            elif kind == "attentions":
                name = f"output_blocks.{per * i + j}.1.{rest}"
            else:  # upsamplers.0.conv: after the attention when the block has one
                has_attn = "CrossAttn" in config["up_block_types"][i]
                name = f"output_blocks.{per * i + per - 1}.{2 if has_attn else 1}.conv." + ".".join(p[5:])
        else:
            raise KeyError(f"no LDM name for {key}")
        out["model.diffusion_model." + name] = value
    return out


def vae_to_ldm(state: dict[str, Any], config: Any) -> dict[str, Any]:
    """A diffusers AutoencoderKL state dict under the original AutoencoderKL's names (1x1 conv attention)."""
    levels = len(config["block_out_channels"])
    out: dict[str, Any] = {}
    for key, value in state.items():
        p = key.split(".")
        side = p[0]
        if side in ("quant_conv", "post_quant_conv"):
            name = key
        elif p[1] == "conv_norm_out":
            name = f"{side}.norm_out." + ".".join(p[2:])
        elif p[1] in ("conv_in", "conv_out"):
            name = key
        elif p[1] in ("down_blocks", "up_blocks"):
            i = int(p[2]) if p[1] == "down_blocks" else levels - 1 - int(p[2])
            stage = "down" if p[1] == "down_blocks" else "up"
            if p[3] == "resnets":
                name = f"{side}.{stage}.{i}.block.{p[4]}." + _swap(".".join(p[5:]), {"conv_shortcut": "nin_shortcut"})
            else:  # downsamplers.0.conv / upsamplers.0.conv
                name = f"{side}.{stage}.{i}.{'downsample' if stage == 'down' else 'upsample'}.conv." + ".".join(p[6:])
        elif p[1] == "mid_block":
            if p[2] == "resnets":
                name = f"{side}.mid.block_{int(p[3]) + 1}." + _swap(".".join(p[4:]), {"conv_shortcut": "nin_shortcut"})
            else:
                name = f"{side}.mid.attn_1." + _swap(".".join(p[4:]), _VAE_ATTN)
                if value.dim() == 2:
                    value = value[:, :, None, None]
        else:
            raise KeyError(f"no LDM name for {key}")
        out["first_stage_model." + name] = value
    return out


def text_to_ldm(state: dict[str, Any]) -> dict[str, Any]:
    """A CLIPTextModel state dict under the names SD-1.x files use (with the position_ids buffer they carry)."""
    out = {f"cond_stage_model.transformer.text_model.{k.removeprefix('text_model.')}": v for k, v in state.items()}
    positions = next(v for k, v in state.items() if k.endswith("position_embedding.weight")).shape[0]
    out["cond_stage_model.transformer.text_model.embeddings.position_ids"] = torch.arange(positions)[None]
    return out


def ldm_state_dict(unet: Any, vae: Any, text_encoder: Any) -> dict[str, Any]:
    """The three models' tensors as one original LDM checkpoint."""
    return {**unet_to_ldm(unet.state_dict(), unet.config), **vae_to_ldm(vae.state_dict(), vae.config),
            **text_to_ldm(text_encoder.state_dict())}


def write_ldm(path: Path, pipe: Any, drop: tuple[str, ...] = ()) -> Path:
    """Save a pipeline's UNet, VAE and text encoder as an LDM-layout .safetensors file (without the keys in drop)."""
    from safetensors.torch import save_file

    state = {k: v.contiguous().clone() for k, v in ldm_state_dict(pipe.unet, pipe.vae, pipe.text_encoder).items()
             if k not in drop}
    Path(path).parent.mkdir(parents=True, exist_ok=True)
    save_file(state, str(path), metadata={"format": "pt"})
    return Path(path)


def write_config_folder(folder: Path, pipe: Any) -> Path:
    """The diffusers configs of a pipeline, without weights: what MOVIE_LDM_CONFIG names."""
    folder = Path(folder)
    pipe.unet.save_config(folder / "unet")
    pipe.vae.save_config(folder / "vae")
    pipe.text_encoder.config.save_pretrained(folder / "text_encoder")
    pipe.scheduler.save_config(folder / "scheduler")
    pipe.tokenizer.save_pretrained(folder / "tokenizer")
    (folder / "model_index.json").write_text(json.dumps({
        "_class_name": "StableDiffusionInstructPix2PixPipeline",
        "scheduler": ["diffusers", type(pipe.scheduler).__name__],
        "text_encoder": ["transformers", "CLIPTextModel"], "tokenizer": ["transformers", "CLIPTokenizer"],
        "unet": ["diffusers", "UNet2DConditionModel"], "vae": ["diffusers", "AutoencoderKL"]}))
    return folder
