"""Wall-clock benchmarks: per-component and per-frame latency (median after warm-up), frames/s, peak memory."""

from __future__ import annotations

import statistics
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import torch

from movie_core.composer import Composition, compose
from movie_core.edit import FrameEditor, SizePolicy, batched
from movie_core.errors import UsageError
from movie_core.loading import build


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def _peak_rss_mb() -> float | None:
    """Peak resident memory of this process (VmHWM), Linux only."""
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) / 1024
    except OSError:
        return None
    return None


def _reset_peak_rss() -> None:
    try:
        Path("/proc/self/clear_refs").write_text("5")
    except OSError:
        pass


def _timed(fn: Callable[[], Any], device: torch.device) -> tuple[Any, float]:
    _sync(device)
    start = time.perf_counter()
    out = fn()
    _sync(device)
    return out, (time.perf_counter() - start) * 1000


def synthetic_frames(n: int, height: int, width: int, seed: int = 0) -> list[np.ndarray]:
    """Smooth random frames (a gradient plus blobs) so autoencoders see image-like input."""
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[0:height, 0:width] / max(height, width)
    frames = []
    for _ in range(n):
        base = np.stack([xx, yy, 1 - xx], axis=-1) * 200
        cx, cy = rng.uniform(0, 1, 2)
        blob = np.exp(-(((xx - cx) ** 2 + (yy - cy) ** 2) / 0.02))[..., None] * rng.uniform(0, 255, 3)
        frames.append(np.clip(base + blob, 0, 255).astype(np.uint8))
    return frames


