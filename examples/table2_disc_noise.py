"""Paper Table 2 (noise distribution) at nano scale: the adversarial distiller's discriminator noise, logit-normal
(mean, std), one short adversarial run per setting, each scored on held-out data.

Teacher: the shipped nano v-prediction model (`nano:vpred`, the paper's "Stage-3 model finetuned for
v-prediction" that Table 2 starts from). Each setting trains the 1-step student from it with the same seed, steps
and learning rate; only the noise differs. Scores: the adversarial objective (MSE in latents, at 1 step, to the
teacher's 5-step LCM output) and PSNR/SSIM of the 1-step student's edits at the paper's evaluation scales
(Sec. 5: s_T 7.5, s_I 1.2; the project's default s_I is 1.5).
Writes docs/results/ablations/table2_disc_noise/ by default.
"""

import argparse
import json
import os
import platform
import sys
import time
from pathlib import Path

import movie_core as movie

RESULTS = Path(__file__).resolve().parent.parent / "docs" / "results" / "ablations" / "table2_disc_noise"
CACHE = Path(os.environ.get("MOVIE_CACHE_DIR", "~/.cache/movie")).expanduser() / "examples" / "table2_disc_noise"
SETTINGS = [(0.0, 1.0), (-1.0, 1.0), (-1.0, 2.0), (-2.0, 1.0), (1.0, 1.0)]  # the paper's three, then two more

parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
parser.add_argument("--out", type=Path, default=RESULTS, help="output folder (table, charts, finished cells)")
parser.add_argument("--work", type=Path, default=CACHE, help="training data and models (resumable cache)")
parser.add_argument("--steps", type=int, default=150, help="adversarial steps per setting")
parser.add_argument("--batch-size", type=int, default=16)
parser.add_argument("--lr", type=float, default=1e-4, help="student and discriminator learning rate")
parser.add_argument("--limit", type=int, default=48, help="held-out images to score")
parser.add_argument("--text-guidance", type=float, default=7.5, help="s_T of the scored edits (paper: 7.5)")
parser.add_argument("--image-guidance", type=float, default=1.2, help="s_I of the scored edits (paper: 1.2)")
args = parser.parse_args()

started = time.perf_counter()
teacher = "nano:vpred"
work = args.work / movie.fingerprint(teacher)  # retrained shipped weights get a fresh work folder
work.mkdir(parents=True, exist_ok=True)
args.out.mkdir(parents=True, exist_ok=True)
train, heldout = work / "train", work / "heldout"
if not train.exists():
    movie.make_data(train, count=1024, size=64, seed=0, test_fraction=0.05)
if not heldout.exists():
    movie.make_data(heldout, count=2 * args.limit, size=64, seed=1, test_fraction=0.5)
train_opts = dict(batch_size=args.batch_size, resolution=64, cache_latents=True, resume=True, checkpoint_every=50)


def measure(cell):
    student = work / (f"adversarial_mean{cell['disc_noise_mean']:g}_std{cell['disc_noise_std']:g}"
                      f"_steps{args.steps}_bs{args.batch_size}_lr{args.lr:g}")
    if not student.exists():
        movie.distill("adversarial", teacher=teacher, data=train, out=student, steps=args.steps, lr=args.lr,
                      options=dict(cell, lr_d=args.lr), **train_opts)
    objective = movie.objective("adversarial", student=student, teacher=teacher, data=heldout)
    scored = movie.preset("movie").replace(size="nano", text_guidance=args.text_guidance,
                                           image_guidance=args.image_guidance)
    quality = movie.run_eval(scored, model=student, data=heldout, limit=args.limit)
    return {"one_step_mse": objective["student_mse"], "teacher_1_step_mse": objective["teacher_at_1_step_mse"],
            "psnr": quality["psnr"], "ssim": quality["ssim"]}


config = {"teacher": movie.fingerprint(teacher), "data": movie.fingerprint(heldout),
          **vars(args) | {"out": None, "work": None}}
result = movie.run_grid([{"disc_noise_mean": m, "disc_noise_std": s} for m, s in SETTINGS], measure, out=args.out,
                        config=config, bars=["one_step_mse", "psnr", "ssim"], log=print,
                        title="Table 2 at nano scale: discriminator noise logit-normal(mean, std)")
if result["run"]["computed"]:
    (args.out / "run.json").write_text(json.dumps({
        "command": " ".join(["python", "examples/table2_disc_noise.py", *sys.argv[1:]]),
        "wall_seconds": round(time.perf_counter() - started, 1), **result["run"],
        "machine": f"{platform.machine()}, {os.cpu_count()} cores, "
                   f"OMP_NUM_THREADS={os.environ.get('OMP_NUM_THREADS')}, "
                   f"load average {os.getloadavg()[0]:.1f} at the end"}, indent=2) + "\n")
print(open(result["files"]["markdown"]).read())
