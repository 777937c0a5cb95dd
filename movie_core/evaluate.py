"""Evaluation of editing models on data with ground truth (`movie eval`): plain-data results.

Everything here scores a *predictor*: a callable taking a batch of source images (uint8 H x W x 3)
and their instructions and returning the edited images (uint8, same sizes). Built-ins:

* `PipelinePredictor(pipe)`: a movie pipeline, optionally at other guidance scales than its recipe's;
* `IdentityPredictor()` ("identity"): returns the source unchanged, the do-nothing reference;
* `GroundTruthPredictor()` ("ground-truth"): returns the dataset's own edits (an oracle; scores perfectly).

A predictor with `uses_targets = True` is also handed the ground truth (`targets=`); only the oracle
does that. Predictors may also have a `video(frames, instruction, targets=None, batch_size=4)` method
for temporal evaluation; a plain callable is applied to the frames batch by batch.

Metrics (all on uint8 RGB, computed in float64):

* PSNR: 10 log10(255^2 / MSE) over all pixels and channels of one image, averaged over images.
  Identical images (MSE = 0) score PSNR_CAP = 100 dB, and every PSNR is capped there, so means stay
  finite and JSON-safe. For scale: one channel of one pixel off by 1 is 89 dB in a 64 x 64 image
  and reaches the cap from about 51,000 pixels (227 x 227) up; any visible error is far below it.
* SSIM: Wang et al. (2004) with a Gaussian window (11 x 11, sigma 1.5), K1 = 0.01, K2 = 0.03,
  L = 255, computed per RGB channel on the "valid" region (no padding, as the reference MATLAB code)
  and averaged over channels and positions. Images smaller than 11 pixels use a window cut to the
  image size.
* Per-edit breakdown: instructions are mapped to the procedural edits (`data/procedural.py`)
  by exact phrasing lookup (case and trailing period ignored); anything else counts as "other".
* CLIP (with a local CLIP model folder, `ClipScorer`): CLIP-image similarity = cosine between the
  CLIP image embeddings of source and edit; directional CLIP similarity = cosine between
  E_img(edit) - E_img(source) and E_txt(edited caption) - E_txt(source caption). Samples with
  captions (`original_prompt`/`edited_prompt` or `input`/`output` keys) use them; with only an
  instruction we follow the InstructPix2Pix convention of a text direction from the empty string to
  the instruction: E_txt(instruction) - E_txt(""). Images are preprocessed here, not by transformers'
  image processor (which may need torchvision): bicubic resize of the short side to the model's
  image size, centre crop, normalisation with the folder's preprocessor_config.json mean/std (CLIP's
  when absent).
* Controllability (paper Fig. 4): edit strength = mean |edit - source| in [0, 1] units, and the
  distance to the ground truth, over a grid of s_T (at s_I = 1.5) and of s_I (at s_T = 7.5); the
  Spearman rank correlation of strength with the scale should be positive for s_T and negative for
  s_I. A constant series has no rank correlation (None): e.g. a random-init guidance-embedded model,
  whose guidance embedding starts at zero and ignores the scales.
* Temporal consistency on videos: the mean absolute difference between consecutive edited frames
  divided by the source's (1 = as steady as the source), plus per-frame PSNR/SSIM vs the ground
  truth frames. Pipelines edit through `FrameEditor` with the recipe's anchor policy.
"""

from __future__ import annotations

import json
import math
import time
from collections.abc import Callable, Iterable, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from movie_core.errors import MovieError, UsageError

PSNR_CAP = 100.0  # dB: identical images, and the ceiling of every PSNR reported
SSIM_K1 = 0.01
SSIM_K2 = 0.03
SSIM_WINDOW = 11
SSIM_SIGMA = 1.5
TEXT_SCALES = (2.0, 4.0, 7.5, 10.0, 14.0)  # s_T grid, at s_I = FIXED_IMAGE_SCALE
IMAGE_SCALES = (1.0, 1.5, 2.0, 3.0)  # s_I grid, at s_T = FIXED_TEXT_SCALE
FIXED_IMAGE_SCALE = 1.5
FIXED_TEXT_SCALE = 7.5
CLIP_MEAN = (0.48145466, 0.4578275, 0.40821073)
CLIP_STD = (0.26862954, 0.26130258, 0.27577711)
OTHER = "other"
BUILTIN_PREDICTORS = ("identity", "ground-truth")

Predictor = Callable[..., list]


# --------------------------------------------------------------------------------------------- metrics


def _as_float(image: np.ndarray) -> np.ndarray:
    return np.asarray(image, dtype=np.float64)


def _check_pair(a: np.ndarray, b: np.ndarray) -> None:
    if np.shape(a) != np.shape(b):
        raise MovieError(f"cannot compare images of shapes {np.shape(a)} and {np.shape(b)}")


