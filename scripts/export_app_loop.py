"""Measure the reference app loop against `movie edit` (not a test): max and mean pixel differences.

For each backend (onnx: onnxruntime's CPU provider; hexagon: QNN context binaries in onnxruntime-qnn's HTP
emulator, fp16) and each case (one frame with `--anchor none`; three frames with the default middle anchor; three
frames with `--detail global` and one with `--detail local`, on frames twice the working size: the output rule the
default model uses): `movie export` of the `movie` recipe (built-in nano weights) at the size, `movie edit` of the
same synthetic frames, and examples/app_loop.py on the export in a subprocess where torch, diffusers, transformers
and tokenizers cannot be imported. Writes the figures, the commands and the versions as JSON.

    python scripts/export_app_loop.py [--backends onnx,hexagon] [--out docs/results/export_app_loop.json]
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys
import tempfile
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parent.parent
PROMPT = "make it look like a watercolor painting"
HEIGHT, WIDTH = 192, 256
CASES = (("none", 1, "none"), ("middle", 3, "none"), ("middle", 3, "global"), ("none", 1, "local"))
BLOCK = ("torch", "diffusers", "transformers", "tokenizers")
# run a script with BLOCK unimportable (a meta-path finder refusing them)
BLOCKED = f"""
import runpy, sys
NAMES = {BLOCK!r}
class Block:
    def find_spec(self, name, path=None, target=None):
        if name.split(".")[0] in NAMES:
            raise ImportError(f"{{name}} is blocked: the app loop must not need it")
sys.meta_path.insert(0, Block())
script, *sys.argv = sys.argv[1:]
sys.argv.insert(0, script)
runpy.run_path(script, run_name="__main__")
assert not set(NAMES) & {{m.split(".")[0] for m in sys.modules}}, "a blocked module was imported"
"""


def run(cmd: list[str], env: dict[str, str], timeout: float) -> None:
    done = subprocess.run(cmd, capture_output=True, text=True, env=os.environ | env, timeout=timeout)
    if done.returncode:
        raise RuntimeError(f"{' '.join(cmd[:4])} ... failed:\n{done.stderr[-3000:]}")


def movie(*args: str, env: dict[str, str], timeout: float = 1200) -> None:
    run([sys.executable, "-c", "import sys; from movie_core.cli import main; main(sys.argv[1:])", *args], env, timeout)


def frames(folder: Path, count: int, height: int, width: int) -> list[Path]:
    from PIL import Image

    from movie_core.bench import synthetic_frames

    folder.mkdir(parents=True, exist_ok=True)
    paths = [folder / f"frame_{i + 1:06d}.png" for i in range(count)]
    for path, f in zip(paths, synthetic_frames(count, height, width)):
        Image.fromarray(f).save(path)
    return paths


def read(folder: Path) -> np.ndarray:
    from PIL import Image

    return np.stack([np.asarray(Image.open(p)) for p in sorted(folder.glob("frame_*.png"))]).astype(int)


def compare(backend: str, anchor: str, count: int, work: Path, height: int = HEIGHT, width: int = WIDTH,
            env: dict[str, str] | None = None, detail: str = "none") -> dict:
    """Export, edit and run the app loop for one case (exports and edits found in work are reused). With a detail
    mode the source frames are twice the working size, so the output is the colour map on pixels the model never
    saw (the manifest's detail rule), not its frames resized back."""
    env = env or {}
    size = ["--height", str(height), "--width", str(width)]
    recipe = ["--preset", "movie", "--size", "nano", "--anchor", anchor, "--detail", detail]
    sh, sw = (height, width) if detail == "none" else (2 * height, 2 * width)
    export = work / f"export-{backend}-{anchor}-{detail}"
    src, tag = work / f"src-{count}-{sh}x{sw}", f"{anchor}-{count}-{detail}"
    edit, app = work / f"edit-{tag}", work / f"app-{backend}-{tag}"
    commands = [f"movie export --backend {backend} {' '.join(recipe + size)} --out EXPORT",
                f"movie edit SRC -p '{PROMPT}' -o EDIT {' '.join(recipe + size)} --fps 10 --no-progress",
                f"python examples/app_loop.py EXPORT '{PROMPT}' SRC/frame_*.png --out APP"]
    if not export.is_dir():
        movie("export", "--backend", backend, *recipe, *size, "--out", str(export), env=env)
    paths = sorted(src.glob("frame_*.png")) or frames(src, count, sh, sw)
    if not edit.is_dir():
        movie("edit", str(src), "-p", PROMPT, "-o", str(edit), *recipe, *size, "--fps", "10", "--no-progress", env=env)
    run([sys.executable, "-c", BLOCKED, str(ROOT / "examples" / "app_loop.py"), str(export), PROMPT,
         *map(str, paths), "--out", str(app)], env, 1200)
    got, want, source = read(app), read(edit), read(src)
    if got.shape != want.shape:
        raise RuntimeError(f"app loop wrote {got.shape}, movie edit {want.shape}")
    diff = np.abs(got - want)
    runtime = json.loads((export / "manifest.json").read_text())["runtime"]
    return {"backend": backend, "anchor": anchor, "frames": count, "height": height, "width": width,
            "detail": detail, "source_size": [sh, sw],
            "max_abs_diff": int(diff.max()), "mean_abs_diff": round(float(diff.mean()), 6),
            "pixels_over_1": int((diff > 1).sum()), "mean_edit_change": round(float(np.abs(want - source).mean()), 3),
            "provider": runtime["provider"], "provider_options": runtime["options"], "commands": commands}


def versions() -> dict[str, str]:
    from importlib.metadata import PackageNotFoundError, version

    out = {"python": platform.python_version(), "machine": platform.machine()}
    for name in ("movie", "numpy", "onnxruntime", "onnxruntime-qnn", "torch"):
        try:
            out[name] = version(name)
        except PackageNotFoundError:
            pass
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--backends", default="onnx,hexagon")
    ap.add_argument("--height", type=int, default=HEIGHT)
    ap.add_argument("--width", type=int, default=WIDTH)
    ap.add_argument("--work", help="folder for exports and frames (default: a temporary one)")
    ap.add_argument("--out", default=str(ROOT / "docs" / "results" / "export_app_loop.json"))
    a = ap.parse_args()
    work = Path(a.work or tempfile.mkdtemp(prefix="movie-app-loop-"))
    work.mkdir(parents=True, exist_ok=True)
    results: list[dict] = []
    for backend in a.backends.split(","):
        for anchor, count, detail in CASES:
            r = compare(backend, anchor, count, work, a.height, a.width, detail=detail)
            results.append(r)
            print(f"{backend:8} anchor {anchor:6} {count} frame(s), detail {detail:6}: max {r['max_abs_diff']} "
                  f"mean {r['mean_abs_diff']:.6f} (edit changed the frames by {r['mean_edit_change']} on average)",
                  flush=True)
            record = {"what": "examples/app_loop.py (numpy, PIL, onnxruntime; torch, diffusers, transformers and "
                              "tokenizers blocked) vs `movie edit` of the same frames: absolute uint8 pixel "
                              "differences", "command": f"python scripts/export_app_loop.py --backends {a.backends}",
                      "prompt": PROMPT, "model": "built-in nano weights, --preset movie (1 step), seed 0",
                      "results": results, "versions": versions()}
            Path(a.out).write_text(json.dumps(record, indent=2) + "\n")  # after each case: partial runs keep theirs
    print(f"wrote {a.out}")


if __name__ == "__main__":
    main()
