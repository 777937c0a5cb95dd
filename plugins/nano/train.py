"""Trainers for the nano model family's fixed parts: the two autoencoders and the tokenizer + text encoder.

train_autoencoders  a nano SD VAE (AutoencoderKL) and a nano TAESD (AutoencoderTiny) in ONE latent space:
                    the VAE is trained on procedural and photographic-like images, then reparametrised so its
                    scaled latents (mode x 0.18215) have zero mean and unit std per channel; TAESD's encoder is
                    distilled to those latents and its decoder learns to decode them, so every encoder/decoder
                    pairing works (paper Fig. 7). Writes out/vae and out/taesd.
train_text_encoder  a byte-level BPE tokenizer learned from the training phrasings of the procedural edits, in
                    CLIPTokenizer format, and a nano CLIPTextModel pretrained to tell the edits apart.
                    Writes out/tokenizer and out/text_encoder.

Both write each subfolder atomically (built elsewhere, then renamed into place) and leave the rest of `out`
alone, so one model folder can collect the pieces of several trainers.
"""

from __future__ import annotations

import copy
import json
import math
import re
import shutil
import time
from collections import Counter
from collections.abc import Callable, Iterable
from itertools import pairwise
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from diffusers import AutoencoderKL, AutoencoderTiny

from movie_core.data import procedural
from movie_core.data.natural import dead_leaves, fractal_image, textured_gradient
from movie_core.data.photos import EVALUATION_PHOTOS
from movie_core.errors import MovieError
from movie_core.weights import replace_folder
from movie_plugins.autoencoders._sd1 import SD_SCALING_FACTOR, SDVAE, TAESD, TAESD_SIZES, VAE_SIZES
from movie_plugins.denoisers._tokenizer import CLIP_MAX_LENGTH, _bytes_to_unicode, byte_vocab

Log = Callable[[str], None]

KL_WEIGHT = 1e-6  # SD's KL weight, relative to a per-pixel reconstruction loss
EVAL_SALT = 0x4E414E4F  # held-out procedural scenes: a seed stream the pool never uses
PHOTOS = EVALUATION_PHOTOS  # scikit-image samples: evaluation only (movie_core.data.photos keeps them out of training)
COMBOS = (("sd-vae", "sd-vae"), ("sd-vae", "taesd"), ("taesd", "sd-vae"), ("taesd", "taesd"))


# ------------------------------------------------------------------------------------------ image pool


