"""Nano chains side by side (issue 28): the paper-faithful chain beside the shipped one, and each departure's effect.

Each `--chain NAME=FOLDER` is a `movie nano-train` work folder or a shipped family (the package's is plugins/nano).
Every Table 1 stage the folder holds (instruct-pix2pix, mobile-pix2pix, mobile-pix2pix-mmg, mobile-pix2pix-1step) is
scored on one held-out dataset with nano_results.py's measures: PSNR/SSIM against the exact ground truth on
held-out images and videos, the ratio to the first chain's base model, and for the mmg and one-step stages the edit
strength's response to s_T and s_I. Each stage runs with its own folder's recipe (its autoencoders and denoiser
options, e.g. per-ResNet guidance) and the steps and scales of the stage's preset. Beside them: the chain's stage
objectives and times (chain.json), what it reused (`--reuse-from`), and the adversarial stage's discriminator health
over training (accuracy on real and fake, the GAN term's share of the generator loss) from its training log.

    OMP_NUM_THREADS=2 python scripts/chain_compare.py --chain shipped=plugins/nano --chain paper=WORK \\
        [--chain NAME=WORK ...] --out docs/results/paper_chain.json

Resumable: a stage already scored in --out with the same weights (file hash) and sizes is not scored again. Prints a
table and saves JSON.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import platform
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))
import nano_results as nr  # noqa: E402

HEALTH = ("d_acc_real", "d_acc_fake", "d_hinge", "g_adv_share", "g_adv_term", "g_mse_term")


def _weights_hash(folder: Path) -> str:
    h = hashlib.sha256()
    for f in sorted((folder / "unet").glob("*.safetensors")):
        h.update(f.read_bytes())
    return h.hexdigest()[:16]


def _pipe(folder: Path, preset_name: str):
    """The stage folder's own recipe at nano size, with the preset's steps and scales."""
    from movie_core.composer import compose
    from movie_core.loading import build
    from movie_core.recipe import make_recipe, preset
    from movie_core.weights import read_manifest

    manifest = read_manifest(folder) or {}
    if "recipe" not in manifest:
        raise SystemExit(f"error: {folder} is not a model folder with a recipe (no movie.json recipe)")
    base = preset(preset_name)
    recipe = make_recipe(manifest["recipe"]).replace(size="nano", steps=base.steps, text_guidance=base.text_guidance,
                                                     image_guidance=base.image_guidance)
    return build(compose(recipe), model=folder), recipe


def discriminator_health(log: Path, points: int = 10) -> dict[str, Any] | None:
    """The adversarial stage's logged health terms: means over the first and last tenth of training and a curve of
    `points` window means (None when the log predates them or the stage was not trained here)."""
    if not log.is_file():
        return None
    rows = [json.loads(line) for line in log.read_text().splitlines() if line.strip()]
    rows = [r for r in rows if "d_acc_real" in r]
    if not rows:
        return None

    def mean(part: list[dict[str, Any]], key: str) -> float | None:
        values = [r[key] for r in part if key in r]
        return sum(values) / len(values) if values else None

    tenth = max(1, len(rows) // 10)
    windows = [rows[i * len(rows) // points:(i + 1) * len(rows) // points] for i in range(points)]
    return {"logged_steps": len(rows), "last_step": rows[-1].get("step"),
            "first_tenth": {k: mean(rows[:tenth], k) for k in HEALTH},
            "last_tenth": {k: mean(rows[-tenth:], k) for k in HEALTH},
            "curve": [{"step": w[-1].get("step"), **{k: mean(w, k) for k in HEALTH}} for w in windows if w]}


def _health(folder: Path, stage: str) -> dict[str, Any] | None:
    """discriminator_health of the stage's log where it was trained: here, or where --reuse-from copied it from."""
    origin = Path(((_chain_record(folder).get("reused") or {}).get(stage) or {}).get("from", folder))
    return discriminator_health(origin / f"{stage}.train" / "log.jsonl")


def _chain_record(folder: Path) -> dict[str, Any]:
    path = folder / "chain.json"
    record = json.loads(path.read_text()) if path.is_file() else {}
    return {k: record.get(k) for k in ("budget", "stage_order", "seconds", "metrics", "reused", "total_seconds")}


