"""img2img video stylization: does the anchor's cross-frame attention keep a text-to-image model's frames together?

`movie edit --strength S` with a text-to-image denoiser, once with the anchor (the default, `--anchor middle`)
and once with `--anchor none`, on the same moving test clip with the same seed. The denoiser's weights are random
(nano size, seeded: no text-to-image model is trained here yet); the autoencoder is the shipped nano TAESD, so the
decoded frames show the source's structure. Reported per run: the mean absolute
change between consecutive output frames (0-255), the same for the source clip, the mean change from the source,
and the probe of the output (frames, fps, size, audio) against the source's. Prints and saves JSON.

    python scripts/img2img_anchor.py --out docs/results/img2img_anchor.json
"""

from __future__ import annotations

import argparse
import json
import platform
import shutil
import sys
import tempfile
from pathlib import Path

import numpy as np

TAESD = Path(__file__).resolve().parent.parent / "plugins" / "nano" / "autoencoders" / "taesd"


def frames(path: Path) -> np.ndarray:
    import av

    with av.open(str(path)) as box:
        return np.stack([f.to_ndarray(format="rgb24") for f in box.decode(video=0)]).astype(np.float32)


def frame_change(x: np.ndarray) -> float:
    return float(np.abs(np.diff(x, axis=0)).mean())


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--denoisers", default="stable-diffusion,mobile-diffusion")
    ap.add_argument("--strength", type=float, default=0.5)
    ap.add_argument("--steps", type=int, default=4)
    ap.add_argument("--seconds", type=float, default=1.0)
    ap.add_argument("--fps", type=int, default=8)
    ap.add_argument("--width", type=int, default=96)
    ap.add_argument("--height", type=int, default=64)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--out", type=Path)
    args = ap.parse_args()

    from movie_core.cli import main as movie
    from movie_core.video import make_test_video, probe

    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        src = make_test_video(Path(tmp) / "in.mp4", seconds=args.seconds, fps=args.fps, width=args.width,
                              height=args.height, audio=True)
        source = frames(src)
        for den in args.denoisers.split(","):
            model = Path(tmp) / den
            try:  # a random text-to-image model folder, then the shipped trained TAESD in place of its random one
                movie(["compose", "--denoiser", den, "--vae", "taesd", "--size", "nano", "--init", "random",
                       "--seed", str(args.seed), "--save-model", str(model)])
            except SystemExit as exc:
                if exc.code:
                    sys.exit(f"movie compose --denoiser {den} --save-model failed ({exc.code})")
            for name in ("config.json", "diffusion_pytorch_model.safetensors"):
                shutil.copyfile(TAESD / name, model / "taesd" / name)
            for anchor in ("middle", "none"):
                out = Path(tmp) / f"{den}-{anchor}.mp4"
                argv = ["edit", str(src), "-p", "a watercolor painting of a red square", "-o", str(out),
                        "--model", str(model), "--steps", str(args.steps), "--seed", str(args.seed),
                        "--strength", str(args.strength),
                        "--anchor", anchor, "--no-progress"]
                try:
                    movie(argv)
                except SystemExit as exc:
                    if exc.code:
                        sys.exit(f"movie {' '.join(argv)} failed ({exc.code})")
                edited = frames(out)
                want, got = probe(src), probe(out)
                kept = {k: got[k] == want[k] for k in ("frame_count", "fps", "width", "height", "audio_codec")}
                rows.append({
                    "denoiser": den, "anchor": anchor, "strength": args.strength, "steps": args.steps,
                    "frame_change": round(frame_change(edited), 3),
                    "source_frame_change": round(frame_change(source), 3),
                    "change_from_source": round(float(np.abs(edited - source).mean()), 3),
                    "kept": kept,
                })
                print(f"{den:18s} anchor {anchor:6s}: frame-to-frame change {rows[-1]['frame_change']:.3f} "
                      f"(source {rows[-1]['source_frame_change']:.3f}), from source "
                      f"{rows[-1]['change_from_source']:.3f}, kept {all(kept.values())}")
    result = {
        "what": __doc__.strip().splitlines()[0],
        "command": "python " + " ".join(sys.argv),
        "weights": "denoiser: random init at nano size (seeded); autoencoder: the shipped nano TAESD",
        "clip": f"make_test_video: {args.seconds} s at {args.fps} fps, {args.width}x{args.height}, AAC audio",
        "machine": platform.platform(),
        "rows": rows,
    }
    text = json.dumps(result, indent=1)
    if args.out:
        args.out.write_text(text + "\n")
        print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
