"""`movie export`: run a recipe once through a backend on synthetic frames and collect the artifacts it prepared."""

from __future__ import annotations

import json
import shutil
from pathlib import Path
from typing import Any

from movie_core.errors import UsageError

PROMPT = "make it look like a watercolor painting"


def export_recipe(recipe, model: Path | None, out: Path, *, height: int, width: int, batch_size: int = 1,
                  option_pairs: tuple[str, ...] = (), overwrite: bool = False, cache=None) -> dict[str, Any]:
    """Prepare every component for `recipe.backend` at these shapes.

    The prepared components and manifest.json are written to `out` atomically.
    """
    from movie_core import __version__, backends
    from movie_core.bench import synthetic_frames
    from movie_core.composer import compose
    from movie_core.edit import FrameEditor, SizePolicy
    from movie_core.loading import component_options, load_pipeline
    from movie_core.weights import replace_folder

    if option_pairs:  # KEY=VALUE pairs for the backend, over the recipe's own backend options
        extra = component_options(option_pairs)
        recipe = recipe.replace(component_options={
            slot: recipe.component_options.get(slot, {}) | extra.get(slot, {})
            for slot in {*recipe.component_options, *extra}})
    comp = compose(recipe)
    spec = comp.specs["backend"]
    if not getattr(spec.load_factory(), "exports", False):
        raise UsageError(f"backend '{spec.name}' runs in process and writes no deployable artifacts; "
                         "export with onnx, hexagon, tensorrt or aihub")
    options = backends.resolve_options(spec.name, comp.component_options("backend"))
    if out.exists() and not overwrite:
        raise UsageError(f"{out} exists; pass --overwrite to replace it")
    if out.exists() and not out.is_dir():
        raise UsageError(f"{out} exists and is not a folder")
    if not out.parent.is_dir():
        raise UsageError(f"cannot write {out}: folder {out.parent} does not exist")
    backends.get_backend(spec.name)  # unavailable: one line, before the pipeline is built
    pipe = load_pipeline(comp, model, cache=cache)
    bound = pipe.runtime
    policy = SizePolicy(height=height, width=width)
    size = (height, width)
    padded = policy.padded(height, width)
    frames = synthetic_frames(batch_size, height, width)
    editor = FrameEditor(pipe, PROMPT, size=size, padded=padded)
    try:
        if recipe.anchor != "none":
            editor.record_anchor(frames[len(frames) // 2])
        editor.edit(frames, size)
    finally:
        editor.close()

    tmp = out.with_name(f".{out.name}.movie-tmp")
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir()
    try:
        components = _collect(bound.artifacts(), tmp)
        manifest = {
            "format": "movie-export/1",
            "backend": spec.name,
            "backend_plugin": spec.plugin,
            "backend_options": options,
            "movie_version": __version__,
            "recipe": recipe.components() | {"size": recipe.size, "dtype": recipe.dtype, "anchor": recipe.anchor},
            "stage": pipe.denoiser.stage,
            "denoiser": {k: v for k, v in pipe.denoiser.describe().items() if k != "host"},
            "frame": {"height": height, "width": width, "padded": list(padded), "batch_size": batch_size},
            "versions": {"movie": __version__, **next(iter(components.values()))["toolchain"]},
            "components": components,
            "host": _host_contract(pipe, bound),
        }
        (tmp / "manifest.json").write_text(json.dumps(manifest, indent=2) + "\n")
        latency = {n: c["device_latency_ms"] for n, c in components.items() if c.get("device_latency_ms") is not None}
        if latency:
            (tmp / "latency.json").write_text(json.dumps(
                {"device": options.get("device"), "ms_per_call": latency}, indent=2) + "\n")
        replace_folder(tmp, out)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return manifest


def _collect(infos: list[dict[str, Any]], dest: Path) -> dict[str, dict[str, Any]]:
    """Copy each prepared artifact folder to dest/<component> (-b<batch> when a component has several shapes)."""
    counts: dict[str, int] = {}
    for info in infos:
        counts[info["component"]] = counts.get(info["component"], 0) + 1
    components: dict[str, dict[str, Any]] = {}
    for info in infos:
        name = info["component"]
        if counts[name] > 1:
            name = f"{name}-b{next(iter(info['inputs'].values()))['shape'][0]}"
        target = dest / name
        shutil.copytree(info["artifact_dir"], target, ignore=shutil.ignore_patterns("artifact.json"))
        files = sorted(str(p.relative_to(target)) for p in target.rglob("*") if p.is_file())
        components[name] = {k: info[k] for k in ("component", "inputs", "outputs", "precision", "toolchain", "key")}
        components[name]["files"] = files
        hub = target / "aihub.json"
        if hub.is_file():  # measured on the device by an AI Hub profile job
            components[name]["device_latency_ms"] = json.loads(hub.read_text()).get("latency_ms")
    return components


def _host_contract(pipe, bound) -> dict[str, Any]:
    """What the app computes on the host around the graphs (so the graphs stay static): the denoiser says."""
    facts = pipe.denoiser.describe()
    host = dict(facts.get("host", {}))
    host.update({k: facts.get(k) for k in ("scheduler", "prediction_type", "guidance")})
    host["steps"] = pipe.steps
    if "unet_replay" in bound.graphs:
        host["anchor"] = ("unet (record) on the anchor frame returns each self-attention's K/V per step; "
                          "unet_replay takes them for every other frame")
    return host
