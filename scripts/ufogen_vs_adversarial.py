"""UFOGen (MobileDiffusion Sec. 4) vs MoViE's adversarial step distillation (Algorithm 2) from the same nano teacher.

Both one-step students start from the shipped nano family's stage-3 v-prediction model (plugins/nano/vpred, the
guidance-distilled model that `adversarial` starts from in `movie nano-train`) and train the same number of steps
with the same batch, resolution, learning rate and data (procedural edits, generator seed 0), on the CPU:

* adversarial: the shipped recipe's options (`data_weight=1`, 5-step LCM teacher samples, hinge GAN + MSE);
* ufogen: `recon=diffusion` (the paper's final choice), real x0 from the teacher at the sampled s_I, s_T (`real=auto`
  for a guidance-embedded teacher), lr_d = lr; --ufogen-real adds rows with other real x0 (`noise-pairs`: the
  teacher's sample from the generator's own noise). --seeds trains every recipe once per seed and adds the means.

Scored on held-out procedural edits (another generator seed): PSNR / SSIM of the 1-step edit against the ground
truth at the movie preset's scales (s_I 1.5, s_T 7.5), and the controllability response: edit strength (mean
absolute change from the source, 0-255) as s_T rises (at s_I 1.5) and as s_I rises (at s_T 7.5), and as s_I rises
the structure kept (movie_core.evaluate.structure_kept: the source's edges still in the edit, InstructPix2Pix's
image-similarity axis); `monotonic` says whether strength rises with s_T and falls with s_I, and whether the
structure kept rises with s_I (and `structure_rises_in`: in what share of the held-out images it does, the same
images and noise at every scale). The shipped 1-step model (1000 adversarial steps) and the
teacher at 1 step are scored alongside. Saves JSON; prints a table.

    nice -n 10 python scripts/ufogen_vs_adversarial.py [--steps 200] [--out FILE.json]

With --table5 it trains MobileDiffusion's Table 5 grid instead, from the same teacher, data and budget: `ufogen` with
each reconstruction loss (recon = diffusion, distill, ema) x full fine-tuning or LoRA (-O lora=RANK, --lora-rank),
scored the same way (the paper's FID is replaced by PSNR/SSIM against the ground truth):

    nice -n 10 python scripts/ufogen_vs_adversarial.py --table5 --steps 200 --out docs/results/table5_nano_edit.json
"""

from __future__ import annotations

import argparse
import json
import platform
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

ROOT = Path(__file__).resolve().parent.parent
S_T = (2.0, 5.0, 7.5, 10.0, 14.0)
S_I = (1.0, 1.5, 2.0, 3.0)


