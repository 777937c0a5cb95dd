"""The nano model family's results page (issue 5): docs/results/nano.md, nano.json and charts under nano/.

From a family folder laid out as `movie nano-train --ship` writes it (autoencoders/{vae,taesd} and one model
folder per denoiser stage) and a held-out procedural dataset, it measures:

1. per stage (presets base, mobile, mmg, movie at nano size on the stage's weights): PSNR/SSIM against the
   ground truth on held-out images and videos, temporal consistency on the videos, the ratio of each to the
   base model beside the paper's Table 1 ratios, TFLOPs per frame (nano at the data's resolution, full size at
   480x480, paper convention) and CPU frames/s at 128x128;
2. controllability (paper Fig. 4): a s_T x s_I grid of the 1-step model on one held-out image, and edit
   strength as a function of s_T and of s_I on held-out images, for the 1-step and the mmg model;
3. before/after on real photographs (scikit-image's sample images) with the 1-step model, measured against the
   closed-form edits where one exists;
4. the page itself, with the training record from the family's chain.json and the commands that regenerate it.

The scoring is movie_core.evaluate (what `movie eval` runs), movie_core.flops (`movie flops`) and
movie_core.bench (`movie bench`), called in-process so each stage is loaded once.

    nice -n 10 python scripts/nano_results.py [--family DIR] [--data DIR] [--out-dir docs/results] [--quick]

Without --data, a held-out dataset is generated into a temporary folder with a seed the family was not
trained on. --quick uses a handful of samples (for development and the test), not numbers to publish.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import platform
import shlex
import sys
import tempfile
import time
from collections.abc import Sequence
from dataclasses import asdict, dataclass, replace
from pathlib import Path
from typing import Any

import numpy as np

from movie_core.colour import change_correlation, channel_shift, chroma, luma, saturation
from movie_core.evaluate import FIXED_IMAGE_SCALE, FIXED_TEXT_SCALE, IMAGE_SCALES

ROOT = Path(__file__).resolve().parent.parent
STAGES = (  # (preset, denoiser stage): the rows of the paper's Table 1, in order
    ("base", "instruct-pix2pix"),
    ("mobile", "mobile-pix2pix"),
    ("mmg", "mobile-pix2pix-mmg"),
    ("movie", "mobile-pix2pix-1step"),
)
# MoViE paper, Table 1 (TGVE benchmark, 480x480, per frame); Fig. 5 gives its CLIP metrics only as a plot.
PAPER_TABLE1 = {
    "base": {"row": "Base Model", "steps": 10, "pickscore": 20.34, "clipframe": 0.943, "tflops": 21.31,
             "gpu_s": 1.37, "phone_s": 7.0},
    "mobile": {"row": "+ Mobile-Pix2Pix", "steps": 10, "pickscore": 19.43, "clipframe": 0.922, "tflops": 16.10,
               "gpu_s": 1.06, "phone_s": 1.9},
    "mmg": {"row": "+ Multi-Guidance Dist.", "steps": 10, "pickscore": 19.60, "clipframe": 0.919, "tflops": 5.50,
            "gpu_s": 0.82, "phone_s": 0.6},
    "movie": {"row": "+ Adversarial Distillation", "steps": 1, "pickscore": 19.40, "clipframe": 0.913, "tflops": 0.76,
              "gpu_s": 0.11, "phone_s": 0.08},
}
# the fixed scales and the s_I grid are movie eval's (movie_core.evaluate); the s_T grid is the page's own: four
# figure columns where eval sweeps five scales
GRID_TEXT_SCALES = (2.0, 4.0, 8.0, 12.0)
GRID_IMAGE_SCALES = IMAGE_SCALES
FLAT_SPAN = 1e-3  # a sweep whose strength moves less than this (a quarter grey level on average) is flat
HELDOUT_SEED = 1  # `movie nano-train` trains on dataset seed 0; seed 1's sample seeds are disjoint from it
PHOTOS = ("astronaut", "coffee", "chelsea", "rocket")
PHOTO_EDITS = ("grayscale", "sepia", "invert", "red_tint", "green_tint", "blue_tint", "brighter", "darker")
TINT_CHANNEL = {"red_tint": 0, "green_tint": 1, "blue_tint": 2}
VISIBLE_EDITS = ("sepia", "invert", "grayscale", "red_tint", "green_tint", "blue_tint", "night")
FULL_SIZE = 480


@dataclass(frozen=True)
class Sizes:
    """How many samples each measurement uses."""

    images: int = 48  # per image split
    videos: int = 24
    frames: int = 16
    data_size: int = 64  # generated held-out data, pixels (square)
    control_samples: int = 48
    photos: int = len(PHOTOS)
    photo_size: int = 128  # short side
    bench_size: int = 128  # CPU frames/s of every stage at this square size
    bench_size_large: int = 256  # and of the default (1-step) model at this one
    bench_frames: int = 4
    bench_repeats: int = 2


QUICK = Sizes(images=2, videos=1, frames=3, data_size=32, control_samples=1, photos=2, photo_size=32,
              bench_size=32, bench_size_large=64, bench_frames=1, bench_repeats=1)


def log(message: str) -> None:
    print(f"[nano-results] {message}", file=sys.stderr, flush=True)


# ---------------------------------------------------------------------------------------------- inputs


def read_family(family: Path) -> dict[str, Any]:
    """The family's stage folders, training record (chain.json) and shipped size; exits on a missing stage."""
    from movie_core.weights import resolve_model

    missing = [stage for _, stage in STAGES if not (family / stage / "movie.json").is_file()]
    if missing:
        raise SystemExit(f"error: {family} is not a nano model family: no {', '.join(missing)} "
                         "(see `movie nano-train --ship`)")
    chain_path = family / "chain.json"
    chain = json.loads(chain_path.read_text()) if chain_path.is_file() else None
    weights = sum(p.stat().st_size for p in family.rglob("*.safetensors"))
    return {
        "path": str(family),
        "models": {stage: str(resolve_model(family / stage)) for _, stage in STAGES},
        "chain": chain,
        "weights_mb": weights / 2**20,
    }


def heldout_data(data: Path | None, sizes: Sizes, tmp: Path) -> dict[str, Any]:
    """The dataset to score on: the one given, or one generated with HELDOUT_SEED into `tmp`."""
    from movie_core.data.writer import write_nano

    if data is None:
        data = tmp / "heldout"
        spec = {"count": 2 * sizes.images, "videos": 2 * sizes.videos, "frames": sizes.frames,
                "size": sizes.data_size, "seed": HELDOUT_SEED, "test_fraction": 0.5}
        log(f"generating held-out data {spec}")
        summary = write_nano(data, **spec)
        return {"path": str(data), "generated": True, "spec": spec, "summary": summary}
    if not (data / "dataset.json").is_file():
        raise SystemExit(f"error: {data} is not a `movie data nano` dataset (no dataset.json)")
    summary = json.loads((data / "dataset.json").read_text())
    if not summary.get("images", {}).get("test") or not summary.get("videos", {}).get("test"):
        raise SystemExit(f"error: {data} needs test images and test videos (see `movie data nano --videos`)")
    return {"path": str(data), "generated": False, "spec": None, "summary": summary}


def image_splits(data: dict[str, Any], training_seed: int) -> dict[str, str]:
    """Split -> what it tests. The train split of a dataset with another seed than training holds unseen scenes too."""
    splits = {"test": "held-out scenes, held-out phrasings"}
    seed = data["summary"].get("seed")
    if seed is not None and seed != training_seed and data["summary"]["images"].get("train"):
        splits["train"] = "held-out scenes, training phrasings"
    return splits