def psnr(prediction: np.ndarray, target: np.ndarray, data_range: float = 255.0, cap: float = PSNR_CAP) -> float:
    """PSNR in dB of one image (any shape) against its target; identical images give `cap`."""
    _check_pair(prediction, target)
    mse = float(np.mean((_as_float(prediction) - _as_float(target)) ** 2))
    if mse == 0.0:
        return cap
    return min(cap, 10.0 * math.log10(data_range**2 / mse))


def _gaussian(size: int, sigma: float) -> np.ndarray:
    x = np.arange(size, dtype=np.float64) - (size - 1) / 2.0
    g = np.exp(-(x**2) / (2.0 * sigma**2))
    return g / g.sum()


def ssim(prediction: np.ndarray, target: np.ndarray, data_range: float = 255.0) -> float:
    """Mean SSIM over channels (H x W x C or H x W), Gaussian 11x11 window sigma 1.5, K1 0.01, K2 0.03, valid region."""
    import torch
    import torch.nn.functional as F

    _check_pair(prediction, target)
    a, b = _as_float(prediction), _as_float(target)
    if a.ndim == 2:
        a, b = a[..., None], b[..., None]
    if a.ndim != 3:
        raise MovieError(f"ssim takes H x W or H x W x C images, got shape {a.shape}")
    h, w = a.shape[:2]
    win = min(SSIM_WINDOW, h, w)
    g = torch.from_numpy(_gaussian(win, SSIM_SIGMA))
    x = torch.from_numpy(np.ascontiguousarray(np.moveaxis(a, -1, 0)))[:, None]  # C x 1 x H x W
    y = torch.from_numpy(np.ascontiguousarray(np.moveaxis(b, -1, 0)))[:, None]

    def filt(z: torch.Tensor) -> torch.Tensor:  # separable Gaussian, no padding
        z = F.conv2d(z, g.view(1, 1, win, 1))
        return F.conv2d(z, g.view(1, 1, 1, win))

    c1, c2 = (SSIM_K1 * data_range) ** 2, (SSIM_K2 * data_range) ** 2
    mu_x, mu_y = filt(x), filt(y)
    sxx = filt(x * x) - mu_x * mu_x
    syy = filt(y * y) - mu_y * mu_y
    sxy = filt(x * y) - mu_x * mu_y
    num = (2 * mu_x * mu_y + c1) * (2 * sxy + c2)
    den = (mu_x * mu_x + mu_y * mu_y + c1) * (sxx + syy + c2)
    return float((num / den).mean())


def _luma_edges(image: np.ndarray) -> np.ndarray:
    from movie_core.data.procedural import LUMA

    y = _as_float(image)
    if y.ndim == 3:
        y = y[..., :3] @ LUMA if y.shape[-1] >= 3 else y.mean(-1)
    gy, gx = np.gradient(y)
    return np.hypot(gx, gy)


def structure_kept(output: np.ndarray, source: np.ndarray) -> float:
    """How much of the source's structure an edit keeps: the Pearson correlation of the two images' luma gradient
    magnitudes (1 = every edge where it was; about 0 = none of them). Blind to colour maps that keep edges (grey,
    sepia, a tint, inversion), so it is the pixel analogue of InstructPix2Pix's image-similarity axis, the one its
    image guidance s_I moves. 0 when either image has no edges."""
    _check_pair(output, source)
    a, b = _luma_edges(output).ravel(), _luma_edges(source).ravel()
    if a.std() == 0 or b.std() == 0:
        return 0.0
    return float(np.corrcoef(a, b)[0, 1])


def spearman(x: Sequence[float], y: Sequence[float]) -> float | None:
    """Spearman rank correlation (average ranks for ties); None when either series is constant or too short."""
    xa, ya = np.asarray(x, dtype=np.float64), np.asarray(y, dtype=np.float64)
    if len(xa) != len(ya):
        raise ValueError("spearman needs two series of the same length")
    if len(xa) < 2 or not (np.all(np.isfinite(xa)) and np.all(np.isfinite(ya))):
        return None

    def ranks(v: np.ndarray) -> np.ndarray:
        order = np.argsort(v, kind="mergesort")
        r = np.empty(len(v))
        r[order] = np.arange(len(v), dtype=np.float64)
        for value in np.unique(v):  # ties: average rank
            tie = v == value
            r[tie] = r[tie].mean()
        return r

    rx, ry = ranks(xa), ranks(ya)
    rx, ry = rx - rx.mean(), ry - ry.mean()
    denom = math.sqrt(float((rx**2).sum() * (ry**2).sum()))
    if denom == 0.0:
        return None
    return float(np.clip((rx * ry).sum() / denom, -1.0, 1.0))


def _normalise(text: str) -> str:
    return " ".join(text.lower().strip().rstrip(".!").split())


def _phrasing_table() -> dict[str, str]:
    from movie_core.data.procedural import EDITS

    return {_normalise(p): name for name, edit in EDITS.items() for p in edit.phrasings}