def score(folder: Path, held: Path, n: int, steps: int = 1) -> dict:
    from movie_core.data.datasets import open_dataset
    from movie_core.evaluate import PipelinePredictor, psnr, ssim, structure_kept
    from movie_core.training.distiller import Distiller

    pipe = Distiller().load_teacher(folder, torch.device("cpu"))
    ds = open_dataset(held, "test")
    samples = [ds[i] for i in range(min(n, len(ds)))]
    sources = [s["source"] for s in samples]
    prompts = [s["instruction"] for s in samples]
    predictor = PipelinePredictor(pipe, steps=steps, seed=0)
    made: dict[tuple[float, float], list[np.ndarray]] = {}  # (s_T, s_I) -> the edits (the same seed: made once)

    def edits(s_T: float, s_I: float) -> list[np.ndarray]:
        if (s_T, s_I) not in made:
            made[s_T, s_I] = predictor.at(s_T=s_T, s_I=s_I)(sources, prompts)
        return made[s_T, s_I]

    def strength(s_T: float, s_I: float) -> float:
        return float(np.mean([np.abs(e.astype(np.float64) - s.astype(np.float64)).mean()
                              for e, s in zip(edits(s_T, s_I), sources)]))

    out = edits(7.5, 1.5)
    row = {"psnr": float(np.mean([psnr(o, s["edited"]) for o, s in zip(out, samples)])),
           "ssim": float(np.mean([ssim(o, s["edited"]) for o, s in zip(out, samples)]))}
    row["strength_vs_s_T"] = {str(v): strength(v, 1.5) for v in S_T}
    row["strength_vs_s_I"] = {str(v): strength(7.5, v) for v in S_I}
    kept = {v: [structure_kept(e, s) for e, s in zip(edits(7.5, v), sources)] for v in S_I}
    row["structure_vs_s_I"] = {str(v): float(np.mean(k)) for v, k in kept.items()}
    # the same images and noise at every s_I: the share of them whose structure kept rises from the lowest s_I to the
    # highest (0.5 = no response; a sign test over the held-out images)
    first, last = kept[S_I[0]], kept[S_I[-1]]
    row["structure_rises_in"] = float(np.mean([b > a for a, b in zip(first, last)]))
    t, i, k = (list(row[key].values()) for key in ("strength_vs_s_T", "strength_vs_s_I", "structure_vs_s_I"))
    row["monotonic"] = {"s_T_rises": all(b >= a for a, b in zip(t, t[1:])),
                        "s_I_falls": all(b <= a for a, b in zip(i, i[1:])),
                        "s_I_keeps_structure": all(b >= a for a, b in zip(k, k[1:]))}
    return row


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--steps", type=int, default=200)
    ap.add_argument("--batch-size", type=int, default=8)
    ap.add_argument("--lr", type=float, default=1e-4)
    ap.add_argument("--resolution", type=int, default=64)
    ap.add_argument("--train-count", type=int, default=512)
    ap.add_argument("--held-out", type=int, default=24)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--teacher", type=Path, default=ROOT / "plugins" / "nano" / "vpred")
    ap.add_argument("--shipped", type=Path, default=ROOT / "plugins" / "nano" / "mobile-pix2pix-1step")
    ap.add_argument("--out", type=Path, default=ROOT / "docs" / "results" / "ufogen_vs_adversarial_nano.json")
    ap.add_argument("--work", type=Path, default=None, help="Keep the trained models here (default: a temp folder).")
    ap.add_argument("--table5", action="store_true", help="MobileDiffusion's Table 5 grid: ufogen's three "
                    "reconstruction losses x full or LoRA fine-tuning (instead of ufogen vs adversarial).")
    ap.add_argument("--lora-rank", type=int, default=4, help="LoRA rank of the --table5 LoRA rows.")
    ap.add_argument("--ufogen-real", nargs="+", default=["auto"], choices=["auto", "teacher", "noise-pairs", "pairs"],
                    help="ufogen's real x0 (-O real=...), one row each (default: auto, i.e. teacher here).")
    ap.add_argument("--teacher-steps", nargs="*", type=int, default=[5, 8], help="Also score the teacher at these "
                    "steps (5: the sampler real=teacher draws its real x0 with; its response bounds the students').")
    ap.add_argument("--sampler", type=Path, default=None, help="The model both recipes draw their real x0 from "
                    "(adversarial -O teacher_sampler=stage3, ufogen -O teacher_sampler_model; both still start from "
                    "--teacher): Appendix B's Stage-3 model, e.g. plugins/nano/mobile-pix2pix-mmg. Default: the "
                    "--teacher itself. Scored at --teacher-steps in its place.")
    ap.add_argument("--seeds", nargs="+", type=int, default=[0], help="Training seeds: every recipe once per seed "
                    "(rows named '... seed N' when more than one), and the mean over seeds per recipe.")
    args = ap.parse_args(argv)
    torch.set_num_threads(args.threads)

    from movie_core.data import writer
    from movie_core.plugins import get_registry
    from movie_core.training.loop import TrainConfig, run

    work = args.work or Path(tempfile.mkdtemp(prefix="ufogen-vs-adv-"))
    work.mkdir(parents=True, exist_ok=True)
    train, held = work / "train", work / "held"
    if not train.exists():
        writer.write_nano(train, count=args.train_count, videos=0, size=args.resolution, seed=0,
                              test_fraction=0.05)
    if not held.exists():
        writer.write_nano(held, count=2 * args.held_out, videos=0, size=args.resolution, seed=11,
                              test_fraction=0.5)
    # the shipped recipe's teacher sampler is the student's own start (the same vpred teacher as ufogen's); with
    # --sampler both draw from that model (adversarial also takes it as the discriminator's backbone, Appendix B)
    args.sampler = args.sampler.resolve() if args.sampler else None
    sampler = {"teacher_sampler_model": str(args.sampler)} if args.sampler else {}
    recipes: dict[str, dict] = {
        "adversarial": {"data_weight": 1.0, "lr_d": args.lr} | (
            {"teacher_sampler": "stage3"} | sampler if sampler else {"teacher_sampler": "student-init"}),
        **{"ufogen" + ("" if real == "auto" else f" real={real}"): {"recon": "diffusion", "lr_d": args.lr} | (
            {} if real == "auto" else {"real": real}) | sampler for real in args.ufogen_real},
    }
    if args.table5:  # Table 5: reconstruction loss x full / LoRA fine-tuning, all ufogen
        recipes = {f"ufogen recon={recon}, {'LoRA rank ' + str(args.lora_rank) if lora else 'full'}":
                   {"recon": recon, "lr_d": args.lr, **({"lora": args.lora_rank} if lora else {})}
                   for lora in (False, True) for recon in ("diffusion", "distill", "ema")}
    def shown(folder: Path) -> str:
        return str(folder.relative_to(ROOT)) if folder.is_relative_to(ROOT) else str(folder)

    result: dict = {"teacher": shown(args.teacher), "sampler": shown(args.sampler or args.teacher),
                    "train": {"steps": args.steps, "batch_size": args.batch_size, "lr": args.lr,
                              "resolution": args.resolution, "train_count": args.train_count, "data_seed": 0},
                    "held_out": {"count": args.held_out, "data_seed": 11, "scales": {"s_I": 1.5, "s_T": 7.5}},
                    "machine": {"cpu": platform.processor() or platform.machine(), "threads": args.threads},
                    "command": "nice -n 10 python scripts/ufogen_vs_adversarial.py " + " ".join(argv or sys.argv[1:]),
                    "rows": {}}
    for seed in args.seeds:
        for recipe_name, options in recipes.items():
            name = recipe_name + (f" seed {seed}" if len(args.seeds) > 1 else "")
            spec = get_registry().get("distiller", name.split()[0])
            cfg = TrainConfig(steps=args.steps, batch_size=args.batch_size, lr=args.lr, resolution=args.resolution,
                              log_every=10, checkpoint_every=10_000, seed=seed, cache_latents=True)
            out = work / "".join(c if c.isalnum() else "-" for c in name)
            t0 = time.perf_counter()
            timing = out / "train_seconds.json"  # a model found in --work keeps the time it was trained in
            if not out.exists():
                run(spec.load_factory()(spec.make_config(**options)), args.teacher, train, out, cfg, progress=False)
                timing.write_text(json.dumps(time.perf_counter() - t0) + "\n")
            seconds = json.loads(timing.read_text()) if timing.is_file() else time.perf_counter() - t0
            row = score(out, held, args.held_out)
            shown_options = options | ({"teacher_sampler_model": shown(args.sampler)} if args.sampler else {})
            row |= {"options": shown_options, "seed": seed, "train_seconds": round(seconds, 1)}
            result["rows"][name] = row
            print(name, json.dumps(row), flush=True)
    if len(args.seeds) > 1:  # per recipe: the mean over seeds, and in how many seeds each scale's response held
        result["means"] = {}
        for recipe_name in recipes:
            rows = [result["rows"][f"{recipe_name} seed {seed}"] for seed in args.seeds]
            result["means"][recipe_name] = {
                "psnr": float(np.mean([r["psnr"] for r in rows])), "ssim": float(np.mean([r["ssim"] for r in rows])),
                **{key: {v: float(np.mean([r[key][v] for r in rows])) for v in rows[0][key]}
                   for key in ("strength_vs_s_T", "strength_vs_s_I", "structure_vs_s_I")},
                "structure_rises_in": float(np.mean([r["structure_rises_in"] for r in rows])),
                "monotonic_in_seeds": {k: sum(r["monotonic"][k] for r in rows) for k in rows[0]["monotonic"]},
                "seeds": list(args.seeds)}
    drawn = args.sampler or args.teacher
    label = f"sampler ({drawn.name})" if args.sampler else "teacher (vpred)"
    for name, folder, steps in (("shipped 1-step (adversarial, 1000 steps)", args.shipped, 1),
                                ("teacher (vpred) at 1 step", args.teacher, 1),
                                *((f"{label} at {k} steps", drawn, k) for k in args.teacher_steps)):
        result["rows"][name] = score(folder, held, args.held_out, steps)
        print(name, json.dumps(result["rows"][name]), flush=True)
    args.out.write_text(json.dumps(result, indent=1) + "\n")
    print(f"{'model':44s} {'PSNR':>6s} {'SSIM':>6s}  strength s_T 2->14      s_I 1->3     "
          f"structure kept s_I 1->3  rises in  monotonic")
    for name, row in result["rows"].items():
        t = " ".join(f"{v:5.1f}" for v in row["strength_vs_s_T"].values())
        i = " ".join(f"{v:5.1f}" for v in row["strength_vs_s_I"].values())
        k = " ".join(f"{v:5.3f}" for v in row["structure_vs_s_I"].values())
        print(f"{name:44s} {row['psnr']:6.2f} {row['ssim']:6.3f}  {t}  {i}  {k}  {row['structure_rises_in']:8.2f}  "
              f"{row['monotonic']}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