def main(argv: list[str] | None = None) -> dict[str, Any]:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--chain", action="append", default=[], metavar="NAME=FOLDER", required=True,
                   help="A work folder or shipped family (repeatable; the first one's base is the ratio's 1.0).")
    p.add_argument("--data", type=Path, help="Held-out `movie data nano` dataset (default: generated, seed 1).")
    p.add_argument("--images", type=int, default=48)
    p.add_argument("--videos", type=int, default=24)
    p.add_argument("--control-samples", type=int, default=48)
    p.add_argument("--quick", action="store_true", help="A handful of samples (development and the test).")
    p.add_argument("--out", type=Path, default=Path("docs/results/paper_chain.json"))
    args = p.parse_args(argv)
    import torch

    chains: list[tuple[str, Path]] = []
    for item in args.chain:
        name, _, folder = item.partition("=")
        if not name or not folder or not Path(folder).is_dir():
            raise SystemExit(f"error: --chain expects NAME=FOLDER with an existing folder; got '{item}'")
        chains.append((name, Path(folder)))
    sizes = nr.QUICK if args.quick else nr.Sizes(images=args.images, videos=args.videos,
                                                 control_samples=args.control_samples)
    old = json.loads(args.out.read_text()) if args.out.is_file() else {}
    started = time.time()
    result: dict[str, Any] = {"chains": {}}
    with tempfile.TemporaryDirectory() as tmp:
        data = nr.heldout_data(args.data, sizes, Path(tmp))
        def held_out(summary: dict[str, Any]) -> Any:  # what the data is (not how long writing it took)
            return json.loads(json.dumps(nr._jsonable({k: v for k, v in summary.items() if k != "seconds"})))

        if held_out(old.get("data", {}).get("summary", {})) != held_out(data["summary"]) or old.get("sizes") != (
                json.loads(json.dumps(nr.asdict(sizes)))):
            old = {}  # other held-out data or sizes: nothing carries over
        splits = {"test": "held-out scenes, held-out phrasings"}
        for name, folder in chains:
            rows: dict[str, Any] = {}
            for preset_name, stage in nr.STAGES:
                stage_folder = folder / stage
                if not (stage_folder / "movie.json").is_file():
                    continue
                key = _weights_hash(stage_folder)
                earlier = [row for entry in [*old.get("chains", {}).values(), *result["chains"].values()]
                           for row in entry.get("stages", {}).values()
                           if row.get("weights") == key and row.get("preset") == preset_name]
                if earlier:  # the same weights scored before (here or in another chain that copied the stage)
                    nr.log(f"{name}/{stage}: scored before, same weights")
                    rows[stage] = {**earlier[0], "folder": str(stage_folder)}
                    if stage == "mobile-pix2pix-1step":
                        rows[stage]["discriminator"] = _health(folder, stage)
                    continue
                nr.log(f"scoring {name}/{stage} ({stage_folder})")
                pipe, recipe = _pipe(stage_folder, preset_name)
                row: dict[str, Any] = {"folder": str(stage_folder), "weights": key, "preset": preset_name,
                                       "recipe": {k: getattr(recipe, k) for k in ("encoder", "decoder", "denoiser",
                                                                                 "steps")}}
                row.update(nr.evaluate_stage(pipe, Path(data["path"]), splits, sizes))
                if preset_name in ("mmg", "movie"):
                    from movie_core import evaluate as ev

                    images = ev.open_image_data(Path(data["path"]), "test")
                    row["controllability"] = nr.controllability_curves(pipe, images, sizes)
                if stage == "mobile-pix2pix-1step":
                    row["discriminator"] = _health(folder, stage)
                rows[stage] = row
                partial = {**old, "chains": {**old.get("chains", {}), name: {"stages": rows}}}
                args.out.parent.mkdir(parents=True, exist_ok=True)
                args.out.write_text(json.dumps(nr._jsonable({**partial, "data": data, "sizes": nr.asdict(sizes)}),
                                               indent=2) + "\n")  # a killed run keeps what it scored
            result["chains"][name] = {"folder": str(folder), "chain": _chain_record(folder), "stages": rows}
    first = result["chains"][chains[0][0]]["stages"].get("instruct-pix2pix")
    for entry in result["chains"].values():
        for row in entry["stages"].values():
            if first:
                row["ratio_to_base"] = {"psnr_img": row["images"]["test"]["psnr"] / first["images"]["test"]["psnr"],
                                        "ssim_img": row["images"]["test"]["ssim"] / first["images"]["test"]["ssim"],
                                        "psnr_video": row["videos"]["psnr"] / first["videos"]["psnr"]}
    result.update({"command": "python " + " ".join([sys.argv[0], *(argv if argv is not None else sys.argv[1:])]),
                   "data": data, "sizes": nr.asdict(sizes), "base": f"{chains[0][0]}/instruct-pix2pix",
                   "machine": {"cpu": platform.machine(), "threads": torch.get_num_threads(),
                               "torch": torch.__version__}, "seconds": round(time.time() - started, 1)})
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(nr._jsonable(result), indent=2) + "\n")
    print(f"{'chain/stage':42s} {'PSNR':>6s} {'SSIM':>6s} {'ratio':>6s} {'vid PSNR':>8s} {'s_T':>8s} {'s_I':>8s} "
          f"{'D acc r/f (last 10%)':>20s}")
    for name, entry in result["chains"].items():
        for stage, r in entry["stages"].items():
            c = r.get("controllability") or {}
            health = (r.get("discriminator") or {}).get("last_tenth") or {}
            acc = (f"{health['d_acc_real']:.2f}/{health['d_acc_fake']:.2f}"
                   if health.get("d_acc_real") is not None else "-")
            print(f"{name + '/' + stage:42s} {r['images']['test']['psnr']:6.2f} {r['images']['test']['ssim']:6.3f} "
                  f"{r.get('ratio_to_base', {}).get('psnr_img', float('nan')):6.3f} {r['videos']['psnr']:8.2f} "
                  f"{c.get('text_guidance', {}).get('direction', '-'):>8s} "
                  f"{c.get('image_guidance', {}).get('direction', '-'):>8s} {acc:>20s}")
    print(f"wrote {args.out}")
    return result


if __name__ == "__main__":
    main()