def load_stage(family: Path, preset_name: str, stage: str):
    """The preset at nano size on the stage's weights."""
    from movie_core.composer import compose
    from movie_core.loading import build
    from movie_core.recipe import preset

    return build(compose(preset(preset_name).replace(size="nano")), model=family / stage)


# ------------------------------------------------------------------------------------------ per stage


def evaluate_stage(pipe, data: Path, splits: dict[str, str], sizes: Sizes) -> dict[str, Any]:
    """PSNR/SSIM per image split, and temporal consistency + per-frame PSNR/SSIM on the test videos."""
    from movie_core import evaluate as ev

    predictor = ev.PipelinePredictor(pipe)
    images = {}
    for split in splits:
        r = ev.evaluate_images(predictor, ev.open_image_data(data, split), limit=sizes.images)
        images[split] = {k: r[k] for k in ("count", "psnr", "ssim", "identity", "per_edit")}
    t = ev.temporal_consistency(predictor, ev.open_video_data(data, "test"), limit=sizes.videos)
    videos = {k: t[k] for k in ("count", "frames", "anchor", "psnr", "ssim", "identity", "ratio", "ground_truth_ratio")}
    return {"images": images, "videos": videos}


def cost(preset_name: str, nano_size: int) -> dict[str, Any]:
    """Per-frame TFLOPs: nano at the data's resolution, and full size at 480x480 (paper convention)."""
    from movie_core import flops
    from movie_core.composer import compose
    from movie_core.recipe import preset

    nano = flops.count(compose(preset(preset_name).replace(size="nano")), nano_size, nano_size)
    full = flops.count(compose(preset(preset_name)), FULL_SIZE, FULL_SIZE)
    return {"nano": {"height": nano_size, "width": nano_size, "tflops_paper": nano["tflops_paper"],
                     "tflops_all": nano["tflops_all"]},
            "full": {"height": FULL_SIZE, "width": FULL_SIZE, "tflops_paper": full["tflops_paper"],
                     "tflops_all": full["tflops_all"]},
            "steps": nano["steps"], "unet_passes_per_step": nano["unet_passes_per_step"]}


def speed(pipe, size: int, sizes: Sizes) -> dict[str, Any]:
    """CPU frames/s at size x size, as `movie bench` measures it (median over repeats after a warm-up)."""
    from movie_core.bench import bench_pipeline

    r = bench_pipeline(pipe, height=size, width=size, frames=sizes.bench_frames, batch_size=sizes.bench_frames,
                       repeats=sizes.bench_repeats)
    out = {k: r[k] for k in ("height", "width", "frames", "batch_size", "repeats", "ms_per_frame", "frames_per_s",
                             "threads", "device", "components")}
    out["load_average"] = _load_average()  # other processes on the machine slow the timings down
    return out


def _load_average() -> float | None:
    """The machine's 1-minute load average, where the OS reports one."""
    try:
        return os.getloadavg()[0]
    except (AttributeError, OSError):
        return None


def _ratio(value: float | None, base: float | None) -> float | None:
    return value / base if value is not None and base else None


def ratios_to_base(stages: list[dict[str, Any]]) -> None:
    """Each stage's quality over the base model's, ours and the paper's (Table 1), in place."""
    base = stages[0]
    paper_base = PAPER_TABLE1["base"]
    for s in stages:
        paper = PAPER_TABLE1[s["preset"]]
        ours = {
            "image_psnr": _ratio(s["images"]["test"]["psnr"], base["images"]["test"]["psnr"]),
            "image_ssim": _ratio(s["images"]["test"]["ssim"], base["images"]["test"]["ssim"]),
            "video_psnr": _ratio(s["videos"]["psnr"], base["videos"]["psnr"]),
            "video_ssim": _ratio(s["videos"]["ssim"], base["videos"]["ssim"]),
        }
        paper_ratio = {"pickscore": paper["pickscore"] / paper_base["pickscore"],
                       "clipframe": paper["clipframe"] / paper_base["clipframe"]}
        paper_loss = max(1 - v for v in paper_ratio.values())
        s["ratio_to_base"] = ours
        s["paper_ratio_to_base"] = paper_ratio
        s["paper_largest_loss"] = paper_loss
        # our relative loss (1 - ratio) no larger than the paper's largest at this stage (PickScore or CLIPFrame)
        s["within_paper_loss"] = {k: None if v is None else bool(1 - v <= paper_loss + 1e-12) for k, v in ours.items()}


# ----------------------------------------------------------------------------------- controllability


def _direction(points: list[dict[str, Any]]) -> dict[str, Any]:
    """How a sweep's strength moves with the scale: Spearman, span, last - first, grows/falls/flat/mixed."""
    from movie_core.evaluate import spearman

    strengths = [p["strength"] for p in points]
    steps = np.diff(strengths)
    span = float(max(strengths) - min(strengths))
    flat = span < FLAT_SPAN
    grows, falls = not flat and bool(np.all(steps > 0)), not flat and bool(np.all(steps < 0))
    return {
        "spearman": spearman([p["scale"] for p in points], strengths),
        "span": span,
        "change": float(strengths[-1] - strengths[0]),
        "grows": grows,
        "falls": falls,
        "direction": "flat" if flat else "grows" if grows else "falls" if falls else "mixed",
    }


def controllability_curves(pipe, images, sizes: Sizes) -> dict[str, Any]:
    """Edit strength (mean |edit - source| / 255) vs s_T at s_I = 1.5 and vs s_I at s_T = 7.5, with direction."""
    from movie_core import evaluate as ev

    r = ev.controllability(ev.PipelinePredictor(pipe), images, limit=sizes.control_samples,
                           text_scales=GRID_TEXT_SCALES, image_scales=GRID_IMAGE_SCALES,
                           fixed_image_scale=FIXED_IMAGE_SCALE, fixed_text_scale=FIXED_TEXT_SCALE)
    out: dict[str, Any] = {"count": r["count"], "guidance": r["guidance"]}
    for key in ("text_guidance", "image_guidance"):
        s = r[key]
        out[key] = {"points": s["points"], "gt_distance_spearman": s["gt_distance_spearman"], **_direction(s["points"])}
    out["text_guidance"]["fixed_image_scale"] = FIXED_IMAGE_SCALE
    out["image_guidance"]["fixed_text_scale"] = FIXED_TEXT_SCALE
    return out


def pick_grid_sample(images) -> int:
    """The first sample whose edit is clearly visible (colour edits), else the first."""
    from movie_core.evaluate import edit_type

    for i in range(len(images)):
        if edit_type(images[i]["instruction"]) in VISIBLE_EDITS:
            return i
    return 0


def controllability_grid(pipe, sample: dict[str, Any]) -> dict[str, Any]:
    """The 1-step model's edits of one image over GRID_IMAGE_SCALES (rows) x GRID_TEXT_SCALES (columns)."""
    from movie_core import evaluate as ev

    predictor = ev.PipelinePredictor(pipe)
    source = np.asarray(sample["source"])
    cells = [[predictor.at(s_T=t, s_I=i)([source], [sample["instruction"]])[0] for t in GRID_TEXT_SCALES]
             for i in GRID_IMAGE_SCALES]
    strength = [[float(np.abs(c.astype(np.float64) - source).mean() / 255) for c in row] for row in cells]
    return {"source": source, "target": np.asarray(sample["edited"]), "cells": cells, "strength": strength,
            "instruction": sample["instruction"]}


# ------------------------------------------------------------------------------------------- photos


