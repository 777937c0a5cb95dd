"""Write docs/results/ablations.md from the outputs of the three examples in examples/ (run them first).

    python scripts/ablation_results.py [--results docs/results]

Every number on the page comes from the examples' ablation.json and run.json; the paper's figures are quoted
beside them.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path
from typing import Any

from movie_core.ablation import markdown_table

ROOT = Path(__file__).resolve().parent.parent
PAPER_TABLE1 = {"base": (21.31, 1.37), "mobile": (16.10, 1.06), "mmg": (5.50, 0.82), "movie": (0.76, 0.11)}
PAPER_TABLE2 = {(0.0, 1.0): 0.759, (-1.0, 1.0): 0.769, (-1.0, 2.0): 0.765}
EXAMPLES = (
    ("fig7_autoencoders", "Fig. 7: SD VAE and TAESD as encoder and decoder"),
    ("table1_ladder", "Table 1: the ladder base -> mobile -> mmg -> movie"),
    ("table2_disc_noise", "Table 2: the discriminator noise of adversarial distillation"),
)


def _read(folder: Path) -> tuple[dict[str, Any], dict[str, Any]] | None:
    if not (folder / "ablation.json").is_file():
        return None
    table = json.loads((folder / "ablation.json").read_text())
    run = json.loads((folder / "run.json").read_text()) if (folder / "run.json").is_file() else {}
    return table, run


def _fig7(table: dict[str, Any]) -> list[str]:
    rows = {(r["encoder"], r["decoder"]): r for r in table["rows"] if r["status"] == "ok"}
    vae, tiny = rows.get(("sd-vae", "sd-vae")), rows.get(("taesd", "taesd"))
    if not (vae and tiny):
        return []
    saving = 1 - tiny["tflops_full_ae"] / vae["tflops_full_ae"]
    best = max(rows.values(), key=lambda r: r["psnr"])
    return [
        f"Paper (Sec. 3.2): TAESD saves 92.6% of the autoencoder FLOPs of the SD VAE. Here: {saving:.1%} "
        f"({vae['tflops_full_ae']:.3f} -> {tiny['tflops_full_ae']:.3f} TFLOPs per frame at full size), and the whole "
        f"MoViE frame costs {tiny['tflops_full']:.3f} instead of {vae['tflops_full']:.3f} TFLOPs. The paper's Fig. 7 "
        "plots CLIP scores without numbers in the text; it reports a moderate quality drop with TAESD and a better "
        "result when the budget goes to the decoder. At nano scale the held-out PSNR of the four pairs spans "
        f"{max(r['psnr'] for r in rows.values()) - min(r['psnr'] for r in rows.values()):.2f} dB "
        f"(best: {best['encoder']} encoder, {best['decoder']} decoder); the nano TAESD was distilled into the nano "
        "VAE's latent space ([nano.md](nano.md)).",
    ]


def _table1(table: dict[str, Any]) -> list[str]:
    lines = ["| preset | TFLOPs (ours, full size) | TFLOPs (paper) | CPU ms/frame @128 (ours, nano) | A100 s (paper) | "
             "PSNR dB (ours, nano) |", "|---|---:|---:|---:|---:|---:|"]
    for r in table["rows"]:
        if r["status"] != "ok" or r["preset"] not in PAPER_TABLE1:
            continue
        tflops, seconds = PAPER_TABLE1[r["preset"]]
        lines.append(f"| {r['preset']} | {r['tflops_full']:.2f} | {tflops:.2f} | {r['ms_per_frame']:.1f} "
                     f"| {seconds:.2f} | {r['psnr']:.2f} |")
    return ["Beside the paper's Table 1:", "", *lines, "",
            "The FLOPs are the full-size architectures' and reproduce the paper's column; the CPU times and the "
            "PSNR are the nano models'. By PSNR the nano stages rank "
            + " > ".join(r["preset"] for r in sorted((r for r in table["rows"] if r["status"] == "ok"),
                                                     key=lambda r: -r["psnr"]))
            + " (the shipped nano family, see [nano.md](nano.md)); in the paper quality drops slightly at each step."]


def _table2(table: dict[str, Any]) -> list[str]:
    lines = ["| mean | std | one-step MSE (ours) | PSNR dB (ours) | CLIP-Image (paper) |", "|---:|---:|---:|---:|---:|"]
    for r in table["rows"]:
        if r["status"] != "ok":
            continue
        key = (float(r["disc_noise_mean"]), float(r["disc_noise_std"]))
        paper = PAPER_TABLE2.get(key)
        lines.append(f"| {key[0]:g} | {key[1]:g} | {r['one_step_mse']:.4f} | {r['psnr']:.2f} | "
                     f"{'' if paper is None else f'{paper:.3f}'} |")
    ok = [r for r in table["rows"] if r["status"] == "ok"]
    spread = (max(r["one_step_mse"] for r in ok) - min(r["one_step_mse"] for r in ok)) if ok else 0.0
    return ["Beside the paper's Table 2 (CLIP-Image at 1 step, higher is better; ours: MSE to the 5-step teacher, "
            "lower is better, and PSNR against the ground truth):", "", *lines, "",
            f"The paper finds (-1, 1) best by 0.004-0.010 CLIP-Image. Here the settings differ by {spread:.4f} in "
            "one-step MSE; with short nano runs, read differences of that size as noise unless they repeat with "
            "other seeds."]


NOTES = {"fig7_autoencoders": _fig7, "table1_ladder": _table1, "table2_disc_noise": _table2}


def render(results: Path) -> str:
    out = ["# Ablations at nano scale: results", "",
           "Made with the public API ([docs/ablations.md](../ablations.md)) by the three scripts in `examples/`, "
           "on the shipped nano models, then this page by `python scripts/ablation_results.py`. Each section gives "
           "the command, its wall time on the machine it ran on, the table and the charts; the raw tables are in "
           "`ablations/<name>/ablation.{csv,json,md}` and every finished cell in `ablations/<name>/cells/`. A rerun "
           "reuses the cells whose weights, data and settings are unchanged.", ""]
    for name, heading in EXAMPLES:
        folder = results / "ablations" / name
        found = _read(folder)
        out += [f"## {heading}", ""]
        if found is None:
            out += [f"Not run yet: `python examples/{name}.py`.", ""]
            continue
        table, run = found
        wall = f"{run['wall_seconds']:.0f} s wall time" if "wall_seconds" in run else "wall time not recorded"
        machine = f" ({run['machine']})" if run.get("machine") else ""
        out += [f"    {run.get('command', f'python examples/{name}.py')}", "",
                f"{wall}{machine}; the cells took {table['run']['cell_seconds']:.0f} s of it.", "",
                markdown_table(table["rows"], table["columns"]), ""]
        out += [f"- `{c}`: {h}" for c, h in table.get("column_help", {}).items()]
        out += [f"- {n}" for n in table["notes"]] + [""]
        out += [f"![{name} {c}](ablations/{name}/{c})" for c in table["charts"]] + [""]
        out += NOTES[name](table) + [""]
    return "\n".join(out).rstrip() + "\n"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--results", type=Path, default=ROOT / "docs" / "results")
    args = parser.parse_args()
    page = args.results / "ablations.md"
    tmp = page.with_name(".ablations.md.tmp")
    tmp.write_text(render(args.results))
    tmp.replace(page)
    print(f"wrote {page}")


if __name__ == "__main__":
    main()
