#!/usr/bin/env python3
"""GPU benchmark of the full-size `movie` recipe (random init, fp16) at 512x384.

    python scripts/gpu_bench.py --out gpu_bench.json

Measures, for each backend (eager fp16, compile, tensorrt when importable): per-frame latency at
batch 1 and frames/s at --batch (default 8). A frame is what `movie edit` does per frame: encode
(TAESD) + one UNet pass (1-step LCM, guidance embedded) + decode (TAESD), with the anchor's
self-attention K/V replayed unless --anchor none; the text encoder runs once per video and is not
counted, as in the paper's per-frame figures (Table 1: 0.11 s per frame on an A100 at 480x480).
Times are CUDA-synchronised medians after warm-up calls (which include compiling or building).

Each backend runs in its own process with what is left of --budget seconds (default 270), so a slow
build, a crash or an out-of-memory is recorded in the JSON (status, error) and the others still
run; the JSON is rewritten after every backend.
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import os
import platform
import statistics
import subprocess
import sys
import tempfile
import time
import traceback
from pathlib import Path

PROMPT = "make it look like a watercolor painting"
PAPER = {"s_per_frame": 0.11, "gpu": "A100", "resolution": "480x480", "source": "MoViE paper, Table 1"}


def parse_args(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--out", required=True, help="JSON file to write.")
    p.add_argument("--backends", default="eager,compile,tensorrt", help="Comma-separated, run in this order.")
    p.add_argument("--height", type=int, default=384)
    p.add_argument("--width", type=int, default=512)
    p.add_argument("--batch", type=int, default=8, help="Frames per call for the throughput figure.")
    p.add_argument("--repeats", type=int, default=10, help="Timed calls at batch 1 (half as many batched).")
    p.add_argument("--anchor", default="middle", choices=["middle", "none"],
                   help="middle: frames replay the anchor's self-attention K/V (as `movie edit` does).")
    p.add_argument("--budget", type=float, default=270.0, help="Seconds for the whole run.")
    p.add_argument("--device", default="cuda")
    p.add_argument("--size", default="full", choices=["full", "nano"], help="nano: a quick smoke run of the script.")
    p.add_argument("--dtype", default="float16", choices=["float16", "float32", "bfloat16"])
    p.add_argument("--child", help=argparse.SUPPRESS)
    p.add_argument("--child-out", help=argparse.SUPPRESS)
    return p.parse_args(argv)


# --- one backend, in a child process ---------------------------------------------------------------


def _env() -> dict:
    import torch

    env = {"python": platform.python_version(), "torch": torch.__version__, "cuda": torch.version.cuda,
           "gpu": torch.cuda.get_device_name() if torch.cuda.is_available() else None,
           "cpu_count": os.cpu_count()}
    for mod in ("diffusers", "transformers", "tensorrt", "onnx", "onnxscript"):
        try:
            env[mod] = __import__(mod).__version__
        except Exception:
            env[mod] = None
    return env


def run_backend(args: argparse.Namespace, result: dict, save) -> dict:
    import numpy as np
    import torch

    from movie_core import backends
    from movie_core.composer import compose
    from movie_core.loading import build
    from movie_core.edit import FrameEditor
    from movie_core.recipe import preset

    name = args.child
    torch.backends.cudnn.benchmark = True
    torch.backends.cuda.matmul.allow_tf32 = True
    h, w, batch = args.height, args.width, args.batch
    recipe = preset("movie").replace(size=args.size, device=args.device, dtype=args.dtype, anchor=args.anchor,
                                     backend=name)
    result.update({"backend": name, "status": "running", "env": _env(), "recipe": recipe.components() | {
        "size": recipe.size, "dtype": recipe.dtype, "anchor": recipe.anchor, "steps": 1}})
    if name == "eager":
        try:
            from movie_core.flops import count

            fl = count(compose(recipe), height=h, width=w)
            result["tflops_per_frame"] = {"paper": fl["tflops_paper"], "all": fl["tflops_all"]}
        except Exception as exc:  # FLOPs are a bonus; never lose the timing for them
            result["tflops_per_frame"] = f"not counted: {type(exc).__name__}: {exc}"

    t0 = time.perf_counter()
    pipe = build(compose(recipe))
    cuda = torch.device(args.device).type == "cuda"

    def sync() -> None:
        if cuda:
            torch.cuda.synchronize()

    sync()
    result["build_s"] = time.perf_counter() - t0
    save(result)
    # the prompt is encoded before binding: eager, once per video, not part of the per-frame time
    editor = FrameEditor(pipe, PROMPT, size=(h, w), padded=(h, w))
    options = {"batch_profile": (1, batch, batch)} if name == "tensorrt" else {}
    cache = backends.ArtifactCache(tempfile.mkdtemp(prefix="movie-gpu-bench-"))
    backends.bind(pipe, options, cache)
    rng = np.random.default_rng(0)
    t0 = time.perf_counter()
    if args.anchor != "none":
        editor.record_anchor(rng.integers(0, 256, (h, w, 3), dtype=np.uint8))
        sync()
    result["anchor_s"] = time.perf_counter() - t0

    def frames(n: int) -> torch.Tensor:
        g = torch.Generator(device=args.device).manual_seed(n)
        return torch.rand(n, 3, h, w, generator=g, device=args.device).to(getattr(torch, args.dtype)) * 2 - 1

    def timed(fn, *a) -> float:
        sync()
        start = time.perf_counter()
        fn(*a)
        sync()
        return (time.perf_counter() - start) * 1000

    def measure(x: torch.Tensor, repeats: int) -> dict:
        warm = [timed(editor._edit, x) for _ in range(3)]  # first call compiles / builds; CUDA graphs record later
        times = [timed(editor._edit, x) for _ in range(repeats)]
        return {"first_call_s": warm[0] / 1000, "ms_median": statistics.median(times), "ms_min": min(times),
                "ms_max": max(times), "repeats": repeats}

    x1 = frames(1)
    one = measure(x1, args.repeats)
    result["batch1"] = one | {"ms_per_frame": one["ms_median"], "frames_per_s": 1000 / one["ms_median"]}
    den, r = pipe.denoiser, pipe.recipe
    with torch.no_grad():
        lat = pipe.encoder.encode(x1)
        out = den.sample(lat, editor.text_emb, steps=editor.steps, s_T=r.text_guidance, s_I=r.image_guidance,
                         generator=editor._generators(1), on_step=editor.controller.on_step if editor.anchored else None)
        result["batch1"]["components_ms"] = {
            "encoder": statistics.median(timed(pipe.encoder.encode, x1) for _ in range(5)),
            "unet_step": statistics.median(timed(lambda: den.sample(
                lat, editor.text_emb, steps=editor.steps, s_T=r.text_guidance, s_I=r.image_guidance,
                generator=editor._generators(1),
                on_step=editor.controller.on_step if editor.anchored else None)) for _ in range(5)),
            "decoder": statistics.median(timed(pipe.decoder.decode, out) for _ in range(5)),
        }
    save(result)  # batch-1 figures survive a timeout in the batched phase
    xb = frames(batch)
    many = measure(xb, max(3, args.repeats // 2))
    result[f"batch{batch}"] = many | {"ms_per_frame": many["ms_median"] / batch,
                                      "frames_per_s": batch * 1000 / many["ms_median"]}
    result["peak_mem_gb"] = torch.cuda.max_memory_allocated() / 2**30 if cuda else None
    result["status"] = "ok"
    editor.close()
    return result


def child_main(args: argparse.Namespace) -> None:
    out = Path(args.child_out)

    def save(result: dict) -> None:
        tmp = out.with_suffix(".tmp")
        tmp.write_text(json.dumps(result, indent=2, default=str) + "\n")
        tmp.replace(out)

    result: dict = {"backend": args.child}
    try:
        run_backend(args, result, save)
    except BaseException as exc:  # recorded for the parent, whatever it was (OOM, build failure, ...)
        result.update(status="error", error=f"{type(exc).__name__}: {exc}".strip()[:2000],
                      traceback=traceback.format_exc()[-4000:])
    save(result)


# --- the parent: one child per backend under the budget ------------------------------------------


def main(argv=None) -> int:
    args = parse_args(argv)
    if args.child:
        child_main(args)
        return 0
    start = time.perf_counter()
    out = Path(args.out)
    report: dict = {"script": "scripts/gpu_bench.py", "started": time.strftime("%Y-%m-%d %H:%M:%S %Z"),
                    "settings": {k: v for k, v in vars(args).items() if not k.startswith("child")},
                    "paper_reference": PAPER, "backends": {}}

    def save() -> None:
        out.write_text(json.dumps(report, indent=2, default=str) + "\n")

    save()
    for name in [b.strip() for b in args.backends.split(",") if b.strip()]:
        left = args.budget - (time.perf_counter() - start)
        if name == "tensorrt" and importlib.util.find_spec("tensorrt") is None:
            report["backends"][name] = {"status": "skipped", "reason": "tensorrt is not importable"}
        elif left < 20:
            report["backends"][name] = {"status": "skipped", "reason": f"the {args.budget:.0f} s budget is spent"}
        else:
            report["backends"][name] = run_child(args, name, left)
        save()
        print(summary_line(name, report["backends"][name], args.batch), flush=True)
    report["total_s"] = time.perf_counter() - start
    save()
    print(f"wrote {out} ({report['total_s']:.0f} s)")
    return 0


def run_child(args: argparse.Namespace, name: str, timeout: float) -> dict:
    with tempfile.TemporaryDirectory() as tmp:
        child_out = Path(tmp) / "result.json"
        cmd = [sys.executable, os.path.abspath(__file__), "--out", args.out, "--child", name,
               "--child-out", str(child_out), "--height", str(args.height), "--width", str(args.width),
               "--batch", str(args.batch), "--repeats", str(args.repeats), "--anchor", args.anchor,
               "--device", args.device, "--size", args.size, "--dtype", args.dtype]
        started = time.perf_counter()
        try:
            proc = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout)
        except subprocess.TimeoutExpired:
            result = json.loads(child_out.read_text()) if child_out.is_file() else {}
            result.update(status="timeout", error=f"did not finish in the {timeout:.0f} s left of the budget "
                                                  f"(raise --budget or run --backends {name} alone); "
                                                  "figures present were measured before the cut")
            return result
        wall = time.perf_counter() - started
        if child_out.is_file():
            result = json.loads(child_out.read_text())
            if result.get("status") == "error":
                result["stderr_tail"] = proc.stderr[-3000:]
        else:
            result = {"status": "error", "error": f"the child process exited {proc.returncode} without a result",
                      "stderr_tail": proc.stderr[-3000:]}
        result["wall_s"] = wall
        return result


def summary_line(name: str, r: dict, batch: int) -> str:
    parts = []
    if "batch1" in r:
        b1 = r["batch1"]
        parts.append(f"batch 1: {b1['ms_per_frame']:.1f} ms/frame ({b1['frames_per_s']:.1f} frames/s), "
                     f"first call {b1['first_call_s']:.1f} s")
    if f"batch{batch}" in r:
        parts.append(f"batch {batch}: {r[f'batch{batch}']['frames_per_s']:.1f} frames/s")
    if r.get("status") != "ok":
        parts.append(f"{r.get('status')}: {r.get('error') or r.get('reason')}")
    return f"{name:9} " + "; ".join(parts)


if __name__ == "__main__":
    sys.exit(main())
