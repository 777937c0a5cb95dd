#!/usr/bin/env python3
"""GPU benchmark of the full-size `movie` recipe (random init, fp16) at 512x384 and 480x480.

    python scripts/gpu_bench.py --out gpu_bench.json

Variants: eager fp16; cuda-graphs (the backend's fused frame graph: one CUDA graph replay per
batch); compile (the same fused graph built by torch.compile before capture, each of
--compile-modes cold on a fresh inductor cache while the budget lasts, then the fastest once more
in a second process on the same cache: the warm build); optionally compile-components (the
`compile` backend, reduce-overhead per component) and tensorrt. Per size: batch-1 latency per
frame (median and p90) and frames/s at each of --batches; for the fast paths, parity against eager
fp16 on the same frames and anchor. A frame is what `movie edit` does per frame: encode (TAESD) +
one UNet pass (1-step LCM, guidance embedded) + decode (TAESD), with the anchor's self-attention K/V
replayed unless --anchor none; the text encoder runs once per video and is not counted, as in the
paper's per-frame figures (Table 1: 0.11 s per frame on an A100 at 480x480). Times are
CUDA-synchronised, after two warm-up calls per shape (the first builds: capture, compile).

Each variant runs in its own process with what is left of --budget seconds (default 270), so a slow
build, a crash or an out-of-memory is recorded in the JSON (status, error) and the others still
run; the JSON is rewritten after every shape. `--device cpu --size nano --sizes 64x64` is a dry run
of the script itself (graphs then run eagerly on their static buffers).
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
    p.add_argument("--backends", default="eager,cuda-graphs,compile",
                   help="Comma-separated, run in this order: eager, cuda-graphs, compile (the fused graph built "
                        "by torch.compile, cold then warm, per --compile-modes), compile-components (the compile "
                        "backend, reduce-overhead per component), tensorrt.")
    p.add_argument("--sizes", default="512x384,480x480", help="WIDTHxHEIGHT list.")
    p.add_argument("--batches", default="8,32", help="Batch sizes for the throughput figures.")
    p.add_argument("--compile-modes", default="default,max-autotune-no-cudagraphs",
                   help="inductor modes tried in order while the budget lasts; the fastest is rerun warm.")
    p.add_argument("--compile-sizes", default="512x384", help="Sizes compiled (each shape is one build).")
    p.add_argument("--compile-batches", default="", help="Batch sizes compiled besides batch 1 (each is a build).")
    p.add_argument("--repeats", type=int, default=20, help="Timed calls at batch 1 (a third as many batched).")
    p.add_argument("--anchor", default="middle", choices=["middle", "none"],
                   help="middle: frames replay the anchor's self-attention K/V (as `movie edit` does).")
    p.add_argument("--budget", type=float, default=270.0, help="Seconds for the whole run.")
    p.add_argument("--device", default="cuda")
    p.add_argument("--size", default="full", choices=["full", "nano"], help="nano: a quick smoke run of the script.")
    p.add_argument("--dtype", default="float16", choices=["float16", "float32", "bfloat16"])
    p.add_argument("--child", help=argparse.SUPPRESS)
    p.add_argument("--child-out", help=argparse.SUPPRESS)
    p.add_argument("--child-options", default="{}", help=argparse.SUPPRESS)
    return p.parse_args(argv)


def _sizes(text: str) -> list[tuple[int, int]]:
    """'512x384,480x480' -> [(height, width), ...]"""
    out = []
    for item in text.split(","):
        w, h = item.lower().split("x")
        out.append((int(h), int(w)))
    return out


def _ints(text: str) -> list[int]:
    return [int(v) for v in text.split(",") if v.strip()]


# --- one backend, in a child process ---------------------------------------------------------------


def _env() -> dict:
    import torch

    env = {"python": platform.python_version(), "torch": torch.__version__, "cuda": torch.version.cuda,
           "gpu": torch.cuda.get_device_name() if torch.cuda.is_available() else None,
           "cpu_count": os.cpu_count(), "driver": None}
    try:
        env["driver"] = subprocess.run(["nvidia-smi", "--query-gpu=driver_version", "--format=csv,noheader"],
                                       capture_output=True, text=True, timeout=20).stdout.strip() or None
    except (OSError, subprocess.SubprocessError):
        pass
    for mod in ("diffusers", "transformers", "tensorrt", "onnx", "onnxscript", "av"):
        try:
            env[mod] = __import__(mod).__version__
        except Exception:
            env[mod] = None
    return env


def _pct(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, max(0, round(q * (len(ordered) - 1))))]


def run_backend(args: argparse.Namespace, result: dict, save) -> dict:
    """One variant in this process: eager, cuda-graphs, compile (fused graph built by inductor), or a plain backend.

    For every size: batch-1 latency (median, p90 of --repeats calls) and frames/s at each --batches; for the
    fast paths also parity against eager fp16 on the same frames and anchor (max abs difference in [-1, 1])."""
    import numpy as np
    import torch

    from movie_core import backends
    from movie_core.composer import compose
    from movie_core.edit import FrameEditor
    from movie_core.loading import build
    from movie_core.recipe import preset

    name = args.child
    options = json.loads(args.child_options)
    backend = {"compile": "cuda-graphs", "compile-components": "compile"}.get(name, name)
    torch.backends.cudnn.benchmark = True
    torch.backends.cuda.matmul.allow_tf32 = True
    cuda = torch.device(args.device).type == "cuda"
    sizes = _sizes(args.compile_sizes if name == "compile" else args.sizes)
    batches = _ints(args.compile_batches if name == "compile" else args.batches)
    recipe = preset("movie").replace(size=args.size, device=args.device, dtype=args.dtype, anchor=args.anchor,
                                     backend=backend)
    result.update({"backend": name, "status": "running", "env": _env(), "options": options,
                   "inductor_cache": os.environ.get("TORCHINDUCTOR_CACHE_DIR"),
                   "recipe": recipe.components() | {"size": recipe.size, "dtype": recipe.dtype,
                                                    "anchor": recipe.anchor, "steps": 1}, "sizes": {}})
    if name == "eager":
        try:
            from movie_core.flops import count

            h, w = sizes[0]
            fl = count(compose(recipe), height=h, width=w)
            result["tflops_per_frame"] = {"paper": fl["tflops_paper"], "all": fl["tflops_all"], "at": f"{w}x{h}"}
        except Exception as exc:  # FLOPs are a bonus; never lose the timing for them
            result["tflops_per_frame"] = f"not counted: {type(exc).__name__}: {exc}"

    def sync() -> None:
        if cuda:
            torch.cuda.synchronize()

    t0 = time.perf_counter()
    pipe = build(compose(recipe.replace(backend="eager")))  # eager first: the parity references
    sync()
    result["build_s"] = time.perf_counter() - t0
    save(result)
    rng = np.random.default_rng(0)
    anchors = {hw: rng.integers(0, 256, (*hw, 3), dtype=np.uint8) for hw in sizes}

    def frames(n: int, hw) -> torch.Tensor:
        g = torch.Generator(device=args.device).manual_seed(n)
        return torch.rand(n, 3, *hw, generator=g, device=args.device).to(getattr(torch, args.dtype)) * 2 - 1

    def editor_for(hw) -> FrameEditor:
        ed = FrameEditor(pipe, PROMPT, size=hw, padded=hw)
        if args.anchor != "none":
            ed.record_anchor(anchors[hw])
        return ed

    # eager fp16 reference outputs (before binding) for the parity check of the fast paths
    refs = {}
    if name != "eager":
        for hw in sizes:
            ed = editor_for(hw)
            refs[hw] = ed.edit_tensor(frames(2, hw)).float().cpu()
            ed.close()
    if name != "eager":  # then the same modules routed through the backend
        opts = backends.resolve_options(backend, options)
        if cuda:
            runner = backends.get_backend(backend)
        else:  # the CPU dry run: the same code with graphs run eagerly on their static buffers
            from movie_plugins.backends.cuda_graphs import CudaGraphsBackend

            runner, opts = CudaGraphsBackend(), dict(opts, capture=False)
            result["dry_run"] = "no CUDA: graphs ran eagerly on their static buffers (capture=False)"
        pipe.runtime = backends.Runtime(pipe, runner, opts,
                                        backends.ArtifactCache(tempfile.mkdtemp(prefix="movie-gpu-bench-")))

    def timed(fn, *a) -> float:
        sync()
        start = time.perf_counter()
        fn(*a)
        sync()
        return (time.perf_counter() - start) * 1000

    for hw in sizes:
        key = f"{hw[1]}x{hw[0]}"
        entry: dict = {}
        result["sizes"][key] = entry
        t0 = time.perf_counter()
        editor = editor_for(hw)
        sync()
        entry["anchor_s"] = time.perf_counter() - t0
        for batch in [1] + batches:
            x = frames(batch, hw)
            first = timed(editor.run, x)  # builds (captures, compiles) the graph for this shape
            timed(editor.run, x)
            reps = args.repeats if batch == 1 else max(3, args.repeats // 3)
            times = [timed(editor.run, x) for _ in range(reps)]
            med = statistics.median(times)
            entry[f"batch{batch}"] = {"first_call_s": first / 1000, "ms_median": med, "ms_p90": _pct(times, 0.9),
                                      "ms_min": min(times), "repeats": reps, "ms_per_frame": med / batch,
                                      "frames_per_s": batch * 1000 / med}
            save(result)
        if hw in refs:
            out = editor.run(frames(2, hw)).float().cpu()
            diff = (out - refs[hw]).abs()
            entry["parity_vs_eager"] = {"max_abs": diff.max().item(), "mean_abs": diff.mean().item(),
                                        "max_abs_uint8": diff.max().item() * 127.5, "frames": 2}
        entry["fused"] = editor.fast is not None
        entry["fused_reason"] = editor.fast_reason or ""
        if editor.fast is not None:
            entry["graph_build_s"] = dict(getattr(editor.fast, "build_s", {}))
        editor.close()
        save(result)
    result["peak_mem_gb"] = torch.cuda.max_memory_allocated() / 2**30 if cuda else None
    result["status"] = "ok"
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
        tmp = out.with_name(out.name + ".tmp")
        tmp.write_text(json.dumps(report, indent=2, default=str) + "\n")
        tmp.replace(out)

    def left() -> float:
        return args.budget - (time.perf_counter() - start)

    save()
    for name in [b.strip() for b in args.backends.split(",") if b.strip()]:
        if name == "compile":
            report["compile"] = run_compile(args, report, save, left)
            continue
        if name == "tensorrt" and importlib.util.find_spec("tensorrt") is None:
            report["backends"][name] = {"status": "skipped", "reason": "tensorrt is not importable"}
        elif left() < 20:
            report["backends"][name] = {"status": "skipped", "reason": f"the {args.budget:.0f} s budget is spent"}
        else:
            report["backends"][name] = run_child(args, name, left())
        save()
        print(summary_line(name, report["backends"][name]), flush=True)
    report["total_s"] = time.perf_counter() - start
    save()
    print(f"wrote {out} ({report['total_s']:.0f} s)")
    return 0


def run_compile(args: argparse.Namespace, report: dict, save, left) -> dict:
    """The fused frame graph built by torch.compile: each mode cold (a fresh inductor cache) while the budget
    lasts, then the fastest at batch 1 once more in a second process on the same cache (the warm build)."""
    root = Path(os.environ.get("TORCHINDUCTOR_CACHE_DIR") or tempfile.mkdtemp(prefix="movie-inductor-"))
    summary: dict = {"cache_root": str(root), "modes": {}}
    warm_label = None
    for i, mode in enumerate([m.strip() for m in args.compile_modes.split(",") if m.strip()]):
        label = f"compile:{mode}"
        cache = root / f"run-{os.getpid()}-{mode}"
        if left() < 30:
            report["backends"][label] = {"status": "skipped", "reason": f"the {args.budget:.0f} s budget is spent"}
        else:
            report["backends"][label] = run_child(args, "compile", left(), {"compile": mode}, cache)
        save()
        print(summary_line(label, report["backends"][label]), flush=True)
        if i == 0 and report["backends"][label].get("status") == "ok":  # the first mode again, warm, at once
            warm_label = f"compile-warm:{mode}"
            if left() < 30:
                report["backends"][warm_label] = {"status": "skipped", "reason": "the budget is spent"}
            else:
                report["backends"][warm_label] = run_child(args, "compile", left(), {"compile": mode}, cache)
            save()
            print(summary_line(warm_label, report["backends"][warm_label]), flush=True)
            summary["warm_mode"] = mode
            summary["cold_build_s"] = _build_total(report["backends"][label])
            warm = report["backends"][warm_label]
            summary["warm_build_s"] = _build_total(warm) if warm.get("status") == "ok" else None
    timed = {label: r for label, r in report["backends"].items() if label.startswith("compile:") and
             r.get("status") == "ok"}

    def b1(r: dict) -> float:
        return min(e["batch1"]["ms_median"] for e in r["sizes"].values() if "batch1" in e)

    summary["modes"] = {label.split(":", 1)[1]: {"batch1_ms": b1(r), "build_s": _build_total(r)}
                        for label, r in timed.items()}
    summary["chosen"] = min(summary["modes"], key=lambda m: summary["modes"][m]["batch1_ms"]) if timed else None
    return summary


def _build_total(r: dict) -> float:
    """Seconds spent building graphs (inductor compile + capture), summed over the shapes of a run."""
    return sum(v for e in r.get("sizes", {}).values() for v in e.get("graph_build_s", {}).values())


def run_child(args: argparse.Namespace, name: str, timeout: float, options: dict | None = None,
              inductor_cache: Path | None = None) -> dict:
    with tempfile.TemporaryDirectory() as tmp:
        child_out = Path(tmp) / "result.json"
        cmd = [sys.executable, os.path.abspath(__file__), "--out", args.out, "--child", name,
               "--child-out", str(child_out), "--child-options", json.dumps(options or {}),
               "--sizes", args.sizes, "--batches", args.batches, "--compile-sizes", args.compile_sizes,
               "--compile-batches", args.compile_batches, "--repeats", str(args.repeats), "--anchor", args.anchor,
               "--device", args.device, "--size", args.size, "--dtype", args.dtype]
        env = dict(os.environ)
        if inductor_cache is not None:  # inductor's and triton's caches in one folder: cold once, warm after
            env["TORCHINDUCTOR_CACHE_DIR"] = str(inductor_cache)
            env["TRITON_CACHE_DIR"] = str(inductor_cache / "triton")
        started = time.perf_counter()
        try:
            proc = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout, env=env)
        except subprocess.TimeoutExpired:
            result = json.loads(child_out.read_text()) if child_out.is_file() else {}
            result.update(status="timeout", error=f"did not finish in the {timeout:.0f} s left of the budget "
                                                  f"(raise --budget or run --backends {name} alone); "
                                                  "figures present were measured before the cut")
            result["wall_s"] = time.perf_counter() - started
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


def summary_line(name: str, r: dict) -> str:
    parts = []
    for size, e in r.get("sizes", {}).items():
        bits = []
        if "batch1" in e:
            bits.append(f"b1 {e['batch1']['ms_median']:.2f} ms (p90 {e['batch1']['ms_p90']:.2f})")
        bits += [f"b{k[5:]} {v['frames_per_s']:.0f} f/s" for k, v in e.items()
                 if k.startswith("batch") and k != "batch1"]
        if "parity_vs_eager" in e:
            bits.append(f"max|d| {e['parity_vs_eager']['max_abs']:.3g}")
        if e.get("fused_reason") and not name.startswith("eager"):
            bits.append(f"not fused: {e['fused_reason']}")
        parts.append(f"{size}: " + ", ".join(bits))
    if r.get("status") != "ok":
        parts.append(f"{r.get('status')}: {r.get('error') or r.get('reason')}")
    return f"{name:28} " + "; ".join(parts)


if __name__ == "__main__":
    sys.exit(main())