def edit_type(instruction: str, table: dict[str, str] | None = None) -> str:
    """The procedural edit an instruction asks for (exact phrasing lookup), else 'other'."""
    table = table if table is not None else _phrasing_table()
    return table.get(_normalise(instruction), OTHER)


def _mean(values: Iterable[float]) -> float | None:
    values = list(values)
    return float(np.mean(values)) if values else None


# ------------------------------------------------------------------------------------------ predictors


class IdentityPredictor:
    """Returns the sources unchanged: the score of doing nothing."""

    name = "identity"
    uses_targets = False

    def __call__(self, sources: list[np.ndarray], instructions: list[str], targets=None) -> list[np.ndarray]:
        return [np.asarray(s) for s in sources]

    def video(self, frames: np.ndarray, instruction: str, targets=None, batch_size: int = 4) -> np.ndarray:
        return np.asarray(frames)


class GroundTruthPredictor:
    """Returns the ground truth (an oracle): scores perfectly, checks the metrics end to end."""

    name = "ground-truth"
    uses_targets = True

    def __call__(self, sources: list[np.ndarray], instructions: list[str], targets=None) -> list[np.ndarray]:
        if targets is None:
            raise UsageError("the ground-truth predictor needs the targets")
        return [np.asarray(t) for t in targets]

    def video(self, frames: np.ndarray, instruction: str, targets=None, batch_size: int = 4) -> np.ndarray:
        if targets is None:
            raise UsageError("the ground-truth predictor needs the targets")
        return np.asarray(targets)


def builtin_predictor(name: str):
    """'identity' or 'ground-truth'."""
    if name == "identity":
        return IdentityPredictor()
    if name == "ground-truth":
        return GroundTruthPredictor()
    raise UsageError(f"unknown predictor {name!r}: use {', '.join(BUILTIN_PREDICTORS)} or a model")


def edit_at_scales(pipe, x, prompts: list[str], *, s_T: float | None = None, s_I: float | None = None,
                   steps: int | None = None, seed: int | None = None):
    """Edit NCHW images in [-1, 1] with one prompt per image at the given guidance scales; returns [-1, 1].

    Scales, steps and seed default to the pipeline's recipe. Each image gets its own generator seeded
    alike, so an image's edit does not depend on the batch it is in."""
    if len(prompts) not in (1, x.shape[0]):
        raise UsageError(f"{len(prompts)} prompts for {x.shape[0]} images")
    return pipe.edit_batch(x, list(prompts), s_T=s_T, s_I=s_I, steps=steps, seed=seed)


class PipelinePredictor:
    """A movie pipeline as a predictor; frames keep their size (edge-padded to the model's multiple)."""

    uses_targets = False

    def __init__(self, pipe, *, s_T: float | None = None, s_I: float | None = None, steps: int | None = None,
                 seed: int | None = None, name: str = "model") -> None:
        from movie_core.edit import SizePolicy

        self.pipe, self.s_T, self.s_I, self.steps, self.seed, self.name = pipe, s_T, s_I, steps, seed, name
        self.policy = SizePolicy()
        self.device, self.dtype = pipe.device, pipe.dtype

    def at(self, *, s_T: float | None = None, s_I: float | None = None) -> PipelinePredictor:
        """The same pipeline at other guidance scales."""
        return PipelinePredictor(self.pipe, s_T=self.s_T if s_T is None else s_T, s_I=self.s_I if s_I is None else s_I,
                                 steps=self.steps, seed=self.seed, name=self.name)

    def __call__(self, sources: list[np.ndarray], instructions: list[str], targets=None) -> list[np.ndarray]:
        return self._map(sources, lambda x, idx: edit_at_scales(
            self.pipe, x, [instructions[i] for i in idx], s_T=self.s_T, s_I=self.s_I, steps=self.steps, seed=self.seed))

    def round_trip(self, sources: list[np.ndarray]) -> list[np.ndarray]:
        """decoder(encoder(x)) of each frame, no denoiser: what the pipeline's autoencoders alone make of it."""
        return self._map(sources, lambda x, idx: self.pipe.round_trip(x))

    def _map(self, sources: list[np.ndarray], fn) -> list[np.ndarray]:
        """fn(batch, indices) over same-sized groups of frames, sized, padded and restored as `movie edit` does."""
        from movie_core.edit import to_frames, to_tensor

        out: list[np.ndarray | None] = [None] * len(sources)
        groups: dict[tuple[int, ...], list[int]] = {}
        for i, s in enumerate(sources):
            groups.setdefault(np.shape(s), []).append(i)
        for shape, idx in groups.items():
            h, w = shape[:2]
            size = self.policy.target(h, w)
            padded = self.policy.padded(*size)
            x = to_tensor([np.asarray(sources[i]) for i in idx], size, padded, self.device, self.dtype)
            for i, frame in zip(idx, to_frames(fn(x, idx), size, (h, w))):
                out[i] = frame
        return out  # type: ignore[return-value]

    def video(self, frames: np.ndarray, instruction: str, targets=None, batch_size: int = 4) -> np.ndarray:
        """Edit a T x H x W x 3 clip as `movie edit` does: FrameEditor, the recipe's anchor, scales and seed."""
        from movie_core.edit import FrameEditor, anchor_index

        frames = np.asarray(frames)
        h, w = frames.shape[1:3]
        size = self.policy.target(h, w)
        editor = FrameEditor(self.pipe, instruction, size=size, padded=self.policy.padded(*size))
        edited: list[np.ndarray] = []
        try:
            index = anchor_index(self.pipe.recipe.anchor, len(frames), True)
            if index is not None:
                editor.record_anchor(frames[min(index, len(frames) - 1)], min(index, len(frames) - 1))
            for start in range(0, len(frames), batch_size):
                edited.extend(editor.edit(list(frames[start:start + batch_size]), (h, w)))
        finally:
            editor.close()
        return np.stack(edited)


