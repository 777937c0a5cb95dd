"""MobileDiffusion's Table 5 at nano scale for text-to-image (issue 23, item 4): UFOGen's reconstruction losses x
full or LoRA fine-tuning, from one nano text-to-image teacher, scored by prompt following.

Each of the six runs is `movie distill ufogen` from --teacher on --data with the same budget and the options that
made the one-step model follow prompts (docs/mobilediffusion.md, run ufo-c: real=pairs with the teacher's DDIM-25
samples at s_T 7.5, lambda_adv 1, lr_d 2e-4, two timesteps), varying only `recon` (diffusion, distill, ema) and
`lora` (none, --lora-rank). Each model is scored with scripts/t2i_prompt_following.py at 1 LCM step and s_T 1 (its
trained scale) on the first --count held-out prompts of --held (the paper's FID is replaced by the share of
prompts followed: the named colour dominates the named region and the background is right). The teacher at 25 DDIM
steps and at 1 step is scored beside them.

    OMP_NUM_THREADS=1 python scripts/t2i_table5.py --teacher T2I --data CAPTIONS_TRAIN --held CAPTIONS \\
        --steps 300 --out docs/results/table5_nano_t2i.json

Prints a table and saves JSON (per run: options, training seconds, prompt following and its parts).
"""

from __future__ import annotations

import argparse
import json
import platform
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))
import t2i_prompt_following as pf  # noqa: E402

# ufo-c's options (the run whose one-step model followed prompts), all but recon and lora
OPTIONS = {"lr_d": 2e-4, "lambda_adv": 1.0, "timesteps": 2, "real": "pairs", "teacher_steps": 25,
           "text_guidance_min": 7.5, "text_guidance_max": 7.5}


def follow(models: list[str], held: str, count: int, runs: list[str], threads: int) -> list[dict[str, Any]]:
    with tempfile.TemporaryDirectory() as tmp:
        out = Path(tmp) / "pf.json"
        argv = [a for m in models for a in ("--model", m)] + ["--data", held, "--count", str(count), *runs,
                                                              "--threads", str(threads), "--out", str(out)]
        pf.main(argv)
        return json.loads(out.read_text())["models"]


def main(argv: list[str] | None = None) -> dict[str, Any]:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--teacher", required=True, type=Path, help="A text-to-image model folder (t2i-train's output).")
    p.add_argument("--data", required=True, type=Path, help="The captions dataset the one-step models train on.")
    p.add_argument("--held", required=True, type=Path, help="The captions dataset whose test split is scored.")
    p.add_argument("--steps", type=int, default=300)
    p.add_argument("--batch-size", type=int, default=16)
    p.add_argument("--lr", type=float, default=1e-4)
    p.add_argument("--resolution", type=int, default=128)
    p.add_argument("--lora-rank", type=int, default=4)
    p.add_argument("--count", type=int, default=200, help="Held-out prompts scored.")
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--work", type=Path, help="Keep the trained models here (default: a temporary folder).")
    p.add_argument("--out", type=Path, default=Path("docs/results/table5_nano_t2i.json"))
    args = p.parse_args(argv)
    import torch

    from movie_core.plugins import get_registry
    from movie_core.training.loop import TrainConfig, run

    torch.set_num_threads(args.threads)
    work = args.work or Path(tempfile.mkdtemp(prefix="t2i-table5-"))
    work.mkdir(parents=True, exist_ok=True)
    spec = get_registry().get("distiller", "ufogen")
    rows: dict[str, Any] = {}
    for lora in (False, True):
        for recon in ("diffusion", "distill", "ema"):
            name = f"ufogen recon={recon}, {'LoRA rank ' + str(args.lora_rank) if lora else 'full'}"
            options = {**OPTIONS, "recon": recon, **({"lora": args.lora_rank} if lora else {})}
            out = work / "".join(c if c.isalnum() else "-" for c in name)
            started = time.perf_counter()
            if not out.exists():
                cfg = TrainConfig(steps=args.steps, batch_size=args.batch_size, lr=args.lr,
                                  resolution=args.resolution, log_every=25, checkpoint_every=10_000, seed=0,
                                  cache_latents=True)
                run(spec.load_factory()(spec.make_config(**options)), args.teacher, args.data, out, cfg,
                    progress=False)
            rows[name] = {"model": str(out), "options": options,
                          "train_seconds": round(time.perf_counter() - started, 1)}
            scored = follow([str(out)], str(args.held), args.count, ["--steps", "1", "--guidance", "1"],
                            args.threads)[0]
            rows[name]["one_step_s_T_1"] = scored["runs"][0]
            print(f"{name}: follows {scored['runs'][0]['follows']:.3f}", flush=True)
    teacher = follow([str(args.teacher)], str(args.held), args.count,
                     ["--steps", "25", "--steps", "1", "--guidance", "7.5"], args.threads)[0]
    rows["teacher, 25 DDIM steps, s_T 7.5"] = {"model": str(args.teacher), "one_step_s_T_1": teacher["runs"][0]}
    rows["teacher at 1 step, s_T 7.5"] = {"model": str(args.teacher), "one_step_s_T_1": teacher["runs"][1]}
    result = {"command": "python " + " ".join([sys.argv[0], *(argv if argv is not None else sys.argv[1:])]),
              "teacher": str(args.teacher), "data": str(args.data), "held": str(args.held),
              "train": {"steps": args.steps, "batch_size": args.batch_size, "lr": args.lr,
                        "resolution": args.resolution},
              "measure": "share of held-out prompts followed (t2i_prompt_following.py)", "count": args.count,
              "machine": {"cpu": platform.machine(), "threads": args.threads}, "rows": rows,
              "ceiling": teacher.get("ceiling")}
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=2) + "\n")
    print(f"{'run':44s} {'follows':>8s} {'colour':>7s} {'background':>10s} {'shape':>6s} {'train s':>8s}")
    for name, row in rows.items():
        r = row["one_step_s_T_1"]
        print(f"{name:44s} {r['follows']:8.3f} {r['colour']:7.3f} {r['background']:10.3f} {r['shape']:6.3f} "
              f"{row.get('train_seconds', float('nan')):8.1f}")
    print(f"wrote {args.out}")
    return result


if __name__ == "__main__":
    main()