def load_photos(names: Sequence[str], short_side: int) -> dict[str, np.ndarray]:
    """scikit-image's sample photographs, resized (Lanczos) to `short_side` pixels on the short side."""
    try:
        import skimage.data
    except ImportError:
        raise SystemExit("error: the photographs come from scikit-image: pip install scikit-image") from None
    from PIL import Image

    out = {}
    for name in names:
        image = np.asarray(getattr(skimage.data, name)())[..., :3]
        h, w = image.shape[:2]
        scale = short_side / min(h, w)
        size = (max(1, round(w * scale)), max(1, round(h * scale)))
        out[name] = np.asarray(Image.fromarray(image).resize(size, Image.LANCZOS))
    return out


def photo_measures(name: str, source: np.ndarray, edited: np.ndarray, reference: np.ndarray) -> dict[str, Any]:
    """Closed-form checks of one edited photo; `right` is the edit-specific direction check."""
    from movie_core import evaluate as ev

    row: dict[str, Any] = {
        "psnr": ev.psnr(edited, reference), "identity_psnr": ev.psnr(source, reference),
        "ssim": ev.ssim(edited, reference), "change_correlation": change_correlation(source, edited, reference),
    }
    if name == "grayscale":
        row |= {"saturation": saturation(edited), "source_saturation": saturation(source),
                "reference_saturation": saturation(reference), "chroma": chroma(edited),
                "source_chroma": chroma(source)}
        row["right"] = row["saturation"] < row["source_saturation"]
    elif name in ("brighter", "darker"):
        row |= {"luma_change": luma(edited) - luma(source), "reference_luma_change": luma(reference) - luma(source)}
        row["right"] = row["luma_change"] > 0 if name == "brighter" else row["luma_change"] < 0
    elif name in TINT_CHANNEL:
        c = TINT_CHANNEL[name]
        row |= {"channel_shift": channel_shift(source, edited, c),
                "reference_channel_shift": channel_shift(source, reference, c)}
        row["right"] = row["channel_shift"] > 0
    else:  # sepia, invert: the direction of the per-pixel change
        row["right"] = row["change_correlation"] is not None and row["change_correlation"] > 0
    return row


def photos_section(pipe, sizes: Sizes) -> dict[str, Any]:
    """The 1-step model's edits of real photographs, each measured against the closed-form edit."""
    from movie_core import evaluate as ev
    from movie_core.data.procedural import EDITS, apply_edit

    photos = load_photos(PHOTOS[:sizes.photos], sizes.photo_size)
    predictor = ev.PipelinePredictor(pipe)
    names = list(photos)
    sources = [photos[n] for n in names]
    edited: dict[str, list[np.ndarray]] = {}
    reference: dict[str, list[np.ndarray]] = {}
    per_photo: dict[str, dict[str, Any]] = {n: {} for n in names}
    for edit in PHOTO_EDITS:
        instruction = EDITS[edit].phrasings[0]
        edited[edit] = predictor(sources, [instruction] * len(sources))
        reference[edit] = [apply_edit(edit, s) for s in sources]
        ceiling = predictor.round_trip(reference[edit])  # the closed form through the model's autoencoders
        for n, s, e, ref, c in zip(names, sources, edited[edit], reference[edit], ceiling):
            per_photo[n][edit] = photo_measures(edit, s, e, ref)
            per_photo[n][edit]["autoencoder"] = photo_measures(edit, s, c, ref)
    per_edit = {}
    for edit in PHOTO_EDITS:
        rows = [per_photo[n][edit] for n in names]
        keys = [k for k in rows[0] if k not in ("right", "autoencoder")]
        per_edit[edit] = {k: _mean_or_none([r[k] for r in rows]) for k in keys}
        per_edit[edit]["autoencoder"] = {k: _mean_or_none([r["autoencoder"][k] for r in rows]) for k in keys}
        per_edit[edit]["autoencoder"]["right"] = sum(bool(r["autoencoder"]["right"]) for r in rows)
        per_edit[edit] |= {"instruction": EDITS[edit].phrasings[0], "right": sum(bool(r["right"]) for r in rows),
                           "photos": len(rows)}
    return {"photos": {n: list(photos[n].shape[:2]) for n in names}, "short_side": sizes.photo_size,
            "per_edit": per_edit, "per_photo": per_photo,
            "_images": {"names": names, "sources": sources, "edited": edited, "reference": reference}}


def _mean_or_none(values: list[float | None]) -> float | None:
    values = [v for v in values if v is not None]
    return float(np.mean(values)) if values else None


# ------------------------------------------------------------------------------------------- charts


def _pyplot():
    from movie_core.ablation import _pyplot as pyplot_or_none

    plt = pyplot_or_none()
    if plt is None:
        raise SystemExit("error: the charts need matplotlib: pip install matplotlib")
    return plt


COLOURS = {"base": "#8c8c8c", "mobile": "#5b8def", "mmg": "#3cb371", "movie": "#e4572e"}


def chart_quality(result: dict[str, Any], path: Path) -> None:
    """PSNR per stage on held-out images (per split) and videos, with the identity reference."""
    plt = _pyplot()
    stages = result["stages"]
    series = [(f"images: {label}", lambda s, split=split: s["images"][split]["psnr"],
               stages[0]["images"][split]["identity"]["psnr"]) for split, label in result["data"]["splits"].items()]
    series.append(("videos (per frame)", lambda s: s["videos"]["psnr"], stages[0]["videos"]["identity"]["psnr"]))
    fig, ax = plt.subplots(figsize=(7, 3.8), dpi=120)
    width = 0.8 / len(series)
    x = np.arange(len(stages))
    for k, (label, get, identity) in enumerate(series):
        values = [get(s) or 0.0 for s in stages]
        bars = ax.bar(x + (k - (len(series) - 1) / 2) * width, values, width, label=label, color=f"C{k}")
        for bar, v in zip(bars, values):
            ax.annotate(f"{v:.1f}", (bar.get_x() + bar.get_width() / 2, v), ha="center", va="bottom", fontsize=7)
        if identity is not None:
            ax.axhline(identity, color=f"C{k}", ls="--", lw=0.8)
    ax.set_xticks(x, [f"{s['preset']}\n{s['stage']}" for s in stages], fontsize=8)
    ax.set_ylabel("PSNR vs ground truth (dB)")
    ax.set_title("Held-out quality per stage (dashed: source unchanged)")
    ax.legend(fontsize=7, loc="lower left")
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)


def chart_ratios(result: dict[str, Any], path: Path) -> None:
    """Each stage's quality over the base model's: ours (PSNR/SSIM) beside the paper's (PickScore/CLIPFrame)."""
    plt = _pyplot()
    stages = result["stages"]
    series = [("PSNR images", lambda s: s["ratio_to_base"]["image_psnr"]),
              ("SSIM images", lambda s: s["ratio_to_base"]["image_ssim"]),
              ("PSNR videos", lambda s: s["ratio_to_base"]["video_psnr"]),
              ("paper PickScore", lambda s: s["paper_ratio_to_base"]["pickscore"]),
              ("paper CLIPFrame", lambda s: s["paper_ratio_to_base"]["clipframe"])]
    fig, ax = plt.subplots(figsize=(8, 3.6), dpi=120)
    width = 0.8 / len(series)
    x = np.arange(len(stages))
    for k, (label, get) in enumerate(series):
        values = [get(s) or 0.0 for s in stages]
        ax.bar(x + (k - (len(series) - 1) / 2) * width, values, width, label=label, color=f"C{k}",
               hatch="//" if label.startswith("paper") else None, alpha=0.9)
    ax.axhline(1.0, color="black", lw=0.8)
    ax.set_xticks(x, [s["preset"] for s in stages])
    lo = min([get(s) or 1.0 for s in stages for _, get in series] + [0.9])
    ax.set_ylim(max(0.0, lo - 0.05), max(1.05, max(get(s) or 1.0 for s in stages for _, get in series) + 0.03))
    ax.set_ylabel("ratio to the base model")
    ax.set_title("Relative quality per stage: ours vs the paper's Table 1")
    ax.legend(fontsize=7, loc="upper left", bbox_to_anchor=(1.01, 1.0))
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)


