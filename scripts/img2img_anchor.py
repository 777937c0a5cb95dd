"""img2img video stylization: does the anchor's cross-frame attention keep a text-to-image model's frames together?

`movie edit --strength S` with a text-to-image denoiser, once with the anchor (the default, `--anchor middle`)
and once with `--anchor none`, on the same moving test clip with the same seed. By default the denoiser's weights are
random (nano size, seeded) and the autoencoder is the shipped nano TAESD, so the decoded frames show the source's
structure; `--model` runs a trained text-to-image model folder instead (`movie distill --strategy t2i-train`),
with `--prompt` in its training phrasing. Reported per run: the mean absolute
change between consecutive output frames (0-255), the same for the source clip, the mean change from the source,
the edit change (the same frame-to-frame measure of output minus source: how much the edit itself flickers, motion
that the output follows from the source cancelling out), and the probe of the output (frames, fps, size, audio)
against the source's. Prints and saves JSON.

    python scripts/img2img_anchor.py --out docs/results/img2img_anchor.json
    python scripts/img2img_anchor.py --model T2I --steps 25 --width 128 --height 96 \
        --prompt "a red circle on the left, the background is blue" --out docs/results/img2img_anchor_trained.json
"""

from __future__ import annotations

import argparse
import itertools
import json
import platform
import shlex
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


def moving_scene(args: argparse.Namespace):
    """Frames of a captions scene (square, width = the clip's) whose shapes move right by --motion of the width a
    frame, with --noise of sensor noise."""
    from movie_core.data import captions

    if args.width != args.height:
        sys.exit("--clip captions needs --width equal to --height (the captions scenes are square)")
    spec = captions.make_spec(args.scene, "test")
    middle = round(args.seconds * args.fps) // 2  # the shapes pass their place in the scene half way

    def frame(index: int) -> np.ndarray:
        moved = dict(spec, shapes=[dict(s, x=s["x"] + args.motion * (index - middle)) for s in spec["shapes"]])
        image = captions.render(moved, args.width).astype(np.float64)
        image += np.random.default_rng([args.scene, index]).normal(0, args.noise, image.shape) if args.noise else 0
        return np.clip(np.round(image), 0, 255).astype(np.uint8)
    return frame


def random_model(den: str, model: Path, seed: int) -> None:
    """A random text-to-image model folder, then the shipped trained TAESD in place of its random one."""
    from movie_core.cli import main as movie

    try:
        movie(["compose", "--denoiser", den, "--vae", "taesd", "--size", "nano", "--init", "random",
               "--seed", str(seed), "--save-model", str(model)])
    except SystemExit as exc:
        if exc.code:
            sys.exit(f"movie compose --denoiser {den} --save-model failed ({exc.code})")
    for name in ("config.json", "diffusion_pytorch_model.safetensors"):
        shutil.copyfile(TAESD / name, model / "taesd" / name)


