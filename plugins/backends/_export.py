"""`movie export`: run a recipe once through a backend on synthetic frames and collect the artifacts it prepared."""

from __future__ import annotations

import json
import math
import shutil
from pathlib import Path
from typing import Any

from movie_core.errors import MovieError, UsageError

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
    backend = backends.get_backend(spec.name)  # unavailable: one line, before the pipeline is built
    pipe = load_pipeline(comp, model, cache=cache)
    policy = SizePolicy(height=height, width=width)
    size = (height, width)
    padded = policy.padded(height, width)
    frames = synthetic_frames(batch_size, height, width)
    editor = FrameEditor(pipe, PROMPT, size=size, padded=padded)
    every = recipe.frame_clock
    try:
        if recipe.anchor != "none":
            editor.record_anchor(frames[len(frames) // 2], len(frames) // 2 if every > 1 else None)
        editor.edit(frames, size)
        # the frame clock: the batches after the first (the anchor's) split into full and adapted rows by where they
        # start relative to the clock; one batch per start the video meets (lcm(batch, clock) / batch of them) runs
        # 'unet_adapt' and, on a backend with fixed shapes, prepares every row count the split gives
        for _ in range(math.lcm(batch_size, every) // batch_size if every > 1 else 0):
            editor.edit(frames, size)
    finally:
        editor.close()

    tmp = out.with_name(f".{out.name}.movie-tmp")
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir()
    try:
        infos, shapes, host = _host_and_fused(pipe, editor, frames, tmp, batch_size)
        components = _collect(infos, tmp)
        runtime = backend.runtime(options) if hasattr(backend, "runtime") else None
        for c in components.values():  # every input's and output's shape, dtype, layout and range
            c["inputs"] = {n: v | _io(n) for n, v in c["inputs"].items()}
            dynamic = any(v["shape"][0] == "batch" for v in c["inputs"].values())
            # the shapes this artifact returned (a backend with fixed shapes: one artifact per batch), else the name's
            returned = c.pop("output_shapes", None) or {}
            c["outputs"] = {n: {"shape": _output_shape(returned.get(n) or shapes.get(n), dynamic and not n.startswith(
                "anchor_")), "dtype": "float32"} | _io(n) for n in c["outputs"]}
            if runtime and runtime.get("model"):  # the file to load: its folder may be '<component>-b<batch>'
                c["model"] = runtime["model"].format(component=c["component"])
        r = pipe.recipe
        manifest = {
            "format": MANIFEST_FORMAT,
            "backend": spec.name,
            "backend_plugin": spec.plugin,
            "backend_options": options,
            "movie_version": __version__,
            "recipe": recipe.components() | {"size": recipe.size, "dtype": recipe.dtype, "anchor": recipe.anchor},
            "settings": {"steps": pipe.steps, "text_guidance": r.text_guidance, "image_guidance": r.image_guidance,
                         "seed": r.seed, "sampler": pipe.denoiser.describe().get("scheduler"),
                         "height": height, "width": width},
            "stage": pipe.denoiser.stage,
            "denoiser": {k: v for k, v in pipe.denoiser.describe().items() if k != "host"},
            "frame": {"height": height, "width": width, "padded": list(padded), "batch_size": batch_size,
                      "size_policy": SIZE_POLICY},
            "latent_scaling": {
                "encoder": f"images -> latents in the '{pipe.encoder.latent_space}' latent space (no further scaling)",
                "unet": host.get("unet_sample") or "image_latents: the encoder's latents as they are",
                "decoder": "takes the sampler's (the unet's edited_latents) output as it is",
            },
            "anchor": _anchor_rule(recipe.anchor, shapes),
            "detail": _detail_rule(recipe.detail),
            # what the app sets to run the artifacts: runtime, execution provider and its options, model file
            "runtime": runtime,
            "clock": _clock_rule(pipe, fixed=not any(v["shape"][0] == "batch" for c in components.values()
                                                     for v in c["inputs"].values())),
            "versions": {"movie": __version__, **next(iter(components.values()))["toolchain"]},
            "components": components,
            "host": host,
        }
        rule = manifest["clock"]
        if (rule.get("adaptor_steps") or rule["policy"] == "frame") and not any(
                c["component"] in ("unet_adapt", "unet_adapt_replay") for c in components.values()):
            raise MovieError("the export run never reached a step or frame the clock adapts: 'unet_adapt' was not "
                             "prepared")
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


MANIFEST_FORMAT = "movie-export/2"
SIZE_POLICY = {
    "resize": "frames not at height x width are resized to it (bicubic, antialiased, like PIL's BICUBIC) "
              "and clamped to [-1, 1]",
    "pad": "edge-replicate on the bottom and right up to padded (multiples of 8, at least 32)",
    "crop": "outputs are cropped back to height x width, then resized to the source size (bicubic, antialiased)",
    "input": "uint8 RGB HxWx3 -> float32 x / 127.5 - 1, NCHW",
    "output": "float32 NCHW in [-1, 1] -> uint8 round((clip(y, -1, 1) + 1) * 127.5), HxWx3",
}
_IO = {  # what the core's and the built-in denoisers' tensor names mean
    "images": {"layout": "NCHW RGB", "range": "[-1, 1]"},
    "latents": {"layout": "NCHW", "range": "unbounded (the autoencoder's latent space)"},
    "input_ids": {"layout": "(batch, max_length) token ids", "range": "the tokenizer's ids"},
    "text_emb": {"layout": "(batch, tokens, dim)", "range": "unbounded"},
    "initial_noise": {"layout": "NCHW", "range": "standard normal: initial_noise.npy, one per frame (same for all)"},
    "image_latents": {"layout": "NCHW", "range": "the encoder's latents as they are"},
    "edited_latents": {"layout": "NCHW", "range": "the decoder's input as it is"},
    "time_features": {"layout": "(batch, dim)", "range": "time_features.npy (row of the step)"},
    "guidance_features": {"layout": "(batch, 2 * dim)", "range": "guidance_features.npy"},
    "sample": {"layout": "NCHW", "range": "see host.unet_sample"},
    "noise": {"layout": "NCHW", "range": "the model output (host.sampler.prediction_type)"},
    "r_out": {"layout": "NCHW (the top resolution level)", "range": "unbounded: what the low-resolution core "
              "returned (Clockwork); keep it for unet_adapt"},
    "r_out_prev": {"layout": "NCHW (the top resolution level)", "range": "the r_out of the last full step / frame "
                   "(see clock.rule)"},
}


def _output_shape(shape: list[int] | None, dynamic: bool) -> list[Any] | None:
    return ["batch", *shape[1:]] if dynamic and shape is not None else shape


def _io(name: str) -> dict[str, str]:
    if name.startswith("anchor_"):
        return {"layout": "(guidance branches, tokens, dim): one anchor layer's keys (k) or values (v)",
                "range": "the anchor frame's, recorded by unet, fed to unet_replay"}
    return dict(_IO.get(name, {}))


def _anchor_rule(anchor: str, shapes: dict[str, Any]) -> dict[str, Any]:
    kv = {n: s for n, s in shapes.items() if n.startswith("anchor_")}
    if anchor == "none":
        return {"policy": "none", "rule": "every frame runs unet alone"}
    index = {"middle": "frame_count // 2", "first": "0"}.get(anchor, anchor)
    return {"policy": anchor, "index": index,
            "rule": "run unet on the anchor frame alone (batch 1) first; it returns anchor_k_i / anchor_v_i; every "
                    "frame (the anchor included) then runs unet_replay with them",
            "kv_shapes": kv}


def _detail_rule(mode: str) -> dict[str, Any]:
    """How the decoder's frame reaches the output (movie_core.detail): resized back, or the colour map of the model's
    input -> output applied to the source frame itself (`--detail global|local`)."""
    from movie_core import detail

    if mode == "none":
        return {"mode": "none", "rule": "the decoder's frame, cropped, is the output (resized back: size_policy.crop)"}
    maps = ("one map per frame, fitted on all of its pixels" if mode == "global" else
            "one map per (2r+1)^2 window, r = radius, clipped at the border; each pixel's map the mean of the maps of "
            "the windows covering it (running sums); the maps resized to the source size (bilinear, half-pixel "
            "centres, no antialiasing) and applied there")
    rule = {"mode": mode, "eps": detail.EPS, "colours": "[0, 1]: (x + 1) / 2 of the [-1, 1] images",
            "rule": "guide g = the unet's input image (resized to height x width, before padding), out o = the "
                    "decoder's output cropped to height x width (not clipped), both in [0, 1]; the affine colour map "
                    "o = A g + b by ridge regression: A = C (V + eps I)^-1, b = mean(o) - A mean(g), V the covariance "
                    "of g, C the cross-covariance of o and g; " + maps + "; the output is the source frame (at its "
                    "own size, in [0, 1]) through A and b, times 2 minus 1, clipped to [-1, 1], then "
                    "size_policy.output"}
    if mode == "local":
        rule["radius"] = detail.LOCAL_RADIUS
    return rule


def _clock_rule(pipe, fixed: bool = False) -> dict[str, Any]:
    """Which graph runs on which step / frame of a clocked recipe (Clockwork). fixed: the graphs have fixed shapes
    (one folder per row count)."""
    r = pipe.recipe
    if not r.clocked:
        return {"policy": "none", "rule": "every step and frame runs unet"}
    graphs = ("unet (the whole network; it also returns r_out, what its low-resolution core returned) and "
              "unet_adapt (the high-resolution path with the adaptor in the core's place: the network's inputs and "
              "r_out_prev)")
    adaptor: dict[str, Any] = {"adaptor": r.adaptor}
    if fixed:
        adaptor["shapes"] = ("fixed: a graph has one folder per row count it runs at ('<graph>-b<rows>' where there "
                             "are several; each component's 'component' names its graph, 'inputs' its shapes)" +
                             ("; a batch of frames runs its full frames' rows through unet and its other frames' "
                              "rows through unet_adapt, as two calls" if r.frame_clock > 1 else ""))
    if r.frame_clock > 1:
        blend = ("the r_out of the last frame that ran unet" if r.frame_blend == "previous" else
                 "where a later frame that ran unet is known (run the full frames of a batch first), "
                 "(1 - w) r_out(p) + w r_out(q) for the nearest full frames p < f < q, w = (f - p) / (q - p); "
                 "else the r_out of frame p")
        return {"policy": "frame", "frame_clock": r.frame_clock, "frame_blend": r.frame_blend, **adaptor,
                "graphs": graphs,
                "rule": f"frames 0, {r.frame_clock}, {2 * r.frame_clock}, ... and the anchor frame run unet at every "
                        "step and keep its r_out per step and guidance pass; the other frames run unet_adapt at "
                        f"every step with r_out_prev made from those r_out at the same step and pass: {blend} "
                        "(with an anchor: a graph's _replay form, where it has one, on every frame but the "
                        "anchor; a unet_adapt without one has no anchor layer in its path)"}
    from movie_core.clockwork import full_steps

    full = full_steps(pipe.steps, r.clock, r.clock_schedule)
    return {"policy": "step", "clock": r.clock, "clock_schedule": r.clock_schedule, **adaptor, "graphs": graphs,
            "full_steps": [i for i, f in enumerate(full) if f],
            "adaptor_steps": [i for i, f in enumerate(full) if not f],
            "rule": "on full_steps run unet and keep its r_out (per guidance pass); on adaptor_steps run unet_adapt "
                    "with r_out_prev = the r_out of the last full step, same pass (with an anchor: record forms on "
                    "the anchor frame, _replay forms, where a graph has one, on the others)"}


def _host_and_fused(pipe, editor, frames, tmp: Path, batch: int) -> tuple[list[dict], dict[str, Any], dict[str, Any]]:
    """The denoiser's host plan (files into tmp) and, where it offers a fused step, the fused unet graphs prepared
    through the backend and checked against the sampler. Returns the artifacts to ship, each tensor name's
    shape, and the manifest's host section."""
    import torch

    from movie_core import backends

    den, r, bound = pipe.denoiser, pipe.recipe, pipe.runtime
    infos = list(bound.artifacts())
    with torch.no_grad():
        lat = pipe.encode(editor.tensor(frames[:1]))
        text = editor.prompt.text_emb
        shapes: dict[str, Any] = {"latents": list(lat.shape), "images": list(editor.tensor(frames[:1]).shape),
                                  "text_emb": list(text.shape)}
        plan = den.export_host(tmp, lat, steps=pipe.steps, s_T=r.text_guidance, s_I=r.image_guidance,
                               generator=pipe.generators(1))
        host = dict(plan) if plan is not None else {"self_contained": False, **_host_contract(pipe, bound)}
        host["steps"] = pipe.steps
        clock = pipe.step_clock or pipe.frame_clock
        if clock is not None and clock.graphs is not None:
            shapes.update(clock.graphs.shapes)
            shapes["r_out_prev"] = clock.graphs.shapes.get("r_out")
        fused = den.fused_step(pipe.steps) if clock is None else None  # the clock's graphs are not fused
        if fused is None:
            return infos, shapes, host
        noise = torch.randn(lat.shape, generator=pipe.generators(1)[0], device=lat.device, dtype=lat.dtype)
        seen: list[Any] = []
        expected = den.sample(lat, text, steps=pipe.steps, s_T=r.text_guidance, s_I=r.image_guidance,
                              latents=noise, on_step=lambda i, t: seen.append(t))
        rest = den.graph_inputs(noise, seen[0], lat, text, r.image_guidance, r.text_guidance)[1:]
        example = tuple(t.expand(batch, *t.shape[1:]).contiguous() for t in (noise, lat, *rest))
        anchored = r.anchor != "none"
        graphs = {"unet": backends.AnchoredNetwork(den, "record" if anchored else "none", fused)}
        if anchored:
            graphs["unet_replay"] = backends.AnchoredNetwork(den, "replay", fused)
        kept = [i for i in infos if i["component"] not in ("unet", "unet_replay")]
        kv: tuple = ()
        for name, graph in graphs.items():
            inputs = example if name == "unet" else example + kv
            # the anchor's K/V are recorded on the anchor frame alone
            inputs = tuple(t[:1] for t in inputs) if name == "unet" and anchored else inputs
            prepared = backends.prepare_component(bound.backend, name, graph, inputs, graph.io_names(),
                                                  bound.options, bound.cache)
            out = prepared.fn(*inputs)
            out, *rec = out if isinstance(out, (tuple, list)) else (out,)
            prepared.info["output_shapes"] = {n: list(t.shape) for n, t in zip(graph.io_names()[1], (out, *rec))}
            if name == "unet":
                kv = tuple(rec)
                shapes.update({n: list(t.shape) for n, t in zip(graph.io_names()[1][1:], rec)})
            err = float((out[:1].float() - expected.float()).abs().max())
            if name == "unet" and err > 0.05 * float(expected.abs().max()):
                raise MovieError(f"the fused {name} graph differs from the sampler by {err:.3g}: not exported")
            shapes["edited_latents"] = [batch, *out.shape[1:]]
            kept.append(prepared.info)
        host["fused_check_max_abs"] = round(err, 6)
    return kept, shapes, host


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
        components[name]["output_shapes"] = info.get("output_shapes")
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