def chart_cost(result: dict[str, Any], path: Path) -> None:
    """Cost vs quality: ours (full-size TFLOPs at 480x480 vs held-out PSNR; CPU frames/s) and the paper's."""
    plt = _pyplot()
    from matplotlib import ticker

    stages = result["stages"]
    fig, axes = plt.subplots(1, 3, figsize=(11, 3.6), dpi=120)
    for s in stages:
        c = COLOURS[s["preset"]]
        psnr = s["images"]["test"]["psnr"]
        axes[0].scatter(s["cost"]["full"]["tflops_paper"], psnr, color=c, s=40)
        axes[0].annotate(s["preset"], (s["cost"]["full"]["tflops_paper"], psnr), fontsize=8, xytext=(4, 4),
                         textcoords="offset points")
        axes[1].scatter(s["speed"]["frames_per_s"], psnr, color=c, s=40)
        axes[1].annotate(s["preset"], (s["speed"]["frames_per_s"], psnr), fontsize=8, xytext=(4, 4),
                         textcoords="offset points")
        p = PAPER_TABLE1[s["preset"]]
        axes[2].scatter(p["tflops"], p["pickscore"], color=c, s=40)
        axes[2].annotate(s["preset"], (p["tflops"], p["pickscore"]), fontsize=8, xytext=(4, 4),
                         textcoords="offset points")
    axes[0].set(xscale="log", xlabel="TFLOPs/frame, full size 480x480 (log)", ylabel="nano PSNR, held-out images (dB)",
                title="ours: cost (full size) vs quality")
    axes[1].set(xscale="log", xlabel="nano CPU frames/s at {0}x{0} (log)".format(result["sizes"]["bench_size"]),
                ylabel="nano PSNR (dB)", title="ours: CPU speed vs quality")
    axes[2].set(xscale="log", xlabel="TFLOPs/frame (paper, 480x480, log)", ylabel="PickScore (paper)",
                title="paper Table 1")
    for ax in axes:
        ax.xaxis.set_major_formatter(ticker.FormatStrFormatter("%g"))
        ax.xaxis.set_minor_formatter(ticker.NullFormatter())
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)


def chart_controllability(result: dict[str, Any], path: Path) -> None:
    """Edit strength vs s_T and vs s_I for each measured model."""
    plt = _pyplot()
    fig, axes = plt.subplots(1, 2, figsize=(9, 3.5), dpi=120)
    for stage, curves in result["controllability"]["curves"].items():
        preset_name = {st: p for p, st in STAGES}[stage]
        for ax, key in zip(axes, ("text_guidance", "image_guidance")):
            pts = curves[key]["points"]
            ax.plot([p["scale"] for p in pts], [p["strength"] for p in pts], "o-", color=COLOURS[preset_name],
                    label=f"{stage} ({curves[key]['direction']})")
    axes[0].set(xlabel="text guidance s_T", ylabel="edit strength  mean |edit - source|",
                title=f"vs s_T (s_I = {FIXED_IMAGE_SCALE:g})")
    axes[1].set(xlabel="image guidance s_I", title=f"vs s_I (s_T = {FIXED_TEXT_SCALE:g})")
    for ax in axes:
        ax.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)


def image_grid(rows: list[list[np.ndarray]], path: Path, *, row_labels: list[str], col_labels: list[str],
               title: str, cell_inches: float = 1.3) -> None:
    """A labelled grid of images (nearest-neighbour, so small frames stay sharp)."""
    plt = _pyplot()
    n_rows, n_cols = len(rows), len(rows[0])
    aspect = rows[0][0].shape[1] / rows[0][0].shape[0]
    fig, axes = plt.subplots(n_rows, n_cols, figsize=(cell_inches * aspect * n_cols + 0.6, cell_inches * n_rows + 0.7),
                             dpi=120, squeeze=False)
    for r, row in enumerate(rows):
        for c, image in enumerate(row):
            ax = axes[r][c]
            ax.imshow(image, interpolation="nearest")
            ax.set_xticks([])
            ax.set_yticks([])
            if r == 0:
                ax.set_title(col_labels[c], fontsize=7)
            if c == 0:
                ax.set_ylabel(row_labels[r], fontsize=7)
    fig.suptitle(title, fontsize=9)
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)


# ------------------------------------------------------------------------------------------- the page


def _f(value: float | None, digits: int = 2) -> str:
    return "–" if value is None else f"{value:.{digits}f}"


def _yes(value: bool | None) -> str:
    return "–" if value is None else ("yes" if value else "no")


def _model_arg(result: dict[str, Any], stage: str) -> str:
    return f"nano:{stage}" if result["family"]["builtin"] else str(Path(result["family"]["path"]) / stage)


def commands(result: dict[str, Any]) -> list[str]:
    """The command that regenerates the page, and `movie` commands that cross-check its numbers."""
    data = result["data"]
    lines = [result["command"], ""]
    env = f"OMP_NUM_THREADS={result['threads_option']} " if result["threads_option"] else ""
    if data["generated"]:
        spec = data["spec"]
        data_path = "/tmp/nano-heldout"
        lines.append(f"movie data nano --out {data_path} --count {spec['count']} --videos {spec['videos']} "
                     f"--frames {spec['frames']} --size {spec['size']} --seed {spec['seed']} "
                     f"--test-fraction {spec['test_fraction']}")
    else:
        data_path = data["path"]
    sizes = result["sizes"]
    for s in result["stages"]:
        model = _model_arg(result, s["stage"])
        lines.append(f"{env}movie eval {model} --preset {s['preset']} --size nano --data {data_path} "
                     f"--limit {sizes['images']} --videos --json")
    for s in result["stages"]:
        lines.append(f"movie flops --preset {s['preset']} --size nano --height {data['size']} --width {data['size']} "
                     f"--json; movie flops --preset {s['preset']} --json")
    for s in result["stages"]:
        model = _model_arg(result, s["stage"])
        lines.append(f"{env}movie bench --preset {s['preset']} --model {model} --size nano "
                     f"--height {sizes['bench_size']} --width {sizes['bench_size']} "
                     f"--frames {sizes['bench_frames']} --repeats {sizes['bench_repeats']} --json")
    return lines


def _load_range(result: dict[str, Any]) -> str:
    loads = [s["speed"]["load_average"] for s in result["stages"]] + [result["speed_large"]["load_average"]]
    loads = [v for v in loads if v is not None]
    return f"{min(loads):.1f}-{max(loads):.1f}" if loads else "unknown"