def summary(rows: list[dict]) -> list[dict]:
    """Per denoiser and strength, over the seeds: the mean frame change and edit change with the anchor and without,
    and for how many seeds the anchor lowers each."""
    out = []
    for den, strength in dict.fromkeys((r["denoiser"], r["strength"]) for r in rows):
        line: dict = {"denoiser": den, "strength": strength}
        for key in ("frame_change", "edit_change"):
            by = {(r["seed"], r["anchor"]): r[key] for r in rows
                  if r["denoiser"] == den and r["strength"] == strength}
            seeds = sorted({seed for seed, _ in by})
            anchored = float(np.mean([by[s, "middle"] for s in seeds]))
            none = float(np.mean([by[s, "none"] for s in seeds]))
            line.update({"seeds": len(seeds), key: {
                "anchored": round(anchored, 3), "none": round(none, 3), "relative": round(anchored / none - 1, 4),
                "lowered": sum(by[s, "middle"] < by[s, "none"] for s in seeds)}})
        out.append(line)
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--denoisers", default="stable-diffusion,mobile-diffusion")
    ap.add_argument("--strength", type=float, nargs="+", default=[0.5])
    ap.add_argument("--steps", type=int, default=4)
    ap.add_argument("--seconds", type=float, default=1.0)
    ap.add_argument("--fps", type=int, default=8)
    ap.add_argument("--width", type=int, default=96)
    ap.add_argument("--height", type=int, default=64)
    ap.add_argument("--seed", type=int, nargs="+", default=[0],
                    help="seeds (each: the random weights' and the edit's); with several, a summary per denoiser and "
                         "strength: the mean frame change with and without the anchor and how many seeds it lowers")
    ap.add_argument("--model", type=Path, help="a trained text-to-image model folder (default: random weights)")
    ap.add_argument("--prompt", default="a watercolor painting of a red square")
    ap.add_argument("--clip", choices=("test", "captions"), default="test",
                    help="test: a square moving over a panning gradient; captions: a scene of the captions data "
                         "(`movie data captions`, seed --scene) whose shapes move right, for a model trained on it")
    ap.add_argument("--motion", type=float, default=0.015,
                    help="--clip captions: how far the shapes move a frame, as a fraction of the width")
    ap.add_argument("--noise", type=float, default=0.0,
                    help="--clip captions: sensor noise, the standard deviation in 0-255 levels, new every frame")
    ap.add_argument("--scene", type=int, default=0, help="the captions scene's seed (test split) for --clip captions")
    ap.add_argument("--out", type=Path)
    args = ap.parse_args()

    from movie_core.cli import main as movie
    from movie_core.video import make_test_video, probe

    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        src = make_test_video(Path(tmp) / "in.mp4", seconds=args.seconds, fps=args.fps, width=args.width,
                              height=args.height, audio=True, frame_fn=moving_scene(args) if args.clip == "captions"
                              else None)
        source = frames(src)
        runs = [(json.loads((args.model / "movie.json").read_text())["recipe"]["denoiser"], args.model, seed)
                for seed in args.seed] if args.model else \
            [(den, Path(tmp) / f"{den}-{seed}", seed) for den in args.denoisers.split(",") for seed in args.seed]
        for den, model, seed in runs:
            if not args.model:
                random_model(den, model, seed)
            for strength, anchor in itertools.product(args.strength, ("middle", "none")):
                out = Path(tmp) / f"{den}-{seed}-{strength}-{anchor}.mp4"
                argv = ["edit", str(src), "-p", args.prompt, "-o", str(out),
                        "--model", str(model), "--steps", str(args.steps), "--seed", str(seed),
                        "--strength", str(strength),
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
                    "denoiser": den, "seed": seed, "anchor": anchor, "strength": strength, "steps": args.steps,
                    "frame_change": round(frame_change(edited), 3),
                    "source_frame_change": round(frame_change(source), 3),
                    "change_from_source": round(float(np.abs(edited - source).mean()), 3),
                    "edit_change": round(frame_change(edited - source), 3),
                    "kept": kept,
                })
                print(f"{den:18s} seed {seed} strength {strength} anchor {anchor:6s}: "
                      f"frame-to-frame change {rows[-1]['frame_change']:.3f} "
                      f"(source {rows[-1]['source_frame_change']:.3f}), from source "
                      f"{rows[-1]['change_from_source']:.3f}, kept {all(kept.values())}")
    result = {
        "what": __doc__.strip().splitlines()[0],
        "command": "python " + shlex.join(sys.argv),
        "weights": (f"the trained model {args.model}" if args.model else
                    "denoiser: random init at nano size (seeded); autoencoder: the shipped nano TAESD"),
        "prompt": args.prompt,
        "clip": (f"make_test_video: {args.seconds} s at {args.fps} fps, {args.width}x{args.height}, AAC audio"
                 + (f", frames: captions test scene {args.scene}, shapes moving right {args.motion} of the width "
                    f"a frame, sensor noise {args.noise}" if args.clip == "captions" else "")),
        "machine": platform.platform(),
        "rows": rows,
        "summary": summary(rows),
    }
    for line in result["summary"]:
        for key in ("frame_change", "edit_change"):
            m = line[key]
            print(f"{line['denoiser']:18s} strength {line['strength']}: {key.replace('_', ' ')} {m['anchored']:.3f} "
                  f"anchored, {m['none']:.3f} without ({m['relative']:+.2%}); the anchor lowers it for "
                  f"{m['lowered']} of {line['seeds']} seeds")
    text = json.dumps(result, indent=1)
    if args.out:
        args.out.write_text(text + "\n")
        print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
