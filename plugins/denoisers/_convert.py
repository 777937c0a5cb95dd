"""Folder-level conversion between denoiser stages (weights carried over, removed blocks dropped)."""

from __future__ import annotations

import shutil
from pathlib import Path

from diffusers import UNet2DConditionModel

from movie_core.errors import MovieError, UsageError
from movie_core.weights import (
    check_folder,
    component_folder,
    read_manifest,
    replace_folder,
    use_safetensors,
    write_manifest,
)
from movie_plugins.denoisers._pix2pix import STAGES, convert_unet

MD_TARGETS = ("mobile-diffusion-pix2pix", "mobile-diffusion-pix2pix-1step")


def convert_folder(source: Path, target: str, out: Path, overwrite: bool = False) -> Path:
    """Write `out`: source's components copied, its UNet converted to `target`'s architecture."""
    if not (source / "unet").is_dir():
        raise UsageError(f"{source} is not a model folder (no unet/)")
    for entry in source.iterdir():
        if entry.is_dir():
            component_folder(source, entry.name)  # refuses a linked folder that leaves the model's parent
    if out.exists() and not overwrite:
        raise UsageError(f"{out} exists; pass --overwrite")
    if out.resolve() == source.resolve():
        raise UsageError("the output folder must differ from the source")
    if not out.parent.is_dir():
        raise UsageError(f"cannot write to folder {out.parent}: it does not exist")
    check_folder(source / "unet")
    if target in MD_TARGETS:
        return _convert_md(source, target, out)
    from movie_core.weights import read_config

    kind = read_config(source / "unet" / "config.json").get("_class_name")
    if kind != "UNet2DConditionModel":
        raise MovieError(f"{source}/unet is a {kind}, not an InstructPix2Pix UNet; '{target}' converts from one")
    unet = UNet2DConditionModel.from_pretrained(source / "unet", use_safetensors=use_safetensors())
    if unet.config.in_channels != 8:
        raise MovieError(f"{source}/unet has {unet.config.in_channels} input channels; an InstructPix2Pix UNet has 8")
    new = convert_unet(unet, target)
    tmp = out.with_name(f".{out.name}.movie-tmp")
    shutil.rmtree(tmp, ignore_errors=True)
    try:
        shutil.copytree(source, tmp, ignore=shutil.ignore_patterns("unet", "movie.json"))
        new.save_pretrained(tmp / "unet", safe_serialization=True)
        _write_manifest(source, target, tmp, STAGES[target])
        replace_folder(tmp, out)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return out


def _write_manifest(source: Path, target: str, tmp: Path, stage, was: str = "instruct-pix2pix") -> None:
    """The converted folder's movie.json: the source's, with the target stage's recipe and sampling facts."""
    manifest = {k: v for k, v in (read_manifest(source) or {}).items() if k != "provenance"}
    recipe = dict(manifest.get("recipe", {}), denoiser=target)
    write_manifest(tmp, manifest | {
        "format": "movie-model/1",
        "recipe": recipe,
        "stage": target,
        "prediction_type": stage.prediction_type,
        "guidance": "embedded" if stage.embedded else "cfg3",
        "default_steps": stage.steps,
        "converted_from": manifest.get("stage", was),
    })


def _convert_md(source: Path, target: str, out: Path) -> Path:
    """A MobileDiffusion UNet folder (text-to-image or editing) -> an editing stage on the same weights."""
    from movie_core.weights import read_config
    from movie_plugins.denoisers import _md_edit, _t2i

    if read_config(source / "unet" / "config.json").get("_class_name") != _t2i.MD_CLASS:
        raise MovieError(f"{source}/unet is not a MobileDiffusion UNet; '{target}' converts from one")
    try:
        new = _md_edit.convert_md_unet(_t2i.load_md_unet(source / "unet"), target)
    except ValueError as exc:
        raise MovieError(f"cannot convert {source}/unet to '{target}': {exc}") from None
    tmp = out.with_name(f".{out.name}.movie-tmp")
    shutil.rmtree(tmp, ignore_errors=True)
    try:
        shutil.copytree(source, tmp, ignore=shutil.ignore_patterns("unet", "movie.json"))
        _t2i.save_md_unet(new, tmp / "unet")
        _write_manifest(source, target, tmp, _md_edit.EDIT_STAGES[target], was="mobile-diffusion")
        replace_folder(tmp, out)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return out
