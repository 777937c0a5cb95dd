#!/usr/bin/env bash
# Issue 26 on one NVIDIA GPU, in one command:   bash scripts/gpu_issue26.sh
#   1. installs the carried wheels (.whl/*.whl, plus PyAV reassembled from /tmp/movie-whl-parts if staged) into
#      /tmp/site and makes the project importable from this checkout (movie_plugins is plugins/, linked);
#   2. gpu_bench.py eager + cuda-graphs (512x384 and 480x480; batch 1 median/p90, batch 8 and 32);
#   3. gpu_e2e.py: `movie edit` of a real clip with audio, eager vs cuda-graphs vs the CPU path (needs PyAV);
#   4. gpu_bench.py compile: the fused graph built by torch.compile, modes cold while time lasts, best one warm;
#   5. prints a compact summary. Everything lands in $OUT (bench.json, e2e.json, compile.json, summary.json, log.txt).
# The whole run stops itself after TOTAL seconds (default 400); each phase saves its JSON as it goes.
# DRY=1 bash scripts/gpu_issue26.sh   is a CPU dry run of the same script (nano size, 64x64, a few seconds each).
# bash scripts/gpu_issue26.sh stage   copies carried .whl/parts/* to /tmp/movie-whl-parts (PyAV in pieces, one call each).
set -u
cd "$(dirname "$0")/.."
if [ "${1:-}" = "stage" ]; then
  mkdir -p /tmp/movie-whl-parts && cp -v .whl/parts/* /tmp/movie-whl-parts/ && ls -la /tmp/movie-whl-parts
  exit 0
fi
OUT=${OUT:-$(mktemp -d /tmp/movie-issue26-XXXX)}
mkdir -p "$OUT"
exec > >(tee -a "$OUT/log.txt") 2>&1
T0=$(date +%s)
TOTAL=${TOTAL:-400}
left() { echo $(( TOTAL - ($(date +%s) - T0) )); }
PY=${PY:-python3}
export PYTHONUNBUFFERED=1

# --- 1. packages and the import path ----------------------------------------------------------------
SITE=${SITE:-/tmp/site}
mkdir -p "$SITE"
WHEELS=$(ls .whl/*.whl 2>/dev/null)
for sum in /tmp/movie-whl-parts/*.whl.sha256; do  # PyAV staged in pieces by earlier `stage` calls
  [ -f "$sum" ] || continue
  whl=$(basename "${sum%.sha256}")
  mkdir -p /tmp/movie-whl-joined
  cat "/tmp/movie-whl-parts/$whl".part* > "/tmp/movie-whl-joined/$whl" 2>/dev/null
  if (cd /tmp/movie-whl-joined && sha256sum -c --quiet "$sum"); then WHEELS="$WHEELS /tmp/movie-whl-joined/$whl"
  else echo "staged $whl is incomplete (a stage call missing): not installed"; fi
done
if [ -n "${WHEELS// /}" ]; then
  $PY -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target "$SITE" $WHEELS \
    || echo "wheel install failed: continuing with what is importable"
fi
SRC=/tmp/movie-src
mkdir -p "$SRC" && ln -sfn "$PWD/plugins" "$SRC/movie_plugins"
export PYTHONPATH="$SITE:$SRC:$PWD${PYTHONPATH:+:$PYTHONPATH}"
export TORCHINDUCTOR_CACHE_DIR=${TORCHINDUCTOR_CACHE_DIR:-/tmp/movie-inductor-cache}
$PY - <<'EOF' | tee "$OUT/env.txt"
import importlib, sys
print("python", sys.version.split()[0])
for name in ("torch", "diffusers", "transformers", "av", "movie_core", "movie_plugins"):
    try:
        m = importlib.import_module(name)
        print(f"{name:14} {getattr(m, '__version__', '')} {m.__file__}")
    except Exception as exc:
        print(f"{name:14} NOT importable: {type(exc).__name__}: {exc}")
import torch
print("cuda", torch.cuda.is_available(), torch.cuda.get_device_name() if torch.cuda.is_available() else "")
EOF

if [ -n "${DRY:-}" ]; then
  COMMON="--device cpu --size nano --dtype float32 --sizes 64x64 --batches 2,4 --repeats 3"
  CSIZE="--compile-sizes 32x32 --compile-batches= --compile-modes default"
  E2E="--device cpu --size nano --width 64 --height 64 --seconds 2 --fps 12 --batch-size 4"
  B1=60; B2=60
else
  COMMON="--device cuda --size full --dtype float16 --sizes 512x384,480x480 --batches 8,32 --repeats 30"
  CSIZE="--compile-sizes 512x384 --compile-batches= --compile-modes default,max-autotune-no-cudagraphs"  # one build per mode
  E2E="--device cuda --size full --width 512 --height 384 --seconds 8 --fps 30 --batch-size 8"
  B1=170; B2=100
fi

# --- 2. eager and cuda-graphs -------------------------------------------------------------------------
b=$(left); [ "$b" -gt "$B1" ] && b=$B1
$PY scripts/gpu_bench.py --out "$OUT/bench.json" --backends eager,cuda-graphs $COMMON --budget "$b"
# --- 3. end to end ------------------------------------------------------------------------------------
b=$(left); [ "$b" -gt "$B2" ] && b=$B2
[ "$b" -gt 20 ] && $PY scripts/gpu_e2e.py --out "$OUT/e2e.json" $E2E --budget "$b"
# --- 4. torch.compile, cold then warm -----------------------------------------------------------------
b=$(( $(left) - 10 ))
[ "$b" -gt 40 ] && $PY scripts/gpu_bench.py --out "$OUT/compile.json" --backends compile $COMMON $CSIZE --budget "$b"

# --- 5. summary ---------------------------------------------------------------------------------------
$PY - "$OUT" <<'EOF'
import json, sys
from pathlib import Path
out = Path(sys.argv[1])
def load(name):
    p = out / name
    return json.loads(p.read_text()) if p.is_file() else {}
bench, e2e, comp = load("bench.json"), load("e2e.json"), load("compile.json")
summary = {"backends": {}, "e2e": {}, "compile": comp.get("compile")}
for src in (bench, comp):
    for name, r in src.get("backends", {}).items():
        row = {"status": r.get("status"), "error": r.get("error") or r.get("reason")}
        for size, e in r.get("sizes", {}).items():
            row[size] = {k: (round(v["ms_median"], 3), round(v["ms_p90"], 3)) if k == "batch1" else
                         round(v["frames_per_s"], 1) for k, v in e.items() if k.startswith("batch")}
            if "parity_vs_eager" in e:
                row[size]["parity_max_abs"] = e["parity_vs_eager"]["max_abs"]
            if e.get("fused_reason") and name != "eager":
                row[size]["not_fused"] = e["fused_reason"]
        summary["backends"][name] = row
env = next((r.get("env") for r in bench.get("backends", {}).values() if r.get("env")), {})
summary["env"] = {k: env.get(k) for k in ("gpu", "driver", "torch", "cuda", "diffusers", "transformers", "av")}
summary["tflops_per_frame"] = bench.get("backends", {}).get("eager", {}).get("tflops_per_frame")
for name, r in e2e.get("runs", {}).items():
    summary["e2e"][name] = {k: r.get(k) for k in ("status", "frames", "wall_s", "command_frames_per_s",
                                                  "loop_frames_per_s", "matches_input")}
summary["e2e_status"] = e2e.get("status"), e2e.get("reason"), e2e.get("outputs_agree")
(out / "summary.json").write_text(json.dumps(summary, indent=1, default=str) + "\n")
print("=== summary (ms: batch1 median, p90; others frames/s) ===")
print(json.dumps(summary["env"]))
for name, row in summary["backends"].items():
    print(name, json.dumps(row, default=str))
print("compile:", json.dumps(summary["compile"], default=str))
for name, row in summary["e2e"].items():
    print("e2e", name, json.dumps(row, default=str))
print("e2e status/reason/outputs agree:", summary["e2e_status"])
EOF
echo "total $(( $(date +%s) - T0 )) s; files in $OUT: $(ls "$OUT" | tr '\n' ' ')"