def _predict(predictor, sources, instructions, targets) -> list[np.ndarray]:
    if getattr(predictor, "uses_targets", False):
        out = predictor(sources, instructions, targets=targets)
    else:
        out = predictor(sources, instructions)
    out = [np.asarray(o) for o in out]
    if len(out) != len(sources):
        raise MovieError(f"the predictor returned {len(out)} images for {len(sources)} sources")
    for o, s in zip(out, sources):
        if o.shape != np.shape(s) or o.dtype != np.uint8:
            raise MovieError(f"the predictor returned a {o.dtype} {o.shape} image for a uint8 {np.shape(s)} source")
    return out


def _predict_video(predictor, frames, instruction, targets, batch_size) -> np.ndarray:
    if hasattr(predictor, "video"):
        return np.asarray(predictor.video(frames, instruction, targets=targets, batch_size=batch_size))
    out: list[np.ndarray] = []
    for start in range(0, len(frames), batch_size):
        chunk = slice(start, start + batch_size)
        out.extend(_predict(predictor, list(frames[chunk]), [instruction] * len(frames[chunk]), list(targets[chunk])))
    return np.stack(out)


# ------------------------------------------------------------------------------------------------ CLIP


class ClipScorer:
    """CLIP-image and directional CLIP similarity with a local CLIP model folder (never downloads)."""

    def __init__(self, path: str | Path, device: str = "cpu") -> None:
        import torch
        from transformers import CLIPModel

        path = Path(path)
        if not path.is_dir():
            raise MovieError(f"no such CLIP model folder: {path}")
        try:
            self.model = CLIPModel.from_pretrained(path, local_files_only=True).eval().to(device)
            self.tokenizer = self._tokenizer(path)
        except MovieError:
            raise
        except Exception as exc:
            raise MovieError(f"cannot load CLIP model {path}: {' '.join(str(exc).split())[:300]}") from None
        self.device = device
        self.image_size = int(self.model.config.vision_config.image_size)
        self.max_length = int(self.model.config.text_config.max_position_embeddings)
        mean, std = CLIP_MEAN, CLIP_STD
        config = path / "preprocessor_config.json"
        if config.is_file():
            try:
                data = json.loads(config.read_text(encoding="utf-8"))
                mean, std = tuple(data.get("image_mean", mean)), tuple(data.get("image_std", std))
            except (OSError, ValueError):
                pass
        self.mean = torch.tensor(mean, dtype=torch.float32).view(1, 3, 1, 1)
        self.std = torch.tensor(std, dtype=torch.float32).view(1, 3, 1, 1)
        self._text_cache: dict[str, Any] = {}

    @staticmethod
    def _tokenizer(path: Path):
        from transformers import CLIPTokenizer

        for where in (path, path / "tokenizer"):
            if (where / "vocab.json").is_file() or (where / "tokenizer.json").is_file():
                try:
                    return CLIPTokenizer.from_pretrained(where, local_files_only=True)
                except Exception:
                    from transformers import AutoTokenizer

                    return AutoTokenizer.from_pretrained(where, local_files_only=True)
        raise MovieError(f"{path} has no CLIP tokenizer (vocab.json or tokenizer.json)")

    @staticmethod
    def _features(out):
        import torch

        return out if isinstance(out, torch.Tensor) else out.pooler_output

    def image_embeddings(self, images: list[np.ndarray]):
        """L2-normalised CLIP image embeddings of uint8 H x W x 3 images."""
        import torch
        import torch.nn.functional as F

        batch = []
        s = self.image_size
        for image in images:
            x = torch.from_numpy(np.array(image, copy=True)).permute(2, 0, 1)[None].float() / 255.0
            h, w = x.shape[-2:]
            scale = s / min(h, w)
            nh, nw = max(s, round(h * scale)), max(s, round(w * scale))
            x = F.interpolate(x, size=(nh, nw), mode="bicubic", align_corners=False, antialias=True).clamp(0, 1)
            top, left = (nh - s) // 2, (nw - s) // 2
            batch.append(x[..., top:top + s, left:left + s])
        x = (torch.cat(batch) - self.mean) / self.std
        with torch.no_grad():
            emb = self._features(self.model.get_image_features(pixel_values=x.to(self.device)))
        return F.normalize(emb.float(), dim=-1).cpu()

    def text_embeddings(self, texts: list[str]):
        """L2-normalised CLIP text embeddings (cached per text)."""
        import torch
        import torch.nn.functional as F

        missing = [t for t in dict.fromkeys(texts) if t not in self._text_cache]
        if missing:
            tok = self.tokenizer(missing, padding="max_length", truncation=True, max_length=self.max_length,
                                 return_tensors="pt")
            with torch.no_grad():
                emb = self._features(self.model.get_text_features(
                    input_ids=tok["input_ids"].to(self.device), attention_mask=tok["attention_mask"].to(self.device)))
            for t, e in zip(missing, F.normalize(emb.float(), dim=-1).cpu()):
                self._text_cache[t] = e
        return torch.stack([self._text_cache[t] for t in texts])

    def score(self, sources: list[np.ndarray], edits: list[np.ndarray], instructions: list[str],
              captions: list[tuple[str, str] | None] | None = None) -> tuple[list[float], list[float]]:
        """Per sample (clip_image, clip_direction); captions (source, edited) replace ("", instruction)."""
        import torch.nn.functional as F

        captions = captions or [None] * len(sources)
        src_cap = [c[0] if c else "" for c in captions]
        dst_cap = [c[1] if c else i for c, i in zip(captions, instructions)]
        e_src, e_edit = self.image_embeddings(sources), self.image_embeddings(edits)
        t_src, t_dst = self.text_embeddings(src_cap), self.text_embeddings(dst_cap)
        image_sim = F.cosine_similarity(e_src, e_edit, dim=-1).clamp(-1, 1)
        direction = F.cosine_similarity(e_edit - e_src, t_dst - t_src, dim=-1, eps=1e-8).clamp(-1, 1)
        return image_sim.tolist(), direction.tolist()