def _procedural_crop(rng: np.random.Generator, size: int) -> np.ndarray:
    """A random crop (and sometimes a 2x area downscale) of a procedural scene rendered larger."""
    big = size * int(rng.choice([2, 4]))
    scene = procedural.make_scene(rng, big).astype(np.float32) / 255.0
    if rng.random() < 0.5:
        scene = scene.reshape(big // 2, 2, big // 2, 2, 3).mean(axis=(1, 3))
    top, left = (int(rng.integers(0, scene.shape[i] - size + 1)) for i in (0, 1))
    return scene[top:top + size, left:left + size]


def _sensor(image: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """Optional sensor noise, clipped and quantised to uint8."""
    if rng.random() < 0.3:
        image = image + rng.normal(0, rng.uniform(0.005, 0.03), size=image.shape)
    return procedural.quantize(image)


_SOURCES = (  # (weight, generator): about half procedural, half photographic-like
    (0.35, lambda rng, size: procedural.make_scene(rng, size).astype(np.float32) / 255.0),
    (0.15, _procedural_crop),
    (0.15, fractal_image),
    (0.20, dead_leaves),
    (0.15, textured_gradient),
)


EDITED_FRACTION = 0.3  # pool images shown after a random procedural edit: what the decoders must write

# the share of crops of packaged photographs (movie_core.data.photos.photo_image) in the pool, per data source (the
# chain's `data_source`); the rest is drawn from _SOURCES as before
POOL_PHOTO_SHARE = {"procedural": 0.0, "mixed": 0.5, "photos": 0.8}


def _photo(rng: np.random.Generator, size: int) -> np.ndarray:
    from movie_core.data.photos import photo_image

    return photo_image(rng, size).astype(np.float32) / 255.0


def make_pool(count: int, resolution: int, seed: int = 0, source: str = "procedural") -> np.ndarray:
    """`count` training images, uint8 (N, H, W, 3): procedural scenes and photographic-like synthetic images, a
    fraction of them after a random edit (grey, sepia, tinted, inverted, night...): a denoiser's output is an edited
    image, so the autoencoders must represent global colour changes, not only the colours of unedited scenes.
    `source` 'mixed' or 'photos' makes half or 80% of them crops of packaged photographs (never the evaluation
    photographs: movie_core.data.photos); 'procedural' draws exactly what the shipped family's pool held."""
    rng = np.random.default_rng([seed, resolution])
    share = POOL_PHOTO_SHARE[source]
    weights = np.array([w for w, _ in _SOURCES])
    sources = list(_SOURCES)
    if share:
        weights = np.append(weights / weights.sum() * (1 - share), share)
        sources.append((share, _photo))
    kinds = rng.choice(len(sources), size=count, p=weights / weights.sum())
    pool = np.empty((count, resolution, resolution, 3), dtype=np.uint8)
    for i, kind in enumerate(kinds):
        image = sources[kind][1](rng, resolution)
        if rng.random() < EDITED_FRACTION:
            edit = procedural.EDIT_NAMES[int(rng.integers(len(procedural.EDIT_NAMES)))]
            image = procedural.apply_edit(edit, procedural.quantize(image)).astype(np.float64) / 255.0
        pool[i] = _sensor(image, rng)
    return pool


def heldout_scenes(count: int, resolution: int, seed: int = 0) -> np.ndarray:
    """Procedural scenes from a seed stream the training pool never draws from, uint8 (N, H, W, 3)."""
    rng = np.random.default_rng([seed, EVAL_SALT])
    return np.stack([procedural.make_scene(rng, resolution) for _ in range(count)])


def photos(resolution: int) -> np.ndarray | None:
    """scikit-image's sample photographs, centre-cropped square and resized (None without scikit-image)."""
    try:
        import skimage.data
    except ImportError:
        return None
    from PIL import Image

    out = []
    for name in PHOTOS:
        image = np.asarray(getattr(skimage.data, name)())
        if image.ndim == 2:
            image = np.repeat(image[..., None], 3, axis=-1)
        h, w = image.shape[:2]
        side = min(h, w)
        top, left = (h - side) // 2, (w - side) // 2
        square = Image.fromarray(np.ascontiguousarray(image[top:top + side, left:left + side, :3]))
        out.append(np.asarray(square.resize((resolution, resolution), Image.Resampling.LANCZOS)))
    return np.stack(out)


def to_tensor(images: np.ndarray) -> torch.Tensor:
    """uint8 (N, H, W, 3) -> float NCHW in [-1, 1]."""
    return torch.from_numpy(np.ascontiguousarray(images)).permute(0, 3, 1, 2).float() / 127.5 - 1.0


def _draw(step: int, count: int, batch_size: int, size: int, crop: int, seed: int) -> tuple[torch.Tensor, ...]:
    """A deterministic batch for `step`: which images, which are flipped, and each `crop` window's (top, left),
    on the 8-pixel latent grid."""
    g = torch.Generator().manual_seed(seed * 1_000_003 + step)
    index = torch.randint(count, (batch_size,), generator=g)
    flips = torch.rand(batch_size, generator=g) < 0.5
    offsets = torch.randint((size - crop) // 8 + 1, (batch_size, 2), generator=g) * 8
    return index, flips, offsets


def _images(pool: torch.Tensor, index: torch.Tensor, flips: torch.Tensor) -> torch.Tensor:
    """Pool images as [-1, 1] NCHW, the flagged ones flipped left to right."""
    images = pool[index].permute(0, 3, 1, 2).float() / 127.5 - 1.0
    return torch.where(flips[:, None, None, None], images.flip(3), images)


def _crop(x: torch.Tensor, offsets: torch.Tensor, size: int, scale: int = 1) -> torch.Tensor:
    """Each sample's window of `size` pixels at offsets / scale (scale 8: the same window in latent space)."""
    return torch.stack([t[:, top // scale:top // scale + size, left // scale:left // scale + size]
                        for t, (top, left) in zip(x, offsets.tolist())])


# ------------------------------------------------------------------------------------------ training loop


def _lr_scale(step: int, steps: int) -> float:
    """Linear warm-up over 3% of the steps, then cosine decay to 10%."""
    warm = max(1, steps // 33)
    if step < warm:
        return (step + 1) / warm
    return 0.1 + 0.45 * (1 + math.cos(math.pi * (step - warm) / max(1, steps - warm)))


def _train(
    name: str, model: torch.nn.Module, loss_fn: Callable[[int], tuple[torch.Tensor, dict[str, float]]],
    *, steps: int, lr: float, state_file: Path | None, checkpoint_seconds: float, log: Log, weight_decay: float = 0.0,
) -> dict[str, Any]:
    """AdamW over `model` for `steps` steps of loss_fn(step); returns its history.

    Resumable from state_file (if any).
    """
    params = [p for p in model.parameters() if p.requires_grad]
    opt = torch.optim.AdamW(params, lr=lr, weight_decay=weight_decay)
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda s: _lr_scale(s, steps))
    state: dict[str, Any] = {"step": 0, "seconds": 0.0, "history": []}
    if state_file is not None and state_file.is_file():
        saved = torch.load(state_file, map_location="cpu", weights_only=True)
        model.load_state_dict(saved["model"])
        opt.load_state_dict(saved["opt"])
        sched.load_state_dict(saved["sched"])
        state = saved["state"]
        log(f"{name}: resuming at step {state['step']}/{steps}")

    def save() -> None:
        if state_file is None:
            return
        tmp = state_file.with_suffix(".tmp")
        torch.save({"model": model.state_dict(), "opt": opt.state_dict(), "sched": sched.state_dict(),
                    "state": state}, tmp)
        tmp.replace(state_file)

    model.train()
    last_save = last_log = time.perf_counter()
    while state["step"] < steps:
        started = time.perf_counter()
        loss, parts = loss_fn(state["step"])
        if not torch.isfinite(loss):
            raise MovieError(f"{name}: the loss became {loss.item()} at step {state['step']}; lower the learning rate")
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(params, 1.0)
        opt.step()
        sched.step()
        state["step"] += 1
        state["seconds"] += time.perf_counter() - started
        state["history"].append({k: round(v, 6) for k, v in parts.items()})
        now = time.perf_counter()
        if now - last_log > 30 or state["step"] in (1, steps):
            recent = state["history"][-50:]
            means = {k: sum(h[k] for h in recent) / len(recent) for k in recent[0]}
            log(f"{name}: step {state['step']}/{steps} " + " ".join(f"{k} {v:.4f}" for k, v in means.items())
                + f" ({state['seconds'] / state['step']:.3f} s/step)")
            last_log = now
        if now - last_save > checkpoint_seconds and state["step"] < steps:
            save()
            last_save = now
    save()
    model.eval()
    return state


# ------------------------------------------------------------------------------------------ autoencoders


def new_vae() -> AutoencoderKL:
    """A randomly initialised nano SD VAE, configured as build_sd_vae configures it."""
    return AutoencoderKL(
        in_channels=3, out_channels=3, latent_channels=4, scaling_factor=SD_SCALING_FACTOR,
        down_block_types=("DownEncoderBlock2D",) * 4, up_block_types=("UpDecoderBlock2D",) * 4,
        sample_size=512, **VAE_SIZES["nano"],
    )


def new_taesd() -> AutoencoderTiny:
    """A randomly initialised nano TAESD."""
    return AutoencoderTiny(**TAESD_SIZES["nano"])


def _reconstruction(y: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
    return F.l1_loss(y, x) + F.mse_loss(y, x)


def _vae_loss(vae: AutoencoderKL, x: torch.Tensor, g: torch.Generator) -> tuple[torch.Tensor, dict[str, float]]:
    """L1 + MSE of the reconstruction from a posterior sample, plus SD's small KL term."""
    post = vae.encode(x).latent_dist
    noise = torch.randn(post.mean.shape, generator=g).to(post.mean)
    y = vae.decode(post.mean + post.std * noise).sample
    rec = _reconstruction(y, x)
    kl = post.kl().mean() / x[0].numel()
    return rec + KL_WEIGHT * kl, {"rec": rec.item(), "kl": kl.item()}


@torch.no_grad()
def _modes(vae: AutoencoderKL, images: torch.Tensor, device: str) -> torch.Tensor:
    """The posterior modes of `images` (unscaled), in float64 on the CPU."""
    return torch.cat([vae.encode(chunk.to(device)).latent_dist.mode().cpu() for chunk in images.split(64)]).double()


@torch.no_grad()
def rescale_vae(vae: AutoencoderKL, mean: torch.Tensor, std: torch.Tensor) -> None:
    """Reparametrise exactly so that mode x 0.18215 has zero mean and unit std per channel.

    The encoder's quant_conv mean rows become a * (mean - mu), its log-variance biases move by 2 log a,
    and post_quant_conv undoes the map on its input side; decode(encode(x)) is unchanged.
    """
    q, p = vae.quant_conv, vae.post_quant_conv
    mean, std = mean.to(q.weight.device, torch.float64), std.to(q.weight.device, torch.float64)
    a = 1.0 / (SD_SCALING_FACTOR * std)
    c = mean.numel()
    wq, bq = q.weight.double(), q.bias.double()
    wq[:c] *= a[:, None, None, None]
    bq[:c] = a * (bq[:c] - mean)
    bq[c:] += 2 * torch.log(a)
    wp, bp = p.weight.double(), p.bias.double()
    bp += (wp[:, :, 0, 0] @ mean)
    wp /= a[None, :, None, None]
    for module, w, b in ((q, wq, bq), (p, wp, bp)):
        module.weight.copy_(w)
        module.bias.copy_(b)


def _taesd_loss(tae: AutoencoderTiny, x: torch.Tensor, target: torch.Tensor, g: torch.Generator,
                own_fraction: float = 0.25) -> tuple[torch.Tensor, dict[str, float]]:
    """Encoder: MSE to the VAE's scaled latents. Decoder: reconstruct x from those latents (or, sometimes, its own)."""
    latents = tae.encoder(x)
    distill = F.mse_loss(latents, target)
    own = torch.rand((), generator=g).item() < own_fraction
    rec = _reconstruction(tae.decoder(latents.detach() if own else target), x)
    return distill + rec, {"distill": distill.item(), "rec": rec.item()}


@torch.no_grad()
def _pool_latents(teacher: SDVAE, pool: torch.Tensor, device: str) -> torch.Tensor:
    """The VAE's scaled latents of every pool image, as is and flipped: (N, 2, 4, h, w) on the CPU.

    Whole images, encoded once: the VAE's group norms and attention see the whole image, so a crop's latents
    are the window of the whole image's latents, not the latents of the crop on its own."""
    out = []
    for chunk in pool.split(64):
        images = (chunk.permute(0, 3, 1, 2).float() / 127.5 - 1.0).to(device)
        out.append(torch.stack([teacher.encode(images), teacher.encode(images.flip(3))], dim=1).cpu())
    return torch.cat(out)


@torch.no_grad()
def _psnr(encoder, decoder, images: np.ndarray, device: str) -> float:
    """Mean per-image PSNR (dB) of decoder(encoder(x)) on uint8 images, through the project's wrappers."""
    values = []
    for chunk in to_tensor(images).split(16):
        y = decoder.decode(encoder.encode(chunk.to(device))).clamp(-1, 1).cpu()
        mse = ((y - chunk) / 2).pow(2).mean(dim=(1, 2, 3)).clamp_min(1e-10)
        values += (-10 * torch.log10(mse)).tolist()
    return round(float(np.mean(values)), 3)


COLOUR_SHIFT = 0.3  # a global shift of one channel, in [0, 1] units: what a tint edit asks the decoder to write


def _saturation(x: torch.Tensor) -> float:
    """Mean HSV saturation (max - min) / max of [-1, 1] NCHW images (0 where max is 0)."""
    return float(saturation_map(x, floor=0.0).mean())


def saturation_map(y: torch.Tensor, floor: float = 0.05) -> torch.Tensor:
    """Per-pixel HSV-like saturation (max - min) / (max + floor) of [-1, 1] NCHW images (0 where that is 0 / 0),
    differentiable; `floor` keeps near-black pixels from dividing by ~0 while still weighting their colour far above
    a bright pixel's (0: HSV saturation itself)."""
    x = ((y + 1) / 2).clamp(0, 1)
    hi, lo = x.amax(dim=1), x.amin(dim=1)
    return torch.where(hi + floor > 0, (hi - lo) / (hi + floor).clamp_min(1e-12), torch.zeros_like(hi))


def _chroma(x: torch.Tensor) -> float:
    """Mean chroma max - min, in [0, 1] units, of [-1, 1] NCHW images (0 for grey; unlike HSV saturation, not
    inflated by a little colour noise on a near-black pixel)."""
    return float(((x.amax(dim=1) - x.amin(dim=1)) / 2).mean())


def _luma(x: torch.Tensor) -> torch.Tensor:
    """BT.601 luma of NCHW images, N1HW."""
    return (x * torch.from_numpy(procedural.LUMA).to(x).view(1, 3, 1, 1)).sum(dim=1, keepdim=True)


def chroma_error(y: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
    """MSE between the chroma components (each channel minus the luma) of y and x: colour error, luma left out."""
    return F.mse_loss(y - _luma(y), x - _luma(x))


def _tint(after: torch.Tensor, before: torch.Tensor, c: int) -> float:
    """Mean change of channel c minus the mean change of the other two (NCHW)."""
    delta = (after - before).mean(dim=(0, 2, 3))
    return float(delta[c] - delta[[o for o in range(3) if o != c]].mean())


@torch.no_grad()
def colour_fidelity(encoder, decoder, images: np.ndarray, device: str) -> dict[str, float]:
    """How much of a global colour change survives decoder(encoder(x)): the ceiling of every colour edit.

    For each channel c: the images with c raised by COLOUR_SHIFT (clipped) and as they are go through the round
    trip; the realised tint (mean change of c minus the mean change of the other two, output vs output) is
    divided by the input's own (1: carried exactly; 0: lost; < 0: turned into the opposite tint). `grey_saturation`
    and `grey_chroma` are the mean HSV saturation and chroma (max - min) of the round trip of the images' BT.601
    grey version (0: grey stays grey)."""
    def trip(t: torch.Tensor) -> torch.Tensor:
        return decoder.decode(encoder.encode(t.to(device))).clamp(-1, 1).cpu()

    x = to_tensor(images)
    base = trip(x)
    out: dict[str, float] = {}
    for c, name in enumerate(("red", "green", "blue")):
        shifted = x.clone()
        shifted[:, c] = (shifted[:, c] + 2 * COLOUR_SHIFT).clamp(-1, 1)
        out[name] = round(_tint(trip(shifted), base, c) / _tint(shifted, x, c), 3)
    grey = _luma(x).expand_as(x).contiguous()
    grey_trip = trip(grey)
    out["grey_saturation"] = round(_saturation(grey_trip), 3)
    out["grey_chroma"] = round(_chroma(grey_trip), 3)
    return out


def _evaluation_sets(resolution: int, seed: int, count: int, photo_sizes: tuple[int, ...]) -> dict[str, np.ndarray]:
    """Held-out procedural scenes at `resolution`, and scikit-image photos at each of `photo_sizes` (if installed)."""
    sets = {f"procedural_{resolution}": heldout_scenes(count, resolution, seed)}
    for size in photo_sizes:
        real = photos(size)
        if real is not None:
            sets[f"photos_{size}"] = real
    return sets


def _wrappers(vae: AutoencoderKL, tae: AutoencoderTiny) -> dict[str, Any]:
    return {"sd-vae": SDVAE(vae).eval(), "taesd": TAESD(tae).eval()}


def evaluate_autoencoders(vae: AutoencoderKL, tae: AutoencoderTiny, resolution: int, device: str, seed: int = 0,
                          count: int = 64) -> dict[str, dict[str, float]]:
    """PSNR of every encoder/decoder pairing on held-out procedural scenes and scikit-image photos (1x, 2x size)."""
    wrappers = _wrappers(vae, tae)
    return {
        name: {f"{enc}+{dec}": _psnr(wrappers[enc], wrappers[dec], images, device) for enc, dec in COMBOS}
        for name, images in _evaluation_sets(resolution, seed, count, (resolution, 2 * resolution)).items()
    }


def autoencoder_colour(vae: AutoencoderKL, tae: AutoencoderTiny, resolution: int, device: str, seed: int = 0,
                       count: int = 64) -> dict[str, dict[str, dict[str, float]]]:
    """colour_fidelity of the two same-kind pairings on held-out procedural scenes and (if present) photos."""
    wrappers = _wrappers(vae, tae)
    return {name: {f"{k}+{k}": colour_fidelity(w, w, images, device) for k, w in wrappers.items()}
            for name, images in _evaluation_sets(resolution, seed, count, (resolution,)).items()}


def _check_config(ckpt: Path, config: dict[str, Any]) -> None:
    """Create the checkpoint folder, or refuse to resume one made with other settings."""
    path = ckpt / "config.json"
    if path.is_file():
        old = json.loads(path.read_text())
        if old != config:
            changed = sorted(k for k in config if old.get(k) != config[k])
            raise MovieError(
                f"{ckpt} holds an unfinished run with other settings ({', '.join(changed)}); "
                "delete it to start over, or call again with the same settings to resume"
            )
        return
    ckpt.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(config, indent=2) + "\n")


def _load_pool(ckpt: Path, pool_size: int, resolution: int, seed: int, log: Log,
               source: str = "procedural") -> torch.Tensor:
    """The training pool, generated once and kept in the checkpoint folder for a resumed run."""
    path = ckpt / "pool.npy"
    if path.is_file():
        return torch.from_numpy(np.load(path))
    started = time.perf_counter()
    pool = make_pool(pool_size, resolution, seed, source)
    np.save(ckpt / "pool.tmp.npy", pool)
    (ckpt / "pool.tmp.npy").replace(path)
    log(f"image pool ({source}): {pool_size} images at {resolution}x{resolution} in "
        f"{time.perf_counter() - started:.1f} s")
    return torch.from_numpy(pool)


def _cached(path: Path, make: Callable[[], torch.Tensor], what: str, log: Log) -> torch.Tensor:
    """A tensor kept in the checkpoint folder: made once, loaded by a resumed run."""
    if path.is_file():
        return torch.load(path, map_location="cpu", weights_only=True)
    started = time.perf_counter()
    value = make()
    torch.save(value, path.with_suffix(".tmp"))
    path.with_suffix(".tmp").replace(path)
    log(f"{what}: {time.perf_counter() - started:.1f} s")
    return value


def _part_summary(state: dict[str, Any], key: str) -> dict[str, Any]:
    history = state["history"]
    k = max(1, min(50, len(history) // 10))
    return {
        "steps": state["step"], "seconds": round(state["seconds"], 1),
        "s_per_step": round(state["seconds"] / max(1, state["step"]), 4),
        f"{key}_first": round(float(np.mean([h[key] for h in history[:k]])), 5) if history else None,
        f"{key}_last": round(float(np.mean([h[key] for h in history[-k:]])), 5) if history else None,
    }


def train_autoencoders(
    out: Path, *, vae_steps: int, taesd_steps: int, batch_size: int = 32, resolution: int = 64,
    crop: int | None = None, whole_every: int = 4, pool_size: int = 4096, device: str = "cpu", seed: int = 0,
    checkpoint_seconds: float = 120.0, log: Log = print, source: str = "procedural",
) -> dict[str, Any]:
    """Train the nano SD VAE, rescale it, distil the nano TAESD into its latent space; write out/vae and out/taesd.

    Images come from a pool of `pool_size` images at `resolution`; training uses random `crop`-pixel crops of
    them (default: the whole image). When crops are smaller than the images, every `whole_every`-th VAE step
    (0: none) sees whole images instead, as many as make the same number of pixels, so the step costs the same:
    on crops alone the VAE's mid-block self-attention and group norms only ever see the crops' size (one run's
    VAE, trained on 32-px crops alone, reconstructed held-out 32-px crops at 25.2 dB but the whole 64-px scenes
    at 17.6). Progress is checkpointed in out.parent/.<out.name>.ckpt (every `checkpoint_seconds` and after each
    part); calling again with the same settings resumes there, and the folder is removed once out/vae and
    out/taesd are in place. Returns the metrics (PSNR per pairing, latent statistics, timings).
    """
    out = Path(out)
    crop = crop or resolution
    if resolution % 8 or crop % 8 or crop > resolution:
        raise MovieError(f"resolution ({resolution}) and crop ({crop}) must be multiples of 8, crop <= resolution")
    if whole_every < 0:
        raise MovieError(f"whole_every must be >= 0 (0: crops only), not {whole_every}")
    ckpt = out.parent / f".{out.name}.ckpt"
    config = {"vae_steps": vae_steps, "taesd_steps": taesd_steps, "batch_size": batch_size,
              "resolution": resolution, "crop": crop, "pool_size": pool_size, "seed": seed}
    if crop < resolution and whole_every:
        config["whole_every"] = whole_every
    if source != "procedural":  # (a run recorded before sources existed drew the procedural pool)
        config["source"] = source
    _check_config(ckpt, config)
    pool = _load_pool(ckpt, pool_size, resolution, seed, log, source)
    metrics: dict[str, Any] = {"config": config}

    vae = _train_vae(ckpt, pool, config, device, checkpoint_seconds, log, metrics)
    tae = _train_taesd(ckpt, pool, vae, config, device, checkpoint_seconds, log, metrics)

    metrics["psnr"] = evaluate_autoencoders(vae, tae, resolution, device, seed)
    for name, values in metrics["psnr"].items():
        log(f"PSNR {name}: " + ", ".join(f"{k} {v:.2f}" for k, v in values.items()))
    metrics["colour"] = autoencoder_colour(vae, tae, resolution, device, seed)
    for name, values in metrics["colour"].items():
        log(f"colour {name}: " + "; ".join(f"{k} {v}" for k, v in values.items()))
    out.mkdir(parents=True, exist_ok=True)
    for sub in ("vae", "taesd"):  # copies: until both are in place, a rerun finds both parts finished
        tmp = out / f".{sub}.tmp"
        shutil.rmtree(tmp, ignore_errors=True)
        shutil.copytree(ckpt / sub, tmp)
        replace_folder(tmp, out / sub)
    shutil.rmtree(ckpt)
    return metrics


def _finish_part(ckpt: Path, name: str, model, part_metrics: dict[str, Any], final: Path,
                 leftovers: tuple[str, ...]) -> None:
    """Save a finished part into the checkpoint folder (temp folder renamed), with its metrics; drop its work files."""
    tmp = ckpt / f"{name}.tmp"
    shutil.rmtree(tmp, ignore_errors=True)
    model.save_pretrained(tmp, safe_serialization=True)
    (ckpt / f"{name}_metrics.json").write_text(json.dumps(part_metrics, indent=2) + "\n")
    tmp.replace(final)
    for leftover in leftovers:
        (ckpt / leftover).unlink()


def whole_batch(batch_size: int, crop: int, size: int) -> int:
    """How many whole `size`-pixel images hold the pixels of `batch_size` `crop`-pixel crops (at least one)."""
    return max(1, batch_size * crop * crop // (size * size))


def vae_batches(pool: torch.Tensor, loss: Callable[[torch.Tensor, torch.Generator], Any], *, batch_size: int,
                crop: int, whole_every: int, seed: int, device: str = "cpu") -> Callable[[int], Any]:
    """loss(x, g) over the chain's autoencoder batches for a step: `crop`-pixel crops of the pool's images, and every
    `whole_every`-th step (0: never; only when crops are smaller than the images) whole images holding the same
    number of pixels; g is the step's noise generator. Every autoencoder the chain trains draws its batches here."""
    size = pool.shape[1]

    def fn(step: int):
        g = torch.Generator().manual_seed(seed * 7919 + step)
        if whole_every and crop < size and step % whole_every == whole_every - 1:
            index, flips, _ = _draw(step, len(pool), whole_batch(batch_size, crop, size), size, size, seed)
            return loss(_images(pool, index, flips).to(device), g)
        index, flips, offsets = _draw(step, len(pool), batch_size, size, crop, seed)
        return loss(_crop(_images(pool, index, flips), offsets, crop).to(device), g)
    return fn


def _train_vae(ckpt: Path, pool: torch.Tensor, config: dict[str, Any], device: str, checkpoint_seconds: float,
               log: Log, metrics: dict[str, Any]) -> AutoencoderKL:
    """Train (or resume, or reload when finished) the VAE, then rescale it; saved as ckpt/vae."""
    final = ckpt / "vae"
    if (final / "config.json").is_file():
        log("sd-vae: already trained, loading it")
        vae = AutoencoderKL.from_pretrained(final, use_safetensors=True).to(device).eval()
        metrics.update(json.loads((ckpt / "vae_metrics.json").read_text()))
        return vae
    torch.manual_seed(config["seed"])
    vae = new_vae().to(device)
    loss_fn = vae_batches(pool, lambda x, g: _vae_loss(vae, x, g), batch_size=config["batch_size"],
                          crop=config["crop"], whole_every=config.get("whole_every", 0), seed=config["seed"],
                          device=device)
    state = _train("sd-vae", vae, loss_fn, steps=config["vae_steps"], lr=5e-4, state_file=ckpt / "vae_state.pt",
                   checkpoint_seconds=checkpoint_seconds, log=log)
    vae_metrics = _rescale(vae, pool, device, log)
    vae_metrics["vae"] = _part_summary(state, "rec")
    _finish_part(ckpt, "vae", vae, vae_metrics, final, leftovers=("vae_state.pt",))
    metrics.update(vae_metrics)
    return vae


@torch.no_grad()
def _reconstruct_on_cpu(vae: AutoencoderKL, images: torch.Tensor) -> torch.Tensor:
    """decode(encode(x)) by a float32 CPU copy: GPU convolutions may use TF32, too coarse to check exactness."""
    cpu = copy.deepcopy(vae).cpu()
    return cpu.decode(cpu.encode(images).latent_dist.mode()).sample


def _rescale(vae: AutoencoderKL, pool: torch.Tensor, device: str, log: Log) -> dict[str, Any]:
    """Rescale the trained VAE on the pool and check that reconstructions did not change."""
    images = to_tensor(pool.numpy())
    before = _reconstruct_on_cpu(vae, images[:16])
    modes = _modes(vae, images, device)
    std = modes.std(dim=(0, 2, 3))
    rescale_vae(vae, modes.mean(dim=(0, 2, 3)), std)
    change = (_reconstruct_on_cpu(vae, images[:16]) - before).abs().max().item()
    if change > 1e-3:
        raise MovieError(f"rescaling the VAE changed its reconstructions by {change:.2e}")
    scaled = _modes(vae, images, device) * SD_SCALING_FACTOR
    all_std = scaled.std().item()
    log(f"sd-vae: rescaled (raw mode std per channel {[round(s, 3) for s in std.tolist()]}); "
        f"scaled latents now std {all_std:.4f}, reconstruction change {change:.1e}")
    return {
        "latent_std": round(all_std, 4),
        "latent_channel_mean": [round(v, 4) for v in scaled.mean(dim=(0, 2, 3)).tolist()],
        "latent_channel_std": [round(v, 4) for v in scaled.std(dim=(0, 2, 3)).tolist()],
        "raw_mode_std": [round(v, 4) for v in std.tolist()],
        "rescale_max_change": change,
    }


def _train_taesd(ckpt: Path, pool: torch.Tensor, vae: AutoencoderKL, config: dict[str, Any], device: str,
                 checkpoint_seconds: float, log: Log, metrics: dict[str, Any]) -> AutoencoderTiny:
    """Distil TAESD into the rescaled VAE's latent space (or resume, or reload when finished); saved as ckpt/taesd."""
    final = ckpt / "taesd"
    if (final / "config.json").is_file():
        log("taesd: already trained, loading it")
        metrics.update(json.loads((ckpt / "taesd_metrics.json").read_text()))
        return AutoencoderTiny.from_pretrained(final, use_safetensors=True).to(device).eval()
    torch.manual_seed(config["seed"] + 1)
    tae = new_taesd().to(device)
    teacher = SDVAE(vae).eval().requires_grad_(False)
    seed, bs, crop = config["seed"], config["batch_size"], config["crop"]
    probe = to_tensor(heldout_scenes(16, config["resolution"], seed)).to(device)
    with torch.no_grad():
        probe_target = teacher.encode(probe)
        distill_init = F.mse_loss(tae.encoder(probe), probe_target).item()
    targets = _cached(ckpt / "taesd_targets.pt", lambda: _pool_latents(teacher, pool, device),
                      "taesd: VAE latents", log)

    def loss_fn(step: int):
        g = torch.Generator().manual_seed(seed * 104729 + step)
        index, flips, offsets = _draw(step, len(pool), bs, pool.shape[1], crop, seed + 1)
        x = _crop(_images(pool, index, flips), offsets, crop).to(device)
        target = _crop(targets[index, flips.long()], offsets, crop // 8, scale=8).to(device)
        return _taesd_loss(tae, x, target, g)

    state = _train("taesd", tae, loss_fn, steps=config["taesd_steps"], lr=1e-3, state_file=ckpt / "taesd_state.pt",
                   checkpoint_seconds=checkpoint_seconds, log=log)
    with torch.no_grad():
        distill = F.mse_loss(tae.encoder(probe), probe_target).item()
    taesd_metrics = {"taesd": _part_summary(state, "distill") | {"distill_heldout_init": round(distill_init, 5),
                                                                 "distill_heldout": round(distill, 5)}}
    _finish_part(ckpt, "taesd", tae, taesd_metrics, final, leftovers=("taesd_state.pt", "taesd_targets.pt"))
    metrics.update(taesd_metrics)
    return tae


def _finetune_decoder(tae: AutoencoderTiny, steps: int, lr: float, loss_at: Callable[[int], torch.Tensor],
                      what: str, log: Log) -> list[float]:
    """AdamW on the TAESD decoder's parameters, `steps` steps of loss_at(step); leaves it in eval mode."""
    opt = torch.optim.AdamW(tae.decoder.parameters(), lr=lr)
    losses: list[float] = []
    for step in range(steps):
        loss = loss_at(step)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        losses.append(loss.item())
        if (step + 1) % max(1, steps // 10) == 0:
            log(f"{what}: step {step + 1}/{steps} loss {np.mean(losses[-20:]):.4f}")
    tae.eval()
    return losses


def _write_taesd(tae: AutoencoderTiny, folder: Path) -> None:
    """Replace folder/taesd with `tae`, atomically."""
    tmp = folder / ".taesd.tmp"
    shutil.rmtree(tmp, ignore_errors=True)
    tae.save_pretrained(tmp, safe_serialization=True)
    replace_folder(tmp, folder / "taesd")


def finetune_taesd_decoder(folder: Path, *, steps: int, batch_size: int = 32, resolution: int = 64,
                           pool_size: int = 1024, max_noise: float = 0.6, lr: float = 2e-4, device: str = "cpu",
                           seed: int = 0, log: Log = print, source: str = "procedural") -> dict[str, Any]:
    """Make the TAESD decoder in folder/taesd robust to latents a denoiser writes, off the encoders' manifold.

    The first training taught it to decode clean VAE latents. A denoiser's output latents sit a little off that
    manifold, where the nano TAESD decoder was measured 2.4 dB worse than the SD VAE decoder on the same
    Mobile-Pix2Pix latents. Here, per example: half the time the clean latents z of a pool image with the image
    as target (as before); otherwise z + sigma * noise, sigma ~ U(0, max_noise), with the SD VAE decoder's output
    as target (distillation, as TAESD itself was made). The encoder is untouched, so every model trained on its
    latents stays valid. Writes folder/taesd in place (atomically) and returns the metrics.
    """
    folder = Path(folder)
    vae = AutoencoderKL.from_pretrained(folder / "vae", use_safetensors=True).to(device).eval().requires_grad_(False)
    tae = AutoencoderTiny.from_pretrained(folder / "taesd", use_safetensors=True).to(device)
    teacher = SDVAE(vae).eval().requires_grad_(False)
    tae.encoder.requires_grad_(False)
    torch.manual_seed(seed + 7)
    pool = to_tensor(make_pool(pool_size, resolution, seed + 3, source))
    with torch.no_grad():
        latents = torch.cat([teacher.encode(chunk.to(device)).cpu() for chunk in pool.split(64)])
    probe = to_tensor(heldout_scenes(16, resolution, seed)).to(device)

    def probe_gap() -> float:
        """MSE between TAESD's and the VAE's decodings of perturbed held-out latents (sigma = max_noise / 2)."""
        with torch.no_grad():
            z = teacher.encode(probe)
            z = z + 0.5 * max_noise * torch.randn(z.shape, generator=torch.Generator().manual_seed(1)).to(z)
            return F.mse_loss(tae.decoder(z).clamp(-1, 1), teacher.decode(z)).item()

    before = probe_gap()

    def loss_at(step: int) -> torch.Tensor:
        g = torch.Generator().manual_seed(seed * 7919 + step)
        index = torch.randint(0, pool_size, (batch_size,), generator=g)
        x, z = pool[index].to(device), latents[index].to(device)
        noisy = torch.rand(batch_size, generator=g) < 0.5
        sigma = torch.rand(batch_size, generator=g) * max_noise * noisy
        z = z + sigma.view(-1, 1, 1, 1).to(z) * torch.randn(z.shape, generator=g).to(z)
        with torch.no_grad():
            target = torch.where(noisy.view(-1, 1, 1, 1).to(device), teacher.decode(z), x)
        return _reconstruction(tae.decoder(z), target)

    start = time.perf_counter()
    losses = _finetune_decoder(tae, steps, lr, loss_at, "taesd decoder", log)
    after = probe_gap()
    _write_taesd(tae, folder)
    metrics = {"steps": steps, "seconds": round(time.perf_counter() - start, 1), "loss_first": round(losses[0], 5),
               "loss_last": round(float(np.mean(losses[-20:])), 5), "vae_gap_perturbed_start": round(before, 5),
               "vae_gap_perturbed": round(after, 5),
               "psnr": evaluate_autoencoders(vae, tae, resolution, device, seed)}
    log(f"taesd decoder: gap to the VAE decoder on perturbed latents {before:.4f} -> {after:.4f}")
    return metrics


GREY_FRACTION = 0.3  # colour finetune: examples shown as their grey version (a grayscale edit's target)
CHROMA_WEIGHT = 3.0  # colour finetune: extra weight on the chroma error, beside the RGB reconstruction loss


def multiscale_pool(count: int, resolution: int, seed: int = 0, source: str = "procedural") -> np.ndarray:
    """`count` pool images at `resolution`: half rendered at it, half random crops of images rendered at twice it,
    so the content is also seen at the scale of frames larger than the training crops."""
    small = make_pool(count - count // 2, resolution, seed, source)
    big = make_pool(count // 2, 2 * resolution, seed + 1, source)
    rng = np.random.default_rng([seed, 2 * resolution])
    offsets = rng.integers(0, resolution + 1, size=(len(big), 2))
    crops = [image[i:i + resolution, j:j + resolution] for image, (i, j) in zip(big, offsets)]
    return np.concatenate([small, np.stack(crops)]) if crops else small


def finetune_taesd_decoder_colour(folder: Path, *, steps: int, batch_size: int = 32, resolution: int = 64,
                                  pool_size: int = 1024, lr: float = 2e-4, device: str = "cpu", seed: int = 0,
                                  grey_fraction: float = GREY_FRACTION, grey_noise: float = 0.0,
                                  saturation_weight: float = 0.0, tint_fraction: float = 0.0,
                                  probe_size: int | None = None,
                                  log: Log = print, source: str = "procedural") -> dict[str, Any]:
    """Teach the TAESD decoder the colours of the latents the TAESD encoder writes, grey included.

    Every Mobile stage encodes its training targets with the TAESD encoder, so it learns to write that encoder's
    latents; the decoder, though, learned colours from the VAE's latents, which the distilled encoder only
    approximates. Measured on the first family with these autoencoders: the TAESD pair returned exactly grey
    photos with a low-frequency orange cast (+0.05 red; mean chroma 0.096 at 128 px), so no denoiser could write
    a grey photo. Per batch: latents from the TAESD or the VAE encoder in turn (the hybrids keep working), each
    example grey with probability GREY_FRACTION, loss RGB reconstruction + CHROMA_WEIGHT x chroma_error; the pool
    is multiscale_pool. The encoders are untouched, so every model trained on their latents stays valid. Writes
    folder/taesd in place (atomically) and returns the metrics."""
    folder = Path(folder)
    vae = AutoencoderKL.from_pretrained(folder / "vae", use_safetensors=True).to(device).eval().requires_grad_(False)
    tae = AutoencoderTiny.from_pretrained(folder / "taesd", use_safetensors=True).to(device)
    tae.encoder.requires_grad_(False)
    wrappers = _wrappers(vae, tae)
    pool = to_tensor(multiscale_pool(pool_size, resolution, seed + 5, source))
    grey = _luma(pool).expand_as(pool).contiguous()
    with torch.no_grad():  # (colour, grey) latents of the pool from each encoder
        latents = {name: [torch.cat([w.encode(chunk.to(device)).cpu() for chunk in images.split(64)])
                          for images in (pool, grey)] for name, w in wrappers.items()}
    probe_size = probe_size or 2 * resolution
    real = photos(probe_size)
    probe = heldout_scenes(32, resolution, seed) if real is None else real

    def grey_chroma() -> dict[str, float]:
        fidelity = colour_fidelity(wrappers["taesd"], wrappers["taesd"], probe, device)
        return {k: fidelity[k] for k in ("grey_chroma", "grey_saturation")}

    before = grey_chroma()

    def loss_at(step: int) -> torch.Tensor:
        g = torch.Generator().manual_seed(seed * 7919 + step)
        index = torch.randint(0, len(pool), (batch_size,), generator=g)
        as_grey = (torch.rand(batch_size, generator=g) < grey_fraction).view(-1, 1, 1, 1)
        encoder = "taesd" if step % 2 == 0 else "sd-vae"
        colour, mono = latents[encoder]
        x = torch.where(as_grey, grey[index], pool[index]).to(device)
        z = torch.where(as_grey, mono[index], colour[index]).to(device)
        if tint_fraction > 0:  # colour examples shifted along one channel, as a tint edit shifts them
            tinted = ~as_grey.flatten() & (torch.rand(batch_size, generator=g) < tint_fraction)
            if tinted.any():
                channel = torch.randint(0, 3, (batch_size,), generator=g)
                amount = 2 * COLOUR_SHIFT * torch.rand(batch_size, generator=g) * tinted
                shift = F.one_hot(channel, 3).float().mul(amount.view(-1, 1)).view(-1, 3, 1, 1).to(x)
                x = (x + shift).clamp(-1, 1)
                with torch.no_grad():
                    z = torch.where(tinted.view(-1, 1, 1, 1).to(device), wrappers[encoder].encode(x), z)
        # grey examples whose latents are pushed off the manifold (as a denoiser's are): only their colour is
        # asked for (none), not their detail
        noisy = torch.zeros(batch_size, dtype=torch.bool)
        if grey_noise > 0:
            noisy = as_grey.flatten() & (torch.rand(batch_size, generator=g) < 0.5)
            sigma = torch.rand(batch_size, generator=g) * grey_noise * noisy
            z = z + sigma.view(-1, 1, 1, 1).to(z) * torch.randn(z.shape, generator=g).to(z)
        y = tae.decoder(z)
        clean, grey_rows = (~noisy).to(device), as_grey.flatten().to(device)
        loss = CHROMA_WEIGHT * chroma_error(y, x)
        if clean.any():
            loss = loss + _reconstruction(y[clean], x[clean])
        if saturation_weight > 0 and grey_rows.any():
            loss = loss + saturation_weight * saturation_map(y[grey_rows]).mean()
        return loss

    start = time.perf_counter()
    losses = _finetune_decoder(tae, steps, lr, loss_at, "taesd decoder colour", log)
    after = grey_chroma()
    _write_taesd(tae, folder)
    log(f"taesd decoder colour: grey round trip chroma {before['grey_chroma']:.3f} -> {after['grey_chroma']:.3f},"
        f" saturation {before['grey_saturation']:.3f} -> {after['grey_saturation']:.3f}")
    return {"steps": steps, "seconds": round(time.perf_counter() - start, 1), "loss_first": round(losses[0], 5),
            "loss_last": round(float(np.mean(losses[-20:])), 5),
            "probe": f"photos_{probe_size}" if real is not None else f"procedural_{resolution}",
            "grey_chroma_start": before["grey_chroma"], "grey_chroma": after["grey_chroma"],
            "grey_saturation_start": before["grey_saturation"], "grey_saturation": after["grey_saturation"],
            "psnr": evaluate_autoencoders(vae, tae, resolution, device, seed),
            "colour": autoencoder_colour(vae, tae, resolution, device, seed)}


GREY_PASS = {"grey_fraction": 0.4, "grey_noise": 0.5, "saturation_weight": 1.0, "tint_fraction": 0.3}


def finetune_taesd_decoder_grey(folder: Path, *, steps: int, batch_size: int = 8, resolution: int = 128,
                                pool_size: int = 1024, lr: float = 2e-4, device: str = "cpu", seed: int = 0,
                                log: Log = print, source: str = "procedural") -> dict[str, Any]:
    """finetune_taesd_decoder_colour again at `resolution` (frames larger than the 64-px training crops), grey-heavy
    (GREY_PASS): 40% of the examples grey, half of those with their latents perturbed (sigma ~ U(0, 0.5)) and asked
    only to stay grey, plus the grey examples' saturation (saturation_map) as a loss; 30% of the colour examples
    shifted along one channel (re-encoded), so tints are kept while grey is learnt.

    Measured on the shipped family at 128 px (600 steps, batch 8; the scikit-image photos): an exactly grey photo's
    round trip went from HSV saturation 0.153 / chroma 0.045 to 0.028 / 0.007, and the 1-step model's grayscale
    edit of the photos from 0.158 / 0.068 to 0.060 / 0.027. Variants, same measure (1-step edit): no perturbed
    latents 0.131 / 0.061 (the denoiser's latents are off the manifold); no tint examples and half grey
    0.079 / 0.037; sigma up to 1.0 0.082 / 0.035 with the red tint edit down from +0.145 to +0.112."""
    metrics = finetune_taesd_decoder_colour(folder, steps=steps, batch_size=batch_size, resolution=resolution,
                                            pool_size=pool_size, lr=lr, device=device, seed=seed,
                                            probe_size=resolution, log=log, source=source, **GREY_PASS)
    return metrics | {"resolution": resolution, "batch_size": batch_size, **GREY_PASS}


# ------------------------------------------------------------------------------------------ tokenizer

_WORD = re.compile(r"'s|'t|'re|'ve|'m|'ll|'d|[^\W\d_]+|\d|(?:[^\s\w]|_)+")  # CLIP's pre-tokenizer split
NO_EDIT = "no-edit"  # the extra class of the empty prompt: CFG's unconditional text
BPE_MIN_FREQUENCY = 2  # a word seen once gets no token of its own: it is spelled with shared pieces
BPE_DROPOUT = 0.1  # training only: merges skipped at random, so words are also seen as their pieces
WEIGHT_DECAY = 0.05  # these three regularise the tiny classifier; over seeds, held-out phrasings did a little better
LABEL_SMOOTHING = 0.1
ATTENTION_DROPOUT = 0.1


def _words(texts: Iterable[str]) -> Counter:
    """Word frequencies as byte-level symbol tuples, the last symbol marked end-of-word as CLIP does."""
    byte_chars = _bytes_to_unicode()
    words: Counter = Counter()
    for text in texts:
        for word in _WORD.findall(" ".join(text.lower().split())):
            chars = [byte_chars[b] for b in word.encode("utf-8")]
            words[tuple(chars[:-1] + [chars[-1] + "</w>"])] += 1
    return words


def _merge(word: tuple[str, ...], pair: tuple[str, str]) -> tuple[str, ...]:
    out, i = [], 0
    while i < len(word):
        if i + 1 < len(word) and (word[i], word[i + 1]) == pair:
            out.append(word[i] + word[i + 1])
            i += 2
        else:
            out.append(word[i])
            i += 1
    return tuple(out)


def learn_bpe(texts: Iterable[str], min_frequency: int = BPE_MIN_FREQUENCY,
              max_merges: int = 10_000) -> list[tuple[str, str]]:
    """BPE merges learned from `texts`, most frequent pair first, while a pair occurs `min_frequency` times.

    With 2, words used more than once become single tokens and the rest split into shared pieces
    ("brighter" -> "bright" "er</w>"), which a held-out "brightly" shares too.
    """
    words = _words(texts)
    merges: list[tuple[str, str]] = []
    while len(merges) < max_merges:
        pairs: Counter = Counter()
        for word, count in words.items():
            for pair in pairwise(word):
                pairs[pair] += count
        best = min(pairs, key=lambda p: (-pairs[p], p), default=None)  # ties broken alphabetically: deterministic
        if best is None or pairs[best] < min_frequency:
            break
        merges.append(best)
        words = Counter({_merge(word, best): count for word, count in words.items()})
    return merges


def write_bpe_tokenizer(folder: Path, merges: list[tuple[str, str]], max_length: int = CLIP_MAX_LENGTH) -> Path:
    """Writes vocab.json, merges.txt and tokenizer_config.json.

    vocab.json lists the bytes, their end-of-word forms, the specials, then the merged tokens.
    """
    vocab = byte_vocab()
    for a, b in merges:
        vocab.setdefault(a + b, len(vocab))
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "vocab.json").write_text(json.dumps(vocab, ensure_ascii=False))
    (folder / "merges.txt").write_text("#version: 0.2\n" + "".join(f"{a} {b}\n" for a, b in merges))
    (folder / "tokenizer_config.json").write_text(json.dumps({
        "tokenizer_class": "CLIPTokenizer", "model_max_length": max_length,
        "bos_token": "<|startoftext|>", "eos_token": "<|endoftext|>",
        "unk_token": "<|endoftext|>", "pad_token": "<|endoftext|>",
    }))
    return folder


def training_phrasings() -> dict[str, tuple[str, ...]]:
    """Each edit's training phrasings (the held-out one excluded), plus the empty prompt as the no-edit class."""
    return {name: procedural.phrasings(name, "train") for name in procedural.EDIT_NAMES} | {NO_EDIT: ("",)}


# ------------------------------------------------------------------------------------------ text encoder


def generic_words(pool: dict[str, tuple[str, ...]], classes: int = 3) -> frozenset[str]:
    """Words that `classes` or more edits use ("make", "it", "look", "like", ...): they do not tell edits apart."""
    users: dict[str, set[str]] = {}
    for name, texts in pool.items():
        for text in texts:
            for word in text.split():
                users.setdefault(word, set()).add(name)
    return frozenset(word for word, names in users.items() if len(names) >= classes)


def _frame_length(words: list[str], generic: frozenset[str]) -> int:
    """How many leading words are generic: the phrasing's frame ("make it look like a" | "poster")."""
    n = 0
    while n < len(words) and words[n] in generic:
        n += 1
    return n


def _augment(rng: np.random.Generator, name: str, pool: dict[str, tuple[str, ...]], generic: frozenset[str]) -> str:
    """A training prompt for edit `name`: a phrasing, its frame sometimes swapped for another phrasing's,
    sometimes joined with a second phrasing, with words dropped (generic ones more often)."""
    choices = pool[name]
    text = choices[int(rng.integers(len(choices)))]
    if name == NO_EDIT:
        return text
    if rng.random() < 0.2:
        text = f"{text} and {choices[int(rng.integers(len(choices)))]}"
    words = text.split()
    if rng.random() < 0.4:
        names = [n for n in pool if n != NO_EDIT]
        others = pool[names[int(rng.integers(len(names)))]]
        other = others[int(rng.integers(len(others)))].split()
        words = other[:_frame_length(other, generic)] + words[_frame_length(words, generic):]
    kept = [w for w in words if rng.random() > (0.3 if w in generic else 0.1)]
    content = [w for w in words if w not in generic]
    if content and not any(w not in generic for w in kept):  # never drop every word that names the edit
        kept.append(content[int(rng.integers(len(content)))])
    return " ".join(kept) + ("." if rng.random() < 0.2 else "")


class _Heads(torch.nn.Module):
    """Edit classifiers on the pooled (end-of-text) state and on the mean of all 77 token states."""

    def __init__(self, hidden: int, classes: int):
        super().__init__()
        self.pooled = torch.nn.Linear(hidden, classes)
        self.tokens = torch.nn.Linear(hidden, classes)

    def forward(self, out) -> tuple[torch.Tensor, torch.Tensor]:
        return self.pooled(out.pooler_output), self.tokens(out.last_hidden_state.mean(dim=1))


def _ids(tokenizer, texts: list[str], device: str) -> torch.Tensor:
    return tokenizer(texts, padding="max_length", max_length=tokenizer.model_max_length, truncation=True,
                     return_tensors="pt").input_ids.to(device)


@torch.no_grad()
def _accuracy(model, heads: _Heads, tokenizer, texts: list[str], labels: list[int], device: str) -> dict[str, float]:
    """Classification accuracy of both heads on `texts`."""
    pooled, tokens = heads(model(_ids(tokenizer, texts, device)))
    target = torch.tensor(labels, device=pooled.device)
    return {
        "pooled": round((pooled.argmax(-1) == target).float().mean().item(), 4),
        "tokens": round((tokens.argmax(-1) == target).float().mean().item(), 4),
    }


def train_text_encoder(
    out: Path, *, steps: int, batch_size: int = 64, device: str = "cpu", seed: int = 0, log: Log = print,
) -> dict[str, Any]:
    """Learn the BPE tokenizer and pretrain the nano CLIP text encoder; write out/tokenizer and out/text_encoder.

    The encoder learns to name the edit (12 classes + the empty prompt) from its end-of-text state and from
    the mean of all its token states (the UNet cross-attends to all 77), on augmented training phrasings.
    Returns the held-out phrasing accuracy (and its predictions), training accuracy and the loss curve ends.
    """
    from transformers import CLIPTextModel, CLIPTokenizer

    from movie_plugins.denoisers._pix2pix import text_config

    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    pool = training_phrasings()
    names = list(pool)
    generic = generic_words(pool)
    merges = learn_bpe(text for texts in pool.values() for text in texts)
    tmp_tok = write_bpe_tokenizer(out / f".tokenizer.tmp-{seed}", merges)
    try:
        tokenizer = CLIPTokenizer.from_pretrained(tmp_tok)
    finally:
        shutil.rmtree(tmp_tok, ignore_errors=True)
    log(f"tokenizer: {len(merges)} merges, {len(tokenizer)} tokens")

    subword = copy.deepcopy(tokenizer)  # BPE-dropout: words sometimes split into their pieces ("bright" "er</w>")
    subword.backend_tokenizer.model.dropout = BPE_DROPOUT
    torch.manual_seed(seed)
    config = text_config("nano", tokenizer)
    config.attention_dropout = ATTENTION_DROPOUT
    model = CLIPTextModel(config).to(device)
    heads = _Heads(model.config.hidden_size, len(names)).to(device)
    rng = np.random.default_rng(seed)

    def loss_fn(step: int):
        labels = rng.integers(len(names), size=batch_size)
        texts = [_augment(rng, names[i], pool, generic) for i in labels]
        pooled, tokens = heads(model(_ids(subword, texts, device)))
        target = torch.from_numpy(labels).to(device)
        loss = F.cross_entropy(pooled, target, label_smoothing=LABEL_SMOOTHING) \
            + F.cross_entropy(tokens, target, label_smoothing=LABEL_SMOOTHING)
        return loss, {"loss": loss.item()}

    both = torch.nn.ModuleDict({"model": model, "heads": heads})
    state = _train("text-encoder", both, loss_fn, steps=steps, lr=1e-3, state_file=None,  # seconds: no checkpoints
                   checkpoint_seconds=float("inf"), log=log, weight_decay=WEIGHT_DECAY)

    heldout = [procedural.EDITS[name].held_out for name in procedural.EDIT_NAMES]
    labels = list(range(len(procedural.EDIT_NAMES)))
    train_texts = [t for name in names for t in pool[name]]
    train_labels = [names.index(name) for name in names for _ in pool[name]]
    with torch.no_grad():
        predicted = heads(model(_ids(tokenizer, heldout, device)))[0].argmax(-1).tolist()
    metrics = {
        "tokens": len(tokenizer), "merges": len(merges),
        "heldout_accuracy": _accuracy(model, heads, tokenizer, heldout, labels, device),
        "train_accuracy": _accuracy(model, heads, tokenizer, train_texts, train_labels, device),
        "heldout_predictions": {text: names[p] for text, p in zip(heldout, predicted)},
        "train": _part_summary(state, "loss"),
    }
    log(f"text encoder: held-out accuracy {metrics['heldout_accuracy']}, train {metrics['train_accuracy']}")
    _write_text(out, tokenizer, merges, model.cpu())
    return metrics


def _write_text(out: Path, tokenizer, merges: list[tuple[str, str]], model) -> None:
    """out/tokenizer (tokenizer.json beside vocab.json and merges.txt) and out/text_encoder, each atomically."""

    def save_tokenizer(folder: Path) -> None:
        tokenizer.save_pretrained(folder)
        write_bpe_tokenizer(folder, merges)

    for sub, save in (("tokenizer", save_tokenizer),
                      ("text_encoder", lambda p: model.save_pretrained(p, safe_serialization=True))):
        tmp = out / f".{sub}.tmp"
        shutil.rmtree(tmp, ignore_errors=True)
        save(tmp)
        replace_folder(tmp, out / sub)
