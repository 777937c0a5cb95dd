"""Folder-level conversion: any model source to a diffusers model folder, optionally with its UNet carried into
another denoiser stage's architecture (weights carried over, removed blocks dropped)."""

from __future__ import annotations

import shutil
from pathlib import Path
from typing import Any

from movie_core.errors import MovieError, UsageError
from movie_core.weights import (
    _REPO_ID,
    PICKLE_SUFFIXES,
    check_folder,
    check_model_folder,
    component_folder,
    read_config,
    read_manifest,
    replace_folder,
    resolve_model,
    write_manifest,
)

# the autoencoder a folder's vae/config.json class is (what the manifest records, so the folder runs without --vae)
_VAE_CLASSES = {"AutoencoderKL": "sd-vae", "AutoencoderTiny": "taesd"}

MD_TARGETS = ("mobile-diffusion-pix2pix", "mobile-diffusion-pix2pix-mmg", "mobile-diffusion-pix2pix-1step")


def _ldm_file(source: str) -> Path | None:
    """`source` when it is an original LDM-layout checkpoint file (converted straight into the output)."""
    from movie_core import ldm
    from movie_core.weights import check_safetensors

    path = Path(source).expanduser()
    if not path.is_file():
        return None
    if path.suffix in PICKLE_SUFFIXES:
        return path  # refused by ldm.read_checkpoint unless MOVIE_ALLOW_PICKLE=1
    if path.suffix == ".safetensors" and ldm.is_ldm(check_safetensors(path)):
        return path
    return None


def _source_folder(source: str) -> Path:
    path = Path(source).expanduser()
    if not path.exists() and not _REPO_ID.match(source):
        raise UsageError(f"{source} is not a model folder (no such file or folder)")
    folder = resolve_model(source)  # folder, HF-cache snapshot, repo id in the local cache, single file
    if not (folder / "unet").is_dir():
        raise UsageError(f"{source} is not a model folder (no unet/)")
    for entry in folder.iterdir():
        if entry.is_dir():
            component_folder(folder, entry.name)  # refuses a linked folder that leaves the model's parent
    check_model_folder(folder)  # a damaged component is one line naming it, not copied into the output
    return folder


def autoencoder_of(folder: Path) -> str | None:
    """The movie autoencoder a model folder's vae/ holds ('sd-vae' for AutoencoderKL), or None."""
    config = Path(folder) / "vae" / "config.json"
    if not config.is_file():
        return None
    return _VAE_CLASSES.get(str(read_config(config).get("_class_name")))


def convert_folder(source: str | Path, target: str | None, out: Path, overwrite: bool = False,
                   guidance_inject: str | None = None, drop_top_attention: bool = False) -> Path:
    """Write `out`: the source (model folder, HF-cache snapshot or repo id, movie single file or original LDM
    checkpoint) as a model folder, its UNet converted to `target`'s architecture when a target is given.

    A text-to-image SD UNet (4 input channels) converts too (Sec. 4's order: top attention dropped, zeroed image
    channels added). guidance_inject: how an embedded target takes the scales (None: the source's, else 'resnet').
    drop_top_attention (no target): the same denoiser with its top level's attention removed (Sec. 4 Stage 1)."""
    source = str(source)
    if drop_top_attention and target:
        raise UsageError(f"--drop-top-attention keeps the source's architecture; --to {target} drops the top "
                         "attention already")
    if out.exists() and not overwrite:
        raise UsageError(f"{out} exists; pass --overwrite")
    if not out.parent.is_dir():
        raise UsageError(f"cannot write to folder {out.parent}: it does not exist")
    ldm_file = _ldm_file(source)
    folder = None if ldm_file else _source_folder(source)
    if folder is not None and out.resolve() == folder.resolve():
        raise UsageError("the output folder must differ from the source")
    if ldm_file is not None and out.resolve() == ldm_file.resolve():
        raise UsageError("the output folder must differ from the source")
    tmp = out.with_name(f".{out.name}.movie-tmp")
    shutil.rmtree(tmp, ignore_errors=True)
    try:
        if ldm_file is not None:
            from movie_core import ldm

            ldm.convert_file(ldm_file, tmp)
            origin = tmp
        else:
            assert folder is not None
            origin = folder
            skip = ("unet", "movie.json") if target or drop_top_attention else ("movie.json",)
            shutil.copytree(folder, tmp, ignore=shutil.ignore_patterns(*skip))
        manifest = {k: v for k, v in (read_manifest(origin) or {}).items() if k != "provenance"}
        vae = autoencoder_of(tmp)
        if target:
            _convert_unet(origin, tmp, target, manifest, vae, guidance_inject)
        elif drop_top_attention:
            _drop_top_attention(origin, tmp, manifest)
        elif manifest:
            if vae and "recipe" in manifest:
                manifest["recipe"] = {"encoder": vae, "decoder": vae} | manifest["recipe"]
            write_manifest(tmp, manifest)
        replace_folder(tmp, out)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return out