def _captions(sample: dict[str, Any]) -> tuple[str, str] | None:
    for a, b in (("original_prompt", "edited_prompt"), ("input", "output"), ("source_caption", "edited_caption")):
        if isinstance(sample.get(a), str) and isinstance(sample.get(b), str):
            return sample[a], sample[b]
    return None


# ------------------------------------------------------------------------------------------ evaluation


def _progress(total: int | None, desc: str, enabled: bool):
    from tqdm import tqdm

    return tqdm(total=total, desc=desc, unit="sample", disable=not enabled, dynamic_ncols=True, leave=False)


def _samples(dataset: Sequence[dict[str, Any]], limit: int | None) -> list[int]:
    n = len(dataset)
    return list(range(n if limit is None else min(n, limit)))


def evaluate_images(predictor, dataset: Sequence[dict[str, Any]], *, limit: int | None = None, batch_size: int = 8,
                    clip: ClipScorer | None = None, progress: bool = False) -> dict[str, Any]:
    """PSNR/SSIM (and CLIP) of the predictor's edits vs the ground truth, with the identity reference.

    Returns {count, psnr, ssim, per_edit: {edit: {count, psnr, ssim}}, identity: {psnr, ssim},
    clip: {clip_image, clip_direction, ground_truth: {...}, text_direction} when a scorer is given}.
    """
    if batch_size < 1:
        raise UsageError("batch size must be >= 1")
    indices = _samples(dataset, limit)
    if not indices:
        raise MovieError("no samples to evaluate")
    table = _phrasing_table()
    rows: list[dict[str, Any]] = []
    clip_rows: list[tuple[float, float, float, float]] = []
    used_captions = False
    with _progress(len(indices), "evaluating", progress) as bar:
        for start in range(0, len(indices), batch_size):
            samples = [dataset[i] for i in indices[start:start + batch_size]]
            for s in samples:
                if np.ndim(s["source"]) != 3:
                    raise UsageError("this is a video dataset: evaluate it with --videos (or point --data at images)")
            sources = [np.asarray(s["source"]) for s in samples]
            targets = [np.asarray(s["edited"]) for s in samples]
            instructions = [s["instruction"] for s in samples]
            edits = _predict(predictor, sources, instructions, targets)
            for src, tgt, out, ins in zip(sources, targets, edits, instructions):
                rows.append({
                    "edit": edit_type(ins, table),
                    "psnr": psnr(out, tgt), "ssim": ssim(out, tgt),
                    "identity_psnr": psnr(src, tgt), "identity_ssim": ssim(src, tgt),
                })
            if clip is not None:
                captions = [_captions(s) for s in samples]
                used_captions = used_captions or any(captions)
                img, direction = clip.score(sources, edits, instructions, captions)
                gt_img, gt_dir = clip.score(sources, targets, instructions, captions)
                clip_rows.extend(zip(img, direction, gt_img, gt_dir))
            bar.update(len(samples))
    per_edit: dict[str, dict[str, Any]] = {}
    for name in sorted({r["edit"] for r in rows}):
        mine = [r for r in rows if r["edit"] == name]
        per_edit[name] = {"count": len(mine), "psnr": _mean(r["psnr"] for r in mine),
                          "ssim": _mean(r["ssim"] for r in mine),
                          "identity_psnr": _mean(r["identity_psnr"] for r in mine),
                          "identity_ssim": _mean(r["identity_ssim"] for r in mine)}
    result: dict[str, Any] = {
        "count": len(rows),
        "psnr": _mean(r["psnr"] for r in rows),
        "ssim": _mean(r["ssim"] for r in rows),
        "psnr_cap": PSNR_CAP,
        "per_edit": per_edit,
        "identity": {"psnr": _mean(r["identity_psnr"] for r in rows), "ssim": _mean(r["identity_ssim"] for r in rows)},
    }
    if clip is not None:
        result["clip"] = {
            "clip_image": _mean(c[0] for c in clip_rows),
            "clip_direction": _mean(c[1] for c in clip_rows),
            "ground_truth": {"clip_image": _mean(c[2] for c in clip_rows),
                             "clip_direction": _mean(c[3] for c in clip_rows)},
            "text_direction": ("source -> edited captions" if used_captions
                               else 'instruction vs "" (InstructPix2Pix convention)'),
        }
    return result