def _intro(result: dict[str, Any]) -> list[str]:
    fam, data = result["family"], result["data"]
    chain = fam["chain"]
    out = ["# The nano model family: results", ""]
    if result["quick"]:
        out += ["> **Quick run** (`--quick`): a handful of samples per measurement, for development only.", ""]
    out.append(f"Generated by `scripts/nano_results.py` on {result['machine']['date']} from the family in "
               f"`{fam['display']}` ({fam['weights_mb']:.1f} MB of safetensors: the four stages, the vpred conversion "
               "between the last two, and the autoencoders and text tower they share). "
               "Every number below is measured by this run; the paper's figures are quoted beside them.")
    out.append("")
    if chain:
        b = chain.get("budget", {})
        seconds = chain.get("seconds", {})
        device = chain.get("device", "?")
        threads = chain.get("threads", "?")
        where = f"{device} ({threads} thread{'' if threads == 1 else 's'})" if device == "cpu" else device
        minutes = chain.get("total_seconds", sum(seconds.values())) / 60
        # A noted family was put together from several runs: its recorded times need not be the whole chain's.
        took = (f" (stage times recorded in its chain.json: {minutes:.1f} min)" if chain.get("note")
                else f" in {minutes:.1f} min")
        out.append(
            f"**What was trained.** `movie nano-train` trained the whole family from scratch on {where}{took}: "
            f"nano autoencoders (SD VAE and TAESD "
            f"in one latent space), a nano CLIP text tower and BPE tokenizer, then the four denoiser stages, each "
            f"distilled from the previous one. Data: {b.get('count', '?')} procedural image triplets and "
            f"{b.get('videos', '?')} videos (dataset seed {b.get('seed', '?')}, 12 global edits with closed-form "
            f"ground truth) at {b.get('resolution', '?')}x{b.get('resolution', '?')}, "
            f"batch {b.get('batch_size', '?')}.")
        if chain.get("note"):  # a family put together from runs of the stages, not one uninterrupted run
            out[-1] += f" How this family was put together: {chain['note'].rstrip('.')}."
        for part, dev in (chain.get("trained_on") or {}).items():
            if dev != device:
                out[-1] += (f" Exception: the {part} stage ran on {dev}"
                            f"{' (batch 64)' if part == 'autoencoders' else ''}; its time below is that run's.")
        out += ["", "| stage | what | steps | seconds |", "| --- | --- | ---: | ---: |"]
        what = {
            "data": ("`movie data nano`", "count"),
            "autoencoders": ("SD VAE + TAESD distilled to its latents", "vae_steps"),
            "taesd-decoder": ("TAESD decoder finetuned on off-manifold latents", "taesd_decoder_steps"),
            "taesd-decoder-colour": ("TAESD decoder taught the TAESD encoder's colours, grey included",
                                     "taesd_decoder_steps"),
            "taesd-decoder-grey": ("the same at 128 px, grey-heavy (grey stays grey off the manifold too)",
                                   "taesd_grey_steps"),
            "taesd-lite": ("TAESD without its full-resolution blocks, distilled from it (the default's autoencoder)",
                           "taesd_lite_steps"),
            "text": ("tokenizer + text tower", "text_steps"), "init": ("random nano InstructPix2Pix UNet", None),
            "instruct-pix2pix": ("pix2pix-finetune", "ip2p_steps"), "taesd-swap": ("TAESD in, weights kept", None),
            "mobile-pix2pix": ("top attention dropped, finetuned", "mobile_steps"),
            "mobile-pix2pix-mmg": ("multimodal guidance distillation (Alg. 1)", "mmg_steps"),
            "vpred": ("v-prediction conversion", "vpred_steps"),
            "mobile-pix2pix-1step": ("adversarial distillation (Alg. 2)", "adversarial_steps"),
        }
        if b.get("ip2p_uniform_steps"):  # the base in two runs
            what["instruct-pix2pix-uniform"] = ("pix2pix-finetune, plain loss (the base's first run)",
                                                "ip2p_uniform_steps")
            what["instruct-pix2pix"] = (f"pix2pix-finetune from it, {b.get('pix2pix_weighting')} weighting over t",
                                        "ip2p_steps")
        if b.get("mobile_weighting", "same") != "same":
            desc, key = what["mobile-pix2pix"]
            what["mobile-pix2pix"] = (f"{desc}, {b['mobile_weighting']} weighting over t", key)
        if b.get("vpred_weighting"):
            what["vpred"] = (f"v-prediction conversion ({b['vpred_weighting']} weighting over t)", "vpred_steps")
        if b.get("adversarial_data_weight"):
            px = ", ".join(f"{r} px" for r in (b.get("resolution"), b.get("adversarial_extra_resolution")) if r)
            what["mobile-pix2pix-1step"] = (
                (f"adversarial distillation (Alg. 2), real samples anchored to the ground truth "
                 f"(data_weight {b['adversarial_data_weight']:g}; {px})"), "adversarial_steps")
        source = b.get("adversarial_data_source", "same")
        extra = [text for text, on in ((f"{source} data", source != "same"),
                                       ("trained at t = 999 only", b.get("adversarial_timesteps") == 1),
                                       ("no GAN term in the generator's loss", b.get("adversarial_gan_weight") == 0),
                                       ("guidance scales at the anchor only",
                                        b.get("adversarial_guidance") == "anchor"))
                 if on]
        if extra:
            desc, key = what["mobile-pix2pix-1step"]
            what["mobile-pix2pix-1step"] = (f"{desc}; {', '.join(extra)}", key)
        what["adversarial-data"] = (f"`movie data nano --source {source}` (the 1-step stage's data)", "count")
        for name, secs in seconds.items():
            desc, key = what.get(name, ("", None))
            steps = b.get(key, "") if key else ""
            if name == "autoencoders" and key:
                steps = f"{b.get('vae_steps', '?')} + {b.get('taesd_steps', '?')}"
            out.append(f"| {name} | {desc} | {steps} | {secs:.0f} |")
        out.append(f"| **total** | | | **{chain.get('total_seconds', sum(seconds.values())):.0f}** |")
        metrics = chain.get("metrics", {})
        objectives = []
        if "mobile-pix2pix-mmg" in metrics:
            m = metrics["mobile-pix2pix-mmg"]
            objectives.append(f"mmg: distance to the teacher's 3-pass guidance over the s_T x s_I grid "
                              f"{_f(m.get('grid_distance_start'), 4)} -> {_f(m.get('grid_distance'), 4)}")
        if "vpred" in metrics:
            m = metrics["vpred"]
            objectives.append(f"vpred: relative v error {_f(m.get('v_rel_error_start'), 3)} -> "
                              f"{_f(m.get('v_rel_error'), 3)}"
                              f" over all t, {_f(m.get('v_rel_error_low_t_start'), 3)} -> "
                              f"{_f(m.get('v_rel_error_low_t'), 3)} for t < 600")
        if "mobile-pix2pix-1step" in metrics:
            m = metrics["mobile-pix2pix-1step"]
            objectives.append(f"1-step: MSE to the multi-step teacher {_f(m.get('student_mse'), 4)} vs the teacher "
                              f"itself at 1 step {_f(m.get('teacher_at_1_step_mse'), 4)}")
        if objectives:
            out += ["", "Each distiller's own held-out objective at its start and end (from chain.json): "
                    + "; ".join(objectives) + "."]
    else:
        out.append("**What was trained.** The family folder has no chain.json, so its training record is unknown.")
    out.append("")
    if data["generated"]:
        spec = data["spec"]
        held = (f"**Held-out data.** Generated for this page with `write_nano` (dataset seed {spec['seed']}, whose "
                f"sample seeds are disjoint from training's seed {result['training_seed']}"
                f"{'' if result['training_seed_known'] else ', assumed: no chain.json'}): {spec['count'] // 2} "
                f"images and {spec['videos'] // 2} video(s) of {spec['frames']} frames per split at "
                f"{spec['size']}x{spec['size']}.")
    else:
        held = f"**Held-out data.** `{data['path']}` (dataset seed {data['summary'].get('seed')})."
    held += (" Splits scored: " + "; ".join(f"`{k}` = {v}" for k, v in data["splits"].items())
             + f". At most {result['sizes']['images']} images per split and {result['sizes']['videos']} test video(s).")
    return out + [held, ""]