def _drop_top_attention(origin: Path, tmp: Path, manifest: dict) -> None:
    from diffusers import UNet2DConditionModel

    from movie_core.weights import check_component, load_checked, low_memory_kw
    from movie_plugins.denoisers._pix2pix import drop_top_attention

    unet_dir = origin / "unet"
    check_folder(unet_dir)
    kind = read_config(unet_dir / "config.json").get("_class_name")
    if kind != "UNet2DConditionModel":
        raise MovieError(f"{unet_dir} is a {kind}; --drop-top-attention takes an SD-style UNet2DConditionModel")
    kw = check_component(unet_dir, "diffusion_pytorch_model")
    unet = load_checked(unet_dir, lambda: UNet2DConditionModel.from_pretrained(unet_dir, **kw, **low_memory_kw()))
    drop_top_attention(unet).save_pretrained(tmp / "unet", safe_serialization=True)
    # the same denoiser and recipe: the manifest only says what changed (a plain diffusers folder keeps none)
    if manifest:
        write_manifest(tmp, manifest | {"top_attention": "dropped"})


def _folder_prediction(folder: Path) -> str | None:
    config = folder / "scheduler" / "scheduler_config.json"
    return read_config(config).get("prediction_type") if config.is_file() else None


def _convert_md(unet_dir: Path, tmp: Path, target: str) -> Any:
    """A MobileDiffusion UNet (text-to-image or editing) -> an editing stage on the same weights; its stage."""
    from movie_plugins.denoisers import _md_edit, _t2i

    if read_config(unet_dir / "config.json").get("_class_name") != _t2i.MD_CLASS:
        raise MovieError(f"{unet_dir} is not a MobileDiffusion UNet; '{target}' converts from one")
    try:
        new = _md_edit.convert_md_unet(_t2i.load_md_unet(unet_dir), target)
    except ValueError as exc:
        raise MovieError(f"cannot convert {unet_dir} to '{target}': {exc}") from None
    if (tmp / "unet").exists():
        shutil.rmtree(tmp / "unet")
    _t2i.save_md_unet(new, tmp / "unet")
    return _md_edit.EDIT_STAGES[target]


def _convert_unet(origin: Path, tmp: Path, target: str, manifest: dict, vae: str | None,
                  guidance_inject: str | None = None) -> None:
    from diffusers import UNet2DConditionModel

    from movie_core.weights import check_component, load_checked, low_memory_kw
    from movie_plugins.denoisers._pix2pix import DEFAULT_GUIDANCE_INJECT, STAGES, convert_unet, guidance_inject_of

    unet_dir = origin / "unet"
    check_folder(unet_dir)
    if target in MD_TARGETS:
        stage = _convert_md(unet_dir, tmp, target)
        was = "mobile-diffusion"
    else:
        kind = read_config(unet_dir / "config.json").get("_class_name")
        if kind != "UNet2DConditionModel":
            raise MovieError(f"{unet_dir} is a {kind}, not an InstructPix2Pix UNet; '{target}' converts from one")
        kw = check_component(unet_dir, "diffusion_pytorch_model")
        unet = load_checked(unet_dir, lambda: UNet2DConditionModel.from_pretrained(unet_dir, **kw,
                                                                                  **low_memory_kw()))
        if unet.config.in_channels not in (4, 8):
            raise MovieError(f"{unet_dir} has {unet.config.in_channels} input channels; an InstructPix2Pix UNet "
                             "has 8 (a text-to-image SD UNet 4)")
        new = convert_unet(unet, target, guidance_inject or guidance_inject_of(unet.config) or DEFAULT_GUIDANCE_INJECT)
        was = "instruct-pix2pix" if unet.config.in_channels == 8 else "stable-diffusion"
        if (tmp / "unet").exists():
            shutil.rmtree(tmp / "unet")
        new.save_pretrained(tmp / "unet", safe_serialization=True)
        stage = STAGES[target]
    recipe = dict(manifest.get("recipe", {}), denoiser=target)
    if vae:  # the folder's own autoencoder, so it runs without --vae (a recipe that names its own keeps it)
        recipe.setdefault("encoder", vae)
        recipe.setdefault("decoder", vae)
    write_manifest(tmp, manifest | {
        "format": "movie-model/1",
        "recipe": recipe,
        "stage": target,
        # the weights predict what they were trained to: the folder's own scheduler says so where it has one (a
        # v-prediction text-to-image model stays v-prediction in the editing architecture)
        "prediction_type": _folder_prediction(tmp) or stage.prediction_type,
        "guidance": "embedded" if stage.embedded else "cfg3",
        "default_steps": stage.steps,
        "converted_from": manifest.get("stage", was),
        **({"autoencoder": vae} if vae else {}),
    })