def controllability(predictor: PipelinePredictor, dataset: Sequence[dict[str, Any]], *, limit: int = 8,
                    batch_size: int = 8, text_scales: Sequence[float] = TEXT_SCALES,
                    image_scales: Sequence[float] = IMAGE_SCALES, fixed_image_scale: float = FIXED_IMAGE_SCALE,
                    fixed_text_scale: float = FIXED_TEXT_SCALE, progress: bool = False) -> dict[str, Any]:
    """Edit strength and distance to the ground truth as functions of s_T and of s_I (paper Fig. 4).

    Strength = mean |edit - source| / 255; gt_distance = mean |edit - ground truth| / 255, over the
    first `limit` samples. Each series reports its Spearman correlation with the scale, the sign the
    paper expects (s_T: +1, strength grows; s_I: -1, strength shrinks), `as_expected` (the
    correlation has that sign) and `monotonic` (strictly monotone that way at every grid step).
    """
    if not isinstance(predictor, PipelinePredictor):
        raise UsageError("controllability needs a model: guidance scales mean nothing to identity or ground-truth")
    indices = _samples(dataset, limit)
    if not indices:
        raise MovieError("no samples to evaluate")
    samples = [dataset[i] for i in indices]
    for s in samples:
        if np.ndim(s["source"]) != 3:
            raise UsageError("controllability runs on image data, not videos")
    sources = [np.asarray(s["source"]) for s in samples]
    targets = [np.asarray(s["edited"]) for s in samples]
    instructions = [s["instruction"] for s in samples]

    def point(p: PipelinePredictor) -> tuple[float, float]:
        edits: list[np.ndarray] = []
        for start in range(0, len(sources), batch_size):
            chunk = slice(start, start + batch_size)
            edits.extend(_predict(p, sources[chunk], instructions[chunk], targets[chunk]))
        # the mean of a non-empty list (there are samples): never None
        strength = float(np.mean([float(np.abs(_as_float(e) - _as_float(s)).mean()) / 255.0
                                  for e, s in zip(edits, sources)]))
        dist = float(np.mean([float(np.abs(_as_float(e) - _as_float(t)).mean()) / 255.0
                              for e, t in zip(edits, targets)]))
        return strength, dist

    def series(scales: Sequence[float], make, expected: int, bar) -> dict[str, Any]:
        points = []
        for scale in scales:
            strength, dist = point(make(float(scale)))
            points.append({"scale": float(scale), "strength": strength, "gt_distance": dist})
            bar.update(1)
        strengths = [p["strength"] for p in points]
        rho = spearman(scales, strengths)
        steps = np.diff(strengths) * expected
        return {
            "points": points,
            "spearman": rho,
            "gt_distance_spearman": spearman(scales, [p["gt_distance"] for p in points]),
            "expected_sign": expected,
            "as_expected": None if rho is None else bool(rho * expected > 0),
            "monotonic": bool(len(steps) > 0 and np.all(steps > 0)),
        }

    with _progress(len(text_scales) + len(image_scales), "controllability", progress) as bar:
        text = series(text_scales, lambda s: predictor.at(s_T=s, s_I=fixed_image_scale), +1, bar)
        image = series(image_scales, lambda s: predictor.at(s_T=fixed_text_scale, s_I=s), -1, bar)
    text["fixed_image_scale"] = fixed_image_scale
    image["fixed_text_scale"] = fixed_text_scale
    return {"count": len(samples), "text_guidance": text, "image_guidance": image,
            "guidance": getattr(predictor.pipe.denoiser, "guidance", None)}


