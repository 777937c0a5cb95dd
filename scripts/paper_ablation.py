"""Each departure of the shipped nano chain from the paper, one at a time, on the paper-faithful chain (issue 28).

The base is `movie nano-train --out ROOT/paper --preset paper` (every stage as the paper specifies where the budget
allows). Each departure is that chain with one budget entry set back to the shipped family's value, trained into
ROOT/<departure> with `--reuse-from ROOT/paper`, so only the stages that read the entry, and those after them, are
trained again. Then scripts/chain_compare.py scores the shipped family, the paper chain and every finished departure
on one held-out dataset into --out.

    OMP_NUM_THREADS=2 python scripts/paper_ablation.py --root /work/runs/ablation [--only NAME ...] \\
        [--scale 0.01] [--dry-run] --out docs/results/paper_ablation.json

Resumable at every level: a finished chain stage is skipped, an interrupted one resumes from its checkpoint, a
scored stage is not scored again. --dry-run prints the commands and what each departure retrains. --table prints
the scored --out as the markdown table of docs/paper_fidelity.md (no training, no scoring).
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent

# name -> (budget entry, the shipped family's value, why the shipped chain departs; docs/paper_fidelity.md), cheapest
# first (the stages each retrains: adversarial < vpred < mmg < mobile-pix2pix < the whole line)
DEPARTURES: dict[str, tuple[str, object, str]] = {
    "gt-anchoring": ("adversarial_data_weight", 1.0, "the real samples corrected towards the ground truth"),
    "adversarial-lr": ("adversarial_lr", 2e-4, "20x Appendix B's rate"),
    "anchor-guidance": ("adversarial_guidance", "anchor", "the 1-step student trained at the anchor scales only "
                        "(Algorithm 2: s_I ~ U[1, 3], s_T ~ U[2, 14]), so its real samples are the ground truth"),
    "adversarial-steps": ("adversarial_steps", 5000, "five times the 1-step stage's steps (at the anchor a step "
                          "costs under half of Algorithm 2's)"),
    "teacher-vpred": ("adversarial_teacher", "student-init", "the v-prediction model as teacher sampler and "
                      "discriminator backbone (Appendix B: the Stage-3 model)"),
    "extra-resolution": ("adversarial_extra_resolution", 256, "every other step also at 256 px, the default's "
                         "working size"),
    "one-timestep": ("adversarial_timesteps", 1, "the 1-step student trained at t = 999 only (Appendix B: 8 Euler "
                     "timesteps, 999 down to 0)"),
    "no-gan-term": ("adversarial_gan_weight", 0.0, "the generator's loss without Algorithm 2's adversarial term"),
    "one-step-mixed-data": ("adversarial_data_source", "mixed", "the 1-step stage on photographs and procedural "
                            "scenes (the paper: one dataset for every stage)"),
    "vpred-relative": ("vpred_weighting", "relative", "each example's error over its target's norm"),
    "vpred-lr": ("vpred_lr", 2e-4, "200x Appendix B's rate"),
    "mmg-lr": ("mmg_lr", 3e-4, "30x Appendix B's rate"),
    "time-embedding-guidance": ("guidance_inject", "time", "one guidance projection added to the time embedding "
                                "(Sec. 3.3: each ResNet block's own)"),
    "no-t2i-finetune": ("t2i_mobile_steps", 0, "Stage 1 without its finetune: the top attention dropped and the "
                        "image channels added at once (as the first paper-order chain ran; Sec. 4 finetunes between)"),
    "mobile-lr": ("mobile_lr", 2e-4, "2x InstructPix2Pix's rate for Stage 2"),
    "mobile-uniform": ("mobile_weighting", "uniform", "Stage 2 on the plain loss named apart from the base's "
                       "(the paper's loss; 'same' follows the base)"),
    "base-v-weighting": ("pix2pix_weighting", "v", "the base's second run with each example's error in v "
                         "(InstructPix2Pix: the plain epsilon MSE)"),
    "base-v-steps": ("ip2p_steps", 2000, "the base's second run, 2000 steps (after 6000 on the plain loss)"),
    "two-run-base": ("ip2p_uniform_steps", 6000, "the base trained 6000 steps on the plain loss before its v-weighted "
                     "run (one run of 6000 in the paper preset)"),
    "ip2p-lr": ("ip2p_lr", 5e-4, "5x InstructPix2Pix's rate for the base model (off the paper order's mobile line)"),
    "ip2p-order": ("stage_order", "ip2p", "mobile-pix2pix from the trained instruct-pix2pix (Sec. 4: from "
                   "text-to-image)"),
}


def _train(root: Path, name: str, changes: dict[str, object], scale: float, dry_run: bool) -> None:
    cmd = ["movie", "nano-train", "--out", str(root / name), "--preset", "paper", "--no-progress"]
    for key, value in changes.items():
        cmd += ["-B", f"{key}={value}"]
    if scale != 1.0:
        cmd += ["--scale", str(scale)]
    if name != "paper":
        cmd += ["--reuse-from", str(root / "paper")]
    print("$ " + " ".join(cmd), flush=True)
    if not dry_run:
        subprocess.run(cmd, check=True)


SCORED = ("mobile-pix2pix", "mobile-pix2pix-mmg", "mobile-pix2pix-1step")  # the mobile line's scored stages


def table(result: dict) -> str:
    """Markdown: the shipped family, the paper chain and each scored departure; per chain the entry set back, the
    stages trained again (the rest copied from the paper chain), each scored mobile-line stage's held-out PSNR /
    SSIM ('=' where copied), the one-step model's PSNR change against the paper chain, its s_T / s_I responses and
    the discriminator's accuracy on real / fake examples over its last tenth of training."""
    chains = result["chains"]
    paper = chains["paper"]["stages"]["mobile-pix2pix-1step"]["images"]["test"]["psnr"]
    paper_copied = (chains["paper"].get("chain") or {}).get("reused") or {}
    head = ["chain", "set back to", "trained again", "mobile-pix2pix", "mmg", "1-step", "1-step vs paper (dB)",
            "s_T / s_I (1-step)", "D acc real / fake"]
    lines = ["| " + " | ".join(head) + " |", "|" + " --- |" * len(head)]
    for name, entry in chains.items():
        record = entry.get("chain") or {}
        # copied from the paper chain, or the paper chain's copy of it (a departure trained before the paper chain)
        here = Path(entry.get("folder", name)).resolve()
        reused = set(record.get("reused") or {}) | {
            stage for stage, copy in paper_copied.items() if Path(copy.get("from", "")).resolve() == here}
        trained = [k for k in record.get("seconds") or {} if k not in reused and k != "init"]
        if name in ("shipped", "paper"):
            what, again = ("(all)", "(all)")
        else:
            key, value, _ = DEPARTURES.get(name, (name, "?", ""))
            what, again = f"`{key}={value}`", ", ".join(trained) or "-"
        cells = []
        for stage in SCORED:
            row = entry["stages"].get(stage)
            copied = name not in ("shipped", "paper") and stage in reused
            cells.append("-" if row is None else "=" if copied else
                         f"{row['images']['test']['psnr']:.2f} / {row['images']['test']['ssim']:.3f}")
        one = entry["stages"].get("mobile-pix2pix-1step") or {}
        control = one.get("controllability") or {}
        health = (one.get("discriminator") or {}).get("last_tenth") or {}
        psnr = (one.get("images") or {}).get("test", {}).get("psnr")
        lines.append("| " + " | ".join([
            name, what, again, *cells, "-" if psnr is None or name == "paper" else f"{psnr - paper:+.2f}",
            f"{control.get('text_guidance', {}).get('direction', '-')} / "
            f"{control.get('image_guidance', {}).get('direction', '-')}",
            f"{health['d_acc_real']:.2f} / {health['d_acc_fake']:.2f}" if health.get("d_acc_real") is not None
            else "-"]) + " |")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--root", type=Path, help="Folder of the chains (ROOT/paper is the base).")
    p.add_argument("--only", action="append", choices=sorted(DEPARTURES), help="These departures (repeatable).")
    p.add_argument("--scale", type=float, default=1.0, help="nano-train --scale (a smoke run: 0.001).")
    p.add_argument("--dry-run", action="store_true", help="Print the commands; train and score nothing.")
    p.add_argument("--no-compare", action="store_true", help="Train only.")
    p.add_argument("--table", action="store_true", help="Print the scored --out as a markdown table and stop.")
    p.add_argument("--out", type=Path, default=Path("docs/results/paper_ablation.json"))
    args = p.parse_args(argv)
    if args.table:
        if not args.out.is_file():
            raise SystemExit(f"error: {args.out} does not exist: nothing scored yet")
        print(table(json.loads(args.out.read_text())))
        return
    if args.root is None:
        p.error("--root is required (unless --table)")
    names = args.only or list(DEPARTURES)
    _train(args.root, "paper", {}, args.scale, args.dry_run)
    for name in names:
        key, value, why = DEPARTURES[name]
        print(f"# {name}: {key}={value} ({why})", flush=True)
        _train(args.root, name, {key: value}, args.scale, args.dry_run)
    if args.dry_run or args.no_compare:
        return
    chains = ["--chain", f"shipped={ROOT / 'plugins' / 'nano'}", "--chain", f"paper={args.root / 'paper'}"]
    for name in names:
        chains += ["--chain", f"{name}={args.root / name}"]
    sys.path.insert(0, str(ROOT / "scripts"))
    import chain_compare

    chain_compare.main([*chains, "--out", str(args.out), *(["--quick"] if args.scale < 0.1 else [])])


if __name__ == "__main__":
    main()