def bench_pipeline(pipe, *, height: int, width: int, frames: int = 8, batch_size: int = 4, repeats: int = 3,
                   prompt: str = "make it look like a watercolor painting") -> dict[str, Any]:
    """Time encode / denoise / decode per batch of frames with anchor attention, as `movie edit` runs them."""
    policy = SizePolicy(height=height, width=width)
    size = (height, width)
    padded = policy.padded(height, width)
    device = pipe.device
    _reset_peak_rss()
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
    editor, text_ms = _timed(lambda: FrameEditor(pipe, prompt, size=size, padded=padded), device)
    src = synthetic_frames(frames, height, width)
    batches = [editor.tensor(b) for b in batched(iter(src), batch_size)]
    try:
        if pipe.recipe.anchor != "none":
            editor.record_anchor(src[len(src) // 2], len(src) // 2)
        per: dict[str, list[float]] = {"encoder": [], "denoiser": [], "decoder": [], "total": []}
        for rep in range(repeats + 1):
            sums: dict[str, float] = {}
            for i, x in enumerate(batches):  # each repeat edits the frames as one video (the frame clock)
                editor.edit_tensor(x, timings=sums, frame=i * batch_size)
            if rep == 0:
                continue  # warm-up
            sums["total"] = sums["encoder"] + sums["denoiser"] + sums["decoder"]
            for k in per:
                per[k].append(sums[k] / frames)
    finally:
        editor.close()
    ms = statistics.median(per["total"])
    peak = torch.cuda.max_memory_allocated(device) / 2**20 if device.type == "cuda" else _peak_rss_mb()
    r = pipe.recipe
    return {
        "ms_per_frame": ms,
        "frames_per_s": 1000.0 / ms,
        "peak_mem_mb": peak,
        "peak_mem_kind": "cuda max allocated" if device.type == "cuda" else "process peak RSS (VmHWM)",
        "components": {
            "encoder_ms_per_frame": statistics.median(per["encoder"]),
            "denoiser_ms_per_frame": statistics.median(per["denoiser"]),
            "decoder_ms_per_frame": statistics.median(per["decoder"]),
            "text_encoder_ms_per_video": text_ms,
        },
        "height": height, "width": width, "frames": frames, "batch_size": batch_size, "repeats": repeats,
        "steps": pipe.steps, "unet_passes_per_step": {"cfg3": 3, "cfg2": 2}.get(pipe.denoiser.guidance, 1),
        "device": str(device), "dtype": r.dtype, "threads": torch.get_num_threads(),
        "recipe": r.components() | {"size": r.size}, "backend": pipe.backend_info(),
    }


def compare_backends(recipe, names: list[str], model: Path | None, rounds: int = 3, **kw: Any) -> dict[str, Any]:
    """The same recipe through each named backend, timed in interleaved rounds (load drifts).

    The first backend is the reference.

    Each backend gets its own pipeline, built and bound once; every round times each of them in turn,
    and a backend's figures are those of its median round.
    """
    pipes = {name: build(compose(recipe.replace(backend=name)), model=model) for name in names}
    runs: dict[str, list[dict[str, Any]]] = {name: [] for name in names}
    for _ in range(rounds):
        for name, pipe in pipes.items():
            runs[name].append(bench_pipeline(pipe, **kw))
    results = {}
    for name, rs in runs.items():
        median_round = sorted(rs, key=lambda r: r["ms_per_frame"])[len(rs) // 2]
        results[name] = median_round | {"rounds_ms_per_frame": [r["ms_per_frame"] for r in rs]}
    ref = results[names[0]]["ms_per_frame"]
    for r in results.values():
        r[f"speedup_vs_{names[0]}"] = ref / r["ms_per_frame"]
    first = results[names[0]]
    return {"recipe": recipe.components() | {"size": recipe.size}, "height": first["height"], "width": first["width"],
            "frames": first["frames"], "batch_size": first["batch_size"], "repeats": first["repeats"],
            "rounds": rounds, "threads": first["threads"], "backends": results}


def bench_reference(pipe_base, *, height: int, width: int, repeats: int, steps: int = 10,
                    prompt: str = "make it look like a watercolor painting") -> tuple[float, str]:
    """Median ms of one call (one frame) of the upstream pipeline the denoiser reproduces, on the same modules."""
    reference = getattr(pipe_base.denoiser, "reference_pipeline", None)  # optional contract method
    if reference is None:
        raise UsageError(f"denoiser '{pipe_base.recipe.denoiser}' names no reference pipeline to compare with")
    call, name = reference(pipe_base.encoder)
    device, r = pipe_base.device, pipe_base.recipe
    frame = synthetic_frames(1, height, width)[0]
    times = []
    for rep in range(repeats + 1):
        _, ms = _timed(lambda: call(frame, prompt, steps=steps, s_T=r.text_guidance, s_I=r.image_guidance,
                                    seed=r.seed), device)
        if rep:
            times.append(ms)
    return statistics.median(times), name


def run(composition: Composition, model: Path | None, *, height: int, width: int, frames: int, batch_size: int,
        repeats: int, compare: str | None = None) -> dict[str, Any]:
    """Benchmark a composed recipe, optionally against diffusers' InstructPix2Pix pipeline in the same run."""
    pipe = build(composition, model=model)
    result = bench_pipeline(pipe, height=height, width=width, frames=frames, batch_size=batch_size, repeats=repeats)
    if compare == "diffusers":
        r = composition.recipe
        if r.encoder == "sd-vae" and r.denoiser == "instruct-pix2pix":
            base = pipe
        else:
            from movie_core.recipe import preset

            base_recipe = preset("base").replace(size=r.size, seed=r.seed, device=r.device, dtype=r.dtype,
                                                 text_guidance=r.text_guidance, image_guidance=r.image_guidance)
            base = build(compose(base_recipe), model=model if _has_base_weights(model) else None)
        ref_ms, ref_name = bench_reference(base, height=height, width=width, repeats=repeats)
        result["compare"] = {
            "diffusers_ms_per_frame": ref_ms,
            "speedup": ref_ms / result["ms_per_frame"],
            "diffusers_pipeline": f"{ref_name}, 10 steps, SD VAE, one frame per call "
                                  "(median of repeats after a warm-up)",
        }
    return result


def _has_base_weights(model: Path | None) -> bool:
    from movie_core.weights import read_manifest

    manifest = read_manifest(model) if model else None
    return bool(manifest and manifest.get("stage") == "instruct-pix2pix")