def consecutive_mad(frames: np.ndarray) -> float | None:
    """Mean over t of mean |frame[t+1] - frame[t]| (uint8 units); None for fewer than two frames."""
    frames = np.asarray(frames, dtype=np.float64)
    if len(frames) < 2:
        return None
    return float(np.mean(np.abs(np.diff(frames, axis=0)), axis=tuple(range(1, frames.ndim))).mean())


def _ratio(a: float | None, b: float | None) -> float | None:
    return a / b if a is not None and b else None


def temporal_consistency(predictor, dataset: Sequence[dict[str, Any]], *, limit: int | None = None,
                         batch_size: int = 4, progress: bool = False) -> dict[str, Any]:
    """Per video: consecutive-frame MAD of the edit over the source's, and per-frame PSNR/SSIM vs the ground truth.

    `ratio` 1 = as steady as the source; the ground truth's own ratio is reported beside it as the
    reference (a global edit of a moving scene changes it, e.g. grayscale lowers it).
    """
    indices = _samples(dataset, limit)
    if not indices:
        raise MovieError("no videos to evaluate")
    videos = []
    started = time.perf_counter()
    frame_count = 0
    with _progress(len(indices), "videos", progress) as bar:
        for i in indices:
            sample = dataset[i]
            src, gt = np.asarray(sample["source"]), np.asarray(sample["edited"])
            if src.ndim != 4:
                raise UsageError("temporal consistency needs videos (T x H x W x 3 samples)")
            out = _predict_video(predictor, src, sample["instruction"], gt, batch_size)
            if out.shape != src.shape or out.dtype != np.uint8:
                raise MovieError(f"the predictor returned {out.dtype} {out.shape} frames for a uint8 {src.shape} video")
            src_mad, out_mad, gt_mad = consecutive_mad(src), consecutive_mad(out), consecutive_mad(gt)
            videos.append({
                "instruction": sample["instruction"],
                "edit": edit_type(sample["instruction"]),
                "frames": int(len(src)),
                "source_consecutive_mad": src_mad,
                "edited_consecutive_mad": out_mad,
                "ratio": _ratio(out_mad, src_mad),
                "ground_truth_ratio": _ratio(gt_mad, src_mad),
                "psnr": _mean(psnr(o, t) for o, t in zip(out, gt)),
                "ssim": _mean(ssim(o, t) for o, t in zip(out, gt)),
                "identity_psnr": _mean(psnr(s, t) for s, t in zip(src, gt)),
                "identity_ssim": _mean(ssim(s, t) for s, t in zip(src, gt)),
            })
            frame_count += len(src)
            bar.update(1)
    seconds = time.perf_counter() - started
    pipe = getattr(predictor, "pipe", None)
    return {
        "count": len(videos),
        "frames": frame_count,
        "anchor": pipe.recipe.anchor if pipe is not None else None,
        "ratio": _mean(v["ratio"] for v in videos if v["ratio"] is not None),
        "ground_truth_ratio": _mean(v["ground_truth_ratio"] for v in videos if v["ground_truth_ratio"] is not None),
        "psnr": _mean(v["psnr"] for v in videos),
        "ssim": _mean(v["ssim"] for v in videos),
        "identity": {"psnr": _mean(v["identity_psnr"] for v in videos),
                     "ssim": _mean(v["identity_ssim"] for v in videos)},
        "frames_per_s": frame_count / seconds if seconds else None,
        "videos": videos,
    }


# ---------------------------------------------------------------------------------------- all at once


def open_image_data(data: str | Path, split: str | None):
    from movie_core.data.datasets import open_dataset

    return open_dataset(data, split)


def open_video_data(data: str | Path, split: str | None):
    from movie_core.data.datasets import VideoDataset

    return VideoDataset(data, split)


