"""Time of the 1-step stage's training steps with its GAN term off (lambda_gen 0: the discriminator is neither run
nor trained) against the same steps with it on (lambda_gen 0.1: the discriminator's forward, R1 and update run, as
they did for lambda_gen 0 before it was skipped): the chain's 1-step settings (batch 32, 64 px with every other step
at 128, 1 timestep, ground-truth anchoring, the vpred model as teacher sampler), `--steps` steps each, alternating,
`--repeats` times. Run it with nothing else on the machine.

    OMP_NUM_THREADS=2 python scripts/adversarial_gan_skip.py --work W --out docs/results/adversarial_gan_skip.json

W: a `movie nano-train` work folder with a vpred stage and the 1-step stage's dataset (data-mixed, else data).
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


def run_once(work: Path, data: Path, out: Path, gan: float, steps: int) -> float:
    cmd = ["movie", "distill", "adversarial", "--teacher", str(work / "vpred"), "--data", str(data), "--out",
           str(out), "--steps", str(steps), "--batch-size", "32", "--lr", "1e-4", "--warmup-steps", "4",
           "--resolution", "64", "--extra-resolution", "128", "--cache-latents", "--checkpoint-every", "100000",
           "--log-every", str(steps), "--no-progress", "-O", "teacher_sampler=student-init",
           "-O", "student_timesteps=1", "-O", f"lambda_gen={gan}", "-O", "data_weight=1.0", "-O", "lr_d=1e-4"]
    subprocess.run(cmd, check=True, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    rows = [json.loads(line) for line in (out.parent / f"{out.name}.train" / "log.jsonl").read_text().splitlines()]
    return float(rows[-1]["seconds"])  # the training loop's clock over the steps (setup and export excluded)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--work", type=Path, required=True)
    p.add_argument("--steps", type=int, default=40)
    p.add_argument("--repeats", type=int, default=2)
    p.add_argument("--out", type=Path, default=Path("docs/results/adversarial_gan_skip.json"))
    a = p.parse_args(argv)
    data = a.work / "data-mixed" if (a.work / "data-mixed").is_dir() else a.work / "data"
    runs: dict[str, list[float]] = {"gan_off": [], "gan_on": []}
    with tempfile.TemporaryDirectory() as tmp:
        for r in range(a.repeats):
            for name, gan in (("gan_off", 0.0), ("gan_on", 0.1)):
                secs = run_once(a.work, data, Path(tmp) / f"{name}-{r}", gan, a.steps)
                runs[name].append(secs)
                print(f"{name} (lambda_gen {gan}) repeat {r + 1}: {secs:.2f} s for {a.steps} steps", flush=True)
    off, on = min(runs["gan_off"]), min(runs["gan_on"])
    result = {"command": "python scripts/adversarial_gan_skip.py " + " ".join(argv or sys.argv[1:]),
              "threads": os.environ.get("OMP_NUM_THREADS"), "machine": platform.processor() or platform.machine(),
              "steps": a.steps, "seconds": runs, "seconds_per_step": {"gan_off": off / a.steps, "gan_on": on / a.steps},
              "saved_share": 1 - off / on}
    a.out.parent.mkdir(parents=True, exist_ok=True)
    a.out.write_text(json.dumps(result, indent=2) + "\n")
    print(f"lambda_gen 0 now {off / a.steps:.3f} s/step against {on / a.steps:.3f} with the discriminator: "
          f"{100 * (1 - off / on):.0f}% less -> {a.out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