def _stage_tables(result: dict[str, Any]) -> list[str]:
    stages = result["stages"]
    splits = result["data"]["splits"]
    out = ["## 1. Quality and cost per stage", "",
           ("Each stage runs its paper preset at nano size on the stage's weights: base = InstructPix2Pix with the "
           "SD VAE, 10 steps x 3 UNet passes; mobile = Mobile-Pix2Pix with TAESD; mmg = guidance embedded, one pass "
           "per step; movie = 1 step. PSNR (dB) and SSIM are against the exact ground truth; `identity` is the source "
           "left unchanged (what doing nothing scores)."), ""]
    head = "| stage | preset |" + "".join(f" PSNR {k} | SSIM {k} |" for k in splits) + \
        " PSNR videos | SSIM videos | frame change (edit/source) |"
    out += [head, "|" + " --- |" * (head.count("|") - 1)]
    for s in stages:
        row = f"| {s['stage']} | {s['preset']} |"
        row += "".join(f" {_f(s['images'][k]['psnr'])} | {_f(s['images'][k]['ssim'], 3)} |" for k in splits)
        v = s["videos"]
        row += f" {_f(v['psnr'])} | {_f(v['ssim'], 3)} | {_f(v['ratio'], 3)} |"
        out.append(row)
    b = stages[0]
    row = "| identity | – |" + "".join(
        f" {_f(b['images'][k]['identity']['psnr'])} | {_f(b['images'][k]['identity']['ssim'], 3)} |" for k in splits)
    row += f" {_f(b['videos']['identity']['psnr'])} | {_f(b['videos']['identity']['ssim'], 3)} | " \
           f"{_f(b['videos']['ground_truth_ratio'], 3)} (ground truth) |"
    out += [row, "",
            ("Frame change = mean |frame t+1 - frame t| of the edit over the source's, on the test videos with the "
            "recipe's anchor cross-frame attention (1 = as steady as the source; the ground truth's own value is in "
            "the identity row)."), "", "![PSNR per stage](nano/psnr_per_stage.png)", "",
            "### Ratio to the base model, beside the paper", "",
            ("Relative loss = 1 - ratio. The paper gives per-stage quality in Table 1 (PickScore, CLIPFrame on TGVE); "
            "Fig. 5 (directional CLIP, CLIP-image) is a plot without numbers in the text, so it is not quoted. "
            "`within paper` = our loss at that stage is no larger than the paper's largest "
            "(of PickScore and CLIPFrame)."),
            "",
            "| stage | PSNR img | SSIM img | PSNR video | SSIM video | paper PickScore | paper CLIPFrame "
            "| within paper (img PSNR/SSIM, video PSNR/SSIM) |",
            "| --- | ---: | ---: | ---: | ---: | ---: | ---: | --- |"]
    for s in stages:
        r, p, w = s["ratio_to_base"], s["paper_ratio_to_base"], s["within_paper_loss"]
        out.append(f"| {s['stage']} | {_f(r['image_psnr'], 3)} | {_f(r['image_ssim'], 3)} | {_f(r['video_psnr'], 3)} | "
                   f"{_f(r['video_ssim'], 3)} | {p['pickscore']:.3f} | {p['clipframe']:.3f} | "
                   f"{' / '.join(_yes(w[k]) for k in ('image_psnr', 'image_ssim', 'video_psnr', 'video_ssim'))} |")
    out += ["", "![Ratio to base](nano/ratio_to_base.png)", "",
            "### Cost", "",
            (f"TFLOPs per frame in the paper's convention (convolutions and linear layers, 2 FLOPs per multiply-add, "
            f"text encoder once per video): nano at {result['data']['size']}x{result['data']['size']} "
            "(what was scored) "
            f"and the full-size architecture at {FULL_SIZE}x{FULL_SIZE} (the paper's Table 1 setting). CPU frames/s: "
            f"`movie bench`'s loop at {result['sizes']['bench_size']}x{result['sizes']['bench_size']}, "
            f"{result['sizes']['bench_frames']} frames per batch, "
            f"median of {result['sizes']['bench_repeats']} repeat(s) after a warm-up, "
            f"{result['machine']['threads']} threads ({result['machine']['cpu']}, {result['machine']['cores']} cores; "
            f"1-minute load average during the benchmarks {_load_range(result)}: anything above 0 is other work "
            "competing for the cores)."), "",
            (f"| stage | steps x passes | nano TFLOPs/frame | full TFLOPs/frame @{FULL_SIZE} | paper TFLOPs | "
            f"CPU frames/s @{result['sizes']['bench_size']} | ms/frame | paper GPU s | paper phone s |"),
            "| --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: |"]
    for s in stages:
        c, sp, p = s["cost"], s["speed"], PAPER_TABLE1[s["preset"]]
        out.append(f"| {s['stage']} | {c['steps']} x {c['unet_passes_per_step']} | {c['nano']['tflops_paper']:.5f} | "
                   f"{c['full']['tflops_paper']:.2f} | {p['tflops']:.2f} | {sp['frames_per_s']:.2f} | "
                   f"{sp['ms_per_frame']:.1f} | {p['gpu_s']} | {p['phone_s']} |")
    large = result.get("speed_large")
    if large:
        out += ["", (f"The 1-step stage with TAESD (the `movie` preset) at {large['height']}x{large['width']}: "
                f"{large['frames_per_s']:.2f} frames/s ({large['ms_per_frame']:.1f} ms/frame); the default model "
                "runs it with taesd-lite: section 6.")]
    out += ["", "![Cost vs quality](nano/cost_vs_quality.png)", "", "### Per edit (test split, PSNR dB)", ""]
    edits = sorted({e for s in stages for e in s["images"]["test"]["per_edit"]})
    out += ["| edit | n |" + "".join(f" {s['preset']} |" for s in stages) + " identity |",
            "| --- | ---: |" + " ---: |" * (len(stages) + 1)]
    for e in edits:
        rows = [s["images"]["test"]["per_edit"].get(e) for s in stages]
        first = next(r for r in rows if r)
        out.append(f"| {e} | {first['count']} |" + "".join(f" {_f(r['psnr'] if r else None)} |" for r in rows)
                   + f" {_f(first['identity_psnr'])} |")
    return out + [""]


def _controllability_section(result: dict[str, Any]) -> list[str]:
    ctl = result["controllability"]
    g = ctl["grid"]
    out = ["## 2. Controllability (paper Fig. 4)", "",
           (f"The 1-step model on one held-out image (`{g['split']}` split, sample {g['index']}, instruction "
           f"\"{g['instruction']}\") at s_T in {list(GRID_TEXT_SCALES)} (columns) x s_I in {list(GRID_IMAGE_SCALES)} "
           "(rows), beside the source and the exact ground truth; the paper's Fig. 4 shows s_T in [4, 8, 12] x s_I in "
            "[1.25, 1.75]."), "",
           "![Controllability grid](nano/controllability_grid.png)", "",
           (f"Edit strength = mean |edit - source| / 255 over {ctl['count']} held-out images (`{ctl['split']}` split), "
           f"as s_T varies at s_I = {FIXED_IMAGE_SCALE:g} and as s_I varies at s_T = {FIXED_TEXT_SCALE:g}. "
           "In InstructPix2Pix's guidance s_I pulls the output towards the source, so strength is expected to *fall* "
           "with s_I; the issue asks for a monotonic response to both, so both directions are reported as measured. "
            f"A sweep whose strength moves less than {FLAT_SPAN:g} over its range counts as flat."),
           "", "| model | scale | points (scale: strength) | last - first | Spearman | direction "
           "| strictly monotonic |",
           "| --- | --- | --- | ---: | ---: | --- | --- |"]
    for stage, curves in ctl["curves"].items():
        for key, label in (("text_guidance", "s_T"), ("image_guidance", "s_I")):
            c = curves[key]
            pts = ", ".join(f"{p['scale']:g}: {p['strength']:.4f}" for p in c["points"])
            rho = "–" if c["spearman"] is None else f"{c['spearman']:+.2f}"
            out.append(f"| {stage} | {label} | {pts} | {c['change']:+.2g} | {rho} | {c['direction']} | "
                       f"{_yes(c['grows'] or c['falls'])} |")
    return out + ["", "![Controllability curves](nano/controllability.png)", ""]