def evaluate(predictor, data: str | Path, *, split: str | None = "test", limit: int | None = None,
             batch_size: int = 8, clip: str | Path | ClipScorer | None = None,
             controllability_samples: int | None = None, videos: bool = False, progress: bool = False,
             model: str | None = None, recipe: dict[str, Any] | None = None) -> dict[str, Any]:
    """Everything `movie eval` reports, as plain data (see the module docstring for the metrics).

    `predictor`: a PipelinePredictor, a pipeline (wrapped), 'identity', 'ground-truth' or a callable.
    `controllability_samples`: run the s_T / s_I sweeps on that many samples (None: skip).
    Keys: model, recipe, data, split, count, psnr, ssim, psnr_cap, per_edit, identity, and when asked
    clip, controllability, temporal; seconds.
    """
    from movie_core.data.datasets import VideoDataset

    started = time.perf_counter()
    if isinstance(predictor, str):
        predictor = builtin_predictor(predictor)
    elif hasattr(predictor, "denoiser") and hasattr(predictor, "encoder"):
        predictor = PipelinePredictor(predictor)
    if isinstance(predictor, PipelinePredictor) and recipe is None:
        recipe = dict(predictor.pipe.recipe.components() | predictor.pipe.recipe.options())
    if controllability_samples is not None and not isinstance(predictor, PipelinePredictor):
        raise UsageError("--controllability needs a model: guidance scales mean nothing to identity or ground-truth")
    images = open_image_data(data, split)
    is_video = isinstance(images, VideoDataset)
    if is_video and not videos:
        raise UsageError(f"{data} holds videos: evaluate them with --videos")
    video_data = open_video_data(data, split) if videos else None  # fail on a missing split before any model work
    scorer = ClipScorer(clip) if isinstance(clip, (str, Path)) else clip
    result: dict[str, Any] = {
        "model": model or getattr(predictor, "name", type(predictor).__name__),
        "recipe": recipe,
        "data": str(data),
        "split": split,
    }
    if is_video:
        result |= {"count": 0, "psnr": None, "ssim": None, "psnr_cap": PSNR_CAP, "per_edit": {},
                   "identity": {"psnr": None, "ssim": None}}
    else:
        result |= evaluate_images(predictor, images, limit=limit, batch_size=batch_size, clip=scorer, progress=progress)
    if controllability_samples is not None:
        if is_video:
            raise UsageError("--controllability runs on image data, not videos")
        result["controllability"] = controllability(predictor, images, limit=controllability_samples,
                                                    batch_size=batch_size, progress=progress)
    if video_data is not None:
        result["temporal"] = temporal_consistency(predictor, video_data, limit=limit, batch_size=batch_size,
                                                  progress=progress)
    result["seconds"] = time.perf_counter() - started
    return result


def _fmt(value: float | None, digits: int = 2) -> str:
    return "-" if value is None else f"{value:.{digits}f}"


def summary(result: dict[str, Any]) -> str:
    """The human-readable report of an `evaluate` result."""
    lines = [f"{result['model']} on {result['data']} (split {result['split']}): {result['count']} samples"]
    if result["count"]:
        lines.append(f"  {'':16} {'PSNR dB':>8} {'SSIM':>7}")
        lines.append(f"  {'model':16} {_fmt(result['psnr']):>8} {_fmt(result['ssim'], 4):>7}")
        ident = result["identity"]
        lines.append(f"  {'identity (ref)':16} {_fmt(ident['psnr']):>8} {_fmt(ident['ssim'], 4):>7}"
                     f"   (source unchanged; ground truth scores {result['psnr_cap']:.0f} dB, 1.0)")
        if result["per_edit"]:
            lines.append("  per edit:        n  PSNR dB    SSIM  identity PSNR/SSIM")
            for name, row in result["per_edit"].items():
                lines.append(f"    {name:14} {row['count']:>3} {_fmt(row['psnr']):>8} {_fmt(row['ssim'], 4):>7}"
                             f"  {_fmt(row['identity_psnr'])}/{_fmt(row['identity_ssim'], 4)}")
    if "clip" in result:
        c = result["clip"]
        g = c["ground_truth"]
        lines.append(f"  CLIP image similarity {_fmt(c['clip_image'], 4)}, directional {_fmt(c['clip_direction'], 4)}"
                     f" (ground truth: {_fmt(g['clip_image'], 4)}, {_fmt(g['clip_direction'], 4)}; text direction "
                     f"{c['text_direction']})")
    if "controllability" in result:
        ctl = result["controllability"]
        for key, label in (("text_guidance", "s_T"), ("image_guidance", "s_I")):
            s = ctl[key]
            pts = ", ".join(f"{p['scale']:g}: {p['strength']:.4f}" for p in s["points"])
            rho = "-" if s["spearman"] is None else f"{s['spearman']:+.2f}"
            lines.append(f"  strength vs {label} ({pts}); spearman {rho}, expected {s['expected_sign']:+d}, "
                         f"monotonic {'yes' if s['monotonic'] else 'no'}")
    if "temporal" in result:
        t = result["temporal"]
        anchor = f", anchor {t['anchor']}" if t["anchor"] is not None else ""
        lines.append(f"  videos: {t['count']} ({t['frames']} frames{anchor}): consecutive-frame change "
                     f"{_fmt(t['ratio'], 3)}x the source's (ground truth {_fmt(t['ground_truth_ratio'], 3)}x), "
                     f"PSNR {_fmt(t['psnr'])} dB, SSIM {_fmt(t['ssim'], 4)} "
                     f"(identity {_fmt(t['identity']['psnr'])} dB, {_fmt(t['identity']['ssim'], 4)})")
    lines.append(f"  ({result['seconds']:.1f} s)")
    return "\n".join(lines)