def _photos_section(result: dict[str, Any]) -> list[str]:
    ph = result["photos"]
    out = ["## 3. Real photographs (not procedural)", "",
           (f"scikit-image's sample photographs ({', '.join(ph['photos'])}) resized to {ph['short_side']} px on the "
           "short side, edited by the default 1-step model with one training phrasing per edit. The second grid is "
           "the closed-form edit of each photo (what a perfect model would output)."), "",
           "![Photos, model](nano/photos.png)", "", "![Photos, closed form](nano/photos_closed_form.png)", "",
           ("Measurements (mean over the photos): PSNR/SSIM of the model's edit against the closed form; identity PSNR "
           "= the source against the closed form (doing nothing); change correlation = Pearson correlation of the "
           "model's per-pixel change with the closed form's (1 = same direction everywhere); then the edit's own "
           "check: mean HSV saturation and chroma (max - min) for grayscale (0 is right), "
           "mean BT.601 luma change for brighter/darker, mean "
           "shift of the tinted channel over the other two for tints (closed-form values in brackets). `right` counts "
           "photos where that check has the right sign (grayscale: less saturated than the source; sepia, invert: "
           "positive change correlation)."), "",
           "| edit | instruction | PSNR | identity PSNR | SSIM | change corr. | check | right |",
           "| --- | --- | ---: | ---: | ---: | ---: | --- | ---: |"]
    for edit, r in ph["per_edit"].items():
        out.append(f"| {edit} | {r['instruction']} | {_f(r['psnr'])} | {_f(r['identity_psnr'])} | {_f(r['ssim'], 3)} | "
                   f"{_f(r['change_correlation'], 3)} | {_photo_check(edit, r)} | {r['right']}/{r['photos']} |")
    if all("autoencoder" in r for r in ph["per_edit"].values()):
        out += ["", ("The ceiling: the closed-form edit passed through the 1-step model's own autoencoders (encoder, "
                "then decoder, no denoiser), measured the same way. No denoiser can score better than this on the "
                "edit's check; where the ceiling is wrong the autoencoders, not the denoiser, lose the edit."), "",
                "| edit | PSNR | change corr. | check | right |", "| --- | ---: | ---: | --- | ---: |"]
        for edit, r in ph["per_edit"].items():
            a = r["autoencoder"]
            out.append(f"| {edit} | {_f(a['psnr'])} | {_f(a['change_correlation'], 3)} | {_photo_check(edit, a)} | "
                       f"{a['right']}/{r['photos']} |")
    return out + [""]


def _photo_check(edit: str, r: dict[str, Any]) -> str:
    """The edit's own closed-form check, closed-form value in brackets."""
    if edit == "grayscale":
        text = (f"saturation {_f(r['saturation'], 3)} (source {_f(r['source_saturation'], 3)}, closed form "
                f"{_f(r['reference_saturation'], 3)})")
        if r.get("chroma") is not None:
            text += f"; chroma {_f(r['chroma'], 3)} (source {_f(r['source_chroma'], 3)}, closed form 0)"
        return text
    if edit in ("brighter", "darker"):
        return f"luma change {r['luma_change']:+.3f} ({r['reference_luma_change']:+.3f})"
    if edit in TINT_CHANNEL:
        return f"channel shift {r['channel_shift']:+.3f} ({r['reference_channel_shift']:+.3f})"
    return "–"


def render_markdown(result: dict[str, Any]) -> str:
    """The results page."""
    out = _intro(result) + _stage_tables(result) + _controllability_section(result) + _photos_section(result)
    out += ["## 4. Regenerate", "",
            (f"This page, its JSON (`nano.json`) and the images under `nano/` "
            f"(run time {result['seconds'] / 60:.1f} min "
            f"on this machine):"), "", "```sh", commands(result)[0], "```", "",
            ("Cross-checks with the `movie` commands the script calls in-process (held-out data first when it was "
            "generated; `movie eval --limit` caps images and videos alike):"),
            "", "```sh", *commands(result)[2:], "```",
            ""]
    return "\n".join(out)


# ----------------------------------------------------------------------------------------------- main


def _jsonable(value: Any) -> Any:
    """Plain JSON data: numpy scalars unwrapped, non-finite floats as None, private keys dropped."""
    if isinstance(value, dict):
        return {str(k): _jsonable(v) for k, v in value.items() if not str(k).startswith("_")}
    if isinstance(value, (list, tuple)):
        return [_jsonable(v) for v in value]
    if isinstance(value, np.generic):
        value = value.item()
    if isinstance(value, float) and not math.isfinite(value):
        return None
    return value


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    from movie_core.weights import builtin_root

    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--family", type=Path, default=builtin_root(),
                   help="Family folder (default: the built-in plugins/nano).")
    p.add_argument("--data", type=Path, help="Held-out `movie data nano` dataset (default: generate one, seed 1).")
    p.add_argument("--out-dir", type=Path, default=ROOT / "docs" / "results",
                   help="Where nano.md, nano.json and nano/ go (default: docs/results).")
    p.add_argument("--quick", action="store_true", help="A handful of samples per measurement (development, tests).")
    p.add_argument("--images", type=int, help="Images per split (default 48; quick 4).")
    p.add_argument("--videos", type=int, help="Test videos (default 24; quick 1).")
    p.add_argument("--control-samples", type=int, help="Images for the controllability curves (default 48; quick 1).")
    p.add_argument("--threads", type=int, help="Torch CPU threads (default: torch's, one per core). On a busy machine "
                   "1 thread can be many times faster; frames/s are then per thread.")
    return p.parse_args(argv)


def main(argv: Sequence[str] | None = None) -> dict[str, Any]:
    """Measure everything, write nano.md, nano.json and the images; returns the JSON data."""
    import torch

    args = parse_args(argv)
    threads = torch.get_num_threads()
    if args.threads is not None:
        if args.threads < 1:
            raise SystemExit("error: --threads must be >= 1")
        torch.set_num_threads(args.threads)
    try:
        return _run(args, argv)
    finally:
        torch.set_num_threads(threads)


def _run(args: argparse.Namespace, argv: Sequence[str] | None) -> dict[str, Any]:
    import torch

    started = time.perf_counter()
    sizes = QUICK if args.quick else Sizes()
    overrides = {k: getattr(args, k) for k in ("images", "videos", "control_samples") if getattr(args, k) is not None}
    if any(v < 1 for v in overrides.values()):
        raise SystemExit("error: --images, --videos and --control-samples must be >= 1")
    sizes = replace(sizes, **overrides)
    _quiet_libraries()
    family_path = args.family.resolve()
    if not family_path.is_dir():
        raise SystemExit(f"error: no nano model family at {family_path} (train one with `movie nano-train --ship DIR`, "
                         "or pass --family DIR)")
    from movie_core.weights import builtin_root

    family = read_family(family_path)
    family["builtin"] = family_path == builtin_root().resolve()
    try:
        family["display"] = str(family_path.relative_to(ROOT))
    except ValueError:
        family["display"] = str(family_path)
    chain = family["chain"] or {}
    training_seed = (chain.get("budget") or {}).get("seed")
    seed_known = training_seed is not None
    if not seed_known:  # no training record: assume `movie nano-train`'s own default
        from movie_plugins.nano.chain import ChainBudget

        training_seed = ChainBudget().seed
    images_dir = args.out_dir / "nano"
    images_dir.mkdir(parents=True, exist_ok=True)
    argv_list = list(sys.argv[1:] if argv is None else argv)
    result: dict[str, Any] = {
        "generated_by": "scripts/nano_results.py",
        "command": "nice -n 10 python scripts/nano_results.py" + "".join(f" {shlex.quote(a)}" for a in argv_list),
        "quick": args.quick,
        "threads_option": args.threads,
        "sizes": asdict(sizes),
        "machine": {"cpu": platform.processor() or platform.machine(), "threads": torch.get_num_threads(),
                    "cores": os.cpu_count(),
                    "torch": torch.__version__, "python": platform.python_version(),
                    "date": time.strftime("%Y-%m-%d")},
        "family": family,
        "training_seed": training_seed,
        "training_seed_known": seed_known,
        "paper": {"table1": PAPER_TABLE1,
                  "fig4": {"text_guidance": [4.0, 8.0, 12.0], "image_guidance": [1.25, 1.75]},
                  "fig5": "directional CLIP and CLIP-image per stage, shown only as a plot"},
    }
    with tempfile.TemporaryDirectory(prefix="nano-results-") as tmp:
        data = heldout_data(args.data, sizes, Path(tmp))
        data["splits"] = image_splits(data, training_seed)
        data["size"] = int(data["summary"]["size"][0])
        result["data"] = data
        data_path = Path(data["path"])
        stages, pipes = [], {}
        for preset_name, stage in STAGES:
            t0 = time.perf_counter()
            pipe = load_stage(family_path, preset_name, stage)
            row: dict[str, Any] = {"preset": preset_name, "stage": stage, "model": family["models"][stage],
                                   "unet_parameters": sum(p.numel() for p in pipe.denoiser.unet.parameters()),
                                   "recipe": pipe.recipe.components() | pipe.recipe.options()}
            row |= evaluate_stage(pipe, data_path, data["splits"], sizes)
            t1 = time.perf_counter()
            row["cost"] = cost(preset_name, data["size"])
            t2 = time.perf_counter()
            row["speed"] = speed(pipe, sizes.bench_size, sizes)
            row["seconds"] = time.perf_counter() - t0
            stages.append(row)
            log(f"{stage}: images {_f(row['images']['test']['psnr'])} dB, videos {_f(row['videos']['psnr'])} dB, "
                f"{row['speed']['frames_per_s']:.2f} frames/s ({row['seconds']:.0f} s: scoring {t1 - t0:.0f}, "
                f"FLOPs {t2 - t1:.0f}, bench {row['seconds'] - (t2 - t0):.0f})")
            if preset_name in ("mmg", "movie"):
                pipes[stage] = pipe
        ratios_to_base(stages)
        result["stages"] = stages
        result["speed_large"] = speed(pipes["mobile-pix2pix-1step"], sizes.bench_size_large, sizes)

        from movie_core.evaluate import open_image_data

        control_split = "train" if "train" in data["splits"] else "test"
        control_images = open_image_data(data_path, control_split)
        index = pick_grid_sample(control_images)
        t0 = time.perf_counter()
        grid = controllability_grid(pipes["mobile-pix2pix-1step"], control_images[index])
        log(f"controllability grid ({time.perf_counter() - t0:.0f} s)")
        curves = {}
        for stage in ("mobile-pix2pix-1step", "mobile-pix2pix-mmg"):
            t0 = time.perf_counter()
            curves[stage] = controllability_curves(pipes[stage], control_images, sizes)
            log(f"controllability {stage}: s_T {curves[stage]['text_guidance']['direction']}, "
                f"s_I {curves[stage]['image_guidance']['direction']} ({time.perf_counter() - t0:.0f} s)")
        result["controllability"] = {
            "split": control_split, "count": curves["mobile-pix2pix-1step"]["count"],
            "grid": {"split": control_split, "index": index, "instruction": grid["instruction"],
                     "text_scales": list(GRID_TEXT_SCALES), "image_scales": list(GRID_IMAGE_SCALES),
                     "strength": grid["strength"]},
            "curves": curves,
        }
        t0 = time.perf_counter()
        photos = photos_section(pipes["mobile-pix2pix-1step"], sizes)
        result["photos"] = photos
        log("photos: " + ", ".join(f"{e} {r['right']}/{r['photos']}" for e, r in photos["per_edit"].items())
            + f" ({time.perf_counter() - t0:.0f} s)")

    files = write_images(result, grid, photos["_images"], images_dir)
    result["files"] = [str(f.relative_to(args.out_dir)) for f in files]
    result["seconds"] = time.perf_counter() - started
    page = args.out_dir / "nano.md"
    page.write_text(render_markdown(result))
    (args.out_dir / "nano.json").write_text(json.dumps(_jsonable(result), indent=2) + "\n")
    log(f"wrote {page}, {args.out_dir / 'nano.json'} and {len(files)} images in {result['seconds']:.0f} s")
    return _jsonable(result)


def write_images(result: dict[str, Any], grid: dict[str, Any], photos: dict[str, Any], folder: Path) -> list[Path]:
    """Every chart and image grid of the page."""
    paths = {name: folder / f"{name}.png" for name in (
        "psnr_per_stage", "ratio_to_base", "cost_vs_quality", "controllability", "controllability_grid", "photos",
        "photos_closed_form")}
    chart_quality(result, paths["psnr_per_stage"])
    chart_ratios(result, paths["ratio_to_base"])
    chart_cost(result, paths["cost_vs_quality"])
    chart_controllability(result, paths["controllability"])
    rows = [[grid["source"], grid["target"], *grid["cells"][r]] for r in range(len(GRID_IMAGE_SCALES))]
    image_grid(rows, paths["controllability_grid"],
               row_labels=[f"s_I = {s:g}" for s in GRID_IMAGE_SCALES],
               col_labels=["source", "ground truth"] + [f"s_T = {s:g}" for s in GRID_TEXT_SCALES],
               title=f"mobile-pix2pix-1step: \"{grid['instruction']}\"")
    names = photos["names"]
    for key, path, title in (("edited", paths["photos"], "1-step model"),
                             ("reference", paths["photos_closed_form"], "closed-form edits (reference)")):
        rows = [[photos["sources"][i]] + [photos[key][e][i] for e in PHOTO_EDITS] for i in range(len(names))]
        image_grid(rows, path, row_labels=names, col_labels=["source", *PHOTO_EDITS], title=title, cell_inches=1.4)
    return list(paths.values())


def _quiet_libraries() -> None:
    """No per-load progress bars and config notices from diffusers/transformers in the log."""
    try:
        import diffusers
        import transformers

        diffusers.utils.logging.set_verbosity_error()
        transformers.utils.logging.set_verbosity_error()
        transformers.utils.logging.disable_progress_bar()
    except (ImportError, AttributeError):
        pass


if __name__ == "__main__":
    main()
