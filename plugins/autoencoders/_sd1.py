"""The SD 1.x autoencoders: the KL VAE (AutoencoderKL) and TAESD (AutoencoderTiny), one latent space."""

from __future__ import annotations

import contextlib
import json
import logging
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import torch
from diffusers import AutoencoderKL, AutoencoderTiny

from movie_core.components import Autoencoder, BuildContext
from movie_core.errors import MovieError
from movie_core.weights import check_component, component_folder, load_checked, low_memory_kw, read_config

SD_SCALING_FACTOR = 0.18215

VAE_SIZES = {
    "full": dict(block_out_channels=(128, 256, 512, 512), layers_per_block=2, norm_num_groups=32),
    # 8 groups: 4-8 channels per group, as SD's 128-512 channels in 32 groups. With 32 groups (one channel per
    # group) every GroupNorm removes each channel's image-wide mean and the VAE cannot carry a global colour cast:
    # a nano VAE trained that way turned +0.3 red into +0.09 red +0.12 blue (a tint edit's output, lost).
    "nano": dict(block_out_channels=(32, 64, 64, 64), layers_per_block=1, norm_num_groups=8),
}
# taesd-lite: TAESD without its full-resolution blocks (the encoder's first, the decoder's last), where ~3/4 of its
# convolutions run; (encoder blocks, decoder blocks) per size, the channels as TAESD's
TAESD_LITE_BLOCKS = {"full": ((0, 3, 3, 3), (3, 3, 3, 0)), "nano": ((0, 1, 1, 1), (1, 1, 1, 0))}
TAESD_CONFIG_ONLY = "block_out_channels"  # what AutoencoderTiny writes into its config but does not take back
TAESD_SIZES = {
    "full": dict(),
    "nano": dict(
        encoder_block_out_channels=(32, 32, 32, 32), decoder_block_out_channels=(32, 32, 32, 32),
        num_encoder_blocks=(1, 1, 1, 1), num_decoder_blocks=(1, 1, 1, 1),
    ),
}


def _config_class(folder: Path) -> str | None:
    cfg = folder / "config.json"
    if not cfg.is_file():
        return None
    return read_config(cfg).get("_class_name")


class SDVAE(Autoencoder):
    """Stable Diffusion's KL autoencoder; encode takes the posterior mode, scaled by the VAE's scaling_factor."""

    latent_space = "sd1"
    subfolder = "vae"

    def __init__(self, vae: AutoencoderKL):
        super().__init__()
        self.vae = vae
        # the VAE's own config (vae/config.json scaling_factor), not a constant: SD-1.5 has 0.18215, others differ
        self.scale = float(getattr(vae.config, "scaling_factor", None) or SD_SCALING_FACTOR)

    def encode(self, images: torch.Tensor) -> torch.Tensor:
        return self.vae.encode(images).latent_dist.mode() * self.scale

    def decode(self, latents: torch.Tensor) -> torch.Tensor:
        return self.vae.decode(latents / self.scale).sample

    def save_pretrained(self, root: str | Path) -> None:
        self.vae.save_pretrained(Path(root) / self.subfolder, safe_serialization=True)


class TAESD(Autoencoder):
    """Tiny AutoEncoder for SD: deterministic, lives directly in SD's scaled latent space."""

    latent_space = "sd1"
    subfolder = "taesd"

    def __init__(self, tae: AutoencoderTiny):
        super().__init__()
        self.tae = tae

    def encode(self, images: torch.Tensor) -> torch.Tensor:
        return self.tae.encoder(_nhwc(self.tae.encoder, images)).contiguous()

    def decode(self, latents: torch.Tensor) -> torch.Tensor:
        return self.tae.decoder(_nhwc(self.tae.decoder, latents)).clamp(-1, 1).contiguous()

    def save_pretrained(self, root: str | Path) -> None:
        folder = Path(root) / self.subfolder
        self.tae.save_pretrained(folder, safe_serialization=True)
        # AutoencoderTiny registers `block_out_channels` (a copy of decoder_block_out_channels, for pipelines that
        # read it) in the config it saves but does not take it back: every load would warn about it
        config = read_config(folder / "config.json")
        if config.pop(TAESD_CONFIG_ONLY, None) is not None:
            (folder / "config.json").write_text(json.dumps(config, indent=2, sort_keys=True) + "\n")


def _nhwc(net: torch.nn.Module, x: torch.Tensor) -> torch.Tensor:
    """TAESD is convolutions and ReLUs only; on CPU, oneDNN runs them 1.5-1.7x faster in channels-last layout (the
    nano encoder 82 -> 49 ms, decoder 91 -> 60 ms per 256x256 frame on this project's 2-core machine), so eager CPU
    calls run in that layout and hand back an ordinary contiguous tensor. Same values up to float rounding; the layout
    is not part of a traced or exported graph, so exports are untouched."""
    if x.device.type != "cpu" or torch.compiler.is_compiling() or torch.jit.is_tracing() or x.dim() != 4:
        return x
    weight = next(net.parameters(), None)
    if weight is not None and weight.dim() == 4 and not weight.is_contiguous(memory_format=torch.channels_last):
        net.to(memory_format=torch.channels_last)  # once (and again after something moved it back)
    return x.contiguous(memory_format=torch.channels_last)


class TAESDLite(TAESD):
    """TAESD without its full-resolution blocks (TAESD_LITE_BLOCKS): AutoencoderTiny as well, its own folder."""

    subfolder = "taesd-lite"


def _find(root: Path, names: tuple[str, ...], class_name: str, what: str) -> Path:
    for name in names:
        folder = component_folder(root, name)
        if folder is not None and _config_class(folder) == class_name:
            return folder
    raise MovieError(f"{root} has no {what} weights ({' or '.join(n + '/' for n in names)} with a {class_name} config)")


def build_sd_vae(ctx: BuildContext, config) -> SDVAE:
    """AutoencoderKL with SD-1.5 shapes (or nano), random or loaded from <model>/vae."""
    if ctx.weights is not None:
        folder = _find(Path(ctx.weights), ("vae",), "AutoencoderKL", "SD VAE")
        kw = check_component(folder, "diffusion_pytorch_model", ctx.variant)
        vae = load_checked(folder, lambda: AutoencoderKL.from_pretrained(folder, **kw, **low_memory_kw()))
    else:
        torch.manual_seed(ctx.seed)
        with ctx.torch_device:
            vae = AutoencoderKL(
                in_channels=3, out_channels=3, latent_channels=4, scaling_factor=SD_SCALING_FACTOR,
                down_block_types=("DownEncoderBlock2D",) * 4, up_block_types=("UpDecoderBlock2D",) * 4,
                sample_size=512, **VAE_SIZES[ctx.size],
            )
    return _finish(SDVAE(vae), ctx)


def _tiny(ctx: BuildContext, folders: tuple[str, ...], what: str, sizes: dict[str, Any]) -> AutoencoderTiny:
    """An AutoencoderTiny loaded from the first of <model>/<folders> that holds one, or random with `sizes`."""
    if ctx.weights is not None:
        folder = _find(Path(ctx.weights), folders, "AutoencoderTiny", what)
        kw = check_component(folder, "diffusion_pytorch_model", ctx.variant)
        with _config_copy_accepted(folder):
            return load_checked(folder, lambda: AutoencoderTiny.from_pretrained(folder, **kw, **low_memory_kw()))
    torch.manual_seed(ctx.seed + 1)
    with ctx.torch_device:
        return AutoencoderTiny(**sizes)


def build_taesd(ctx: BuildContext, config) -> TAESD:
    """AutoencoderTiny (TAESD shapes or nano), random or loaded from <model>/taesd (or a TAESD <model>/vae)."""
    return _finish(TAESD(_tiny(ctx, ("taesd", "vae"), "TAESD", TAESD_SIZES[ctx.size])), ctx)


def build_taesd_lite(ctx: BuildContext, config) -> TAESDLite:
    """AutoencoderTiny without TAESD's full-resolution blocks, random or loaded from <model>/taesd-lite (the nano
    one: movie_plugins.nano.taesd_lite distils it from the nano TAESD)."""
    encoder_blocks, decoder_blocks = TAESD_LITE_BLOCKS[ctx.size]
    sizes = TAESD_SIZES[ctx.size] | dict(num_encoder_blocks=encoder_blocks, num_decoder_blocks=decoder_blocks)
    return _finish(TAESDLite(_tiny(ctx, (TAESDLite.subfolder,), "taesd-lite", sizes)), ctx)


@contextlib.contextmanager
def _config_copy_accepted(folder: Path) -> Iterator[None]:
    """Loading a TAESD folder that diffusers saved (its config holds AutoencoderTiny's own `block_out_channels` copy,
    see TAESD.save_pretrained): diffusers' line about that key alone is dropped; any other unexpected key still
    warns."""
    value = read_config(folder / "config.json").get(TAESD_CONFIG_ONLY)
    if value is None:
        yield
        return
    expected = f"The config attributes {{'{TAESD_CONFIG_ONLY}': {value!r}}} were passed to AutoencoderTiny,"

    def keep(record: logging.LogRecord) -> bool:
        return not record.getMessage().startswith(expected)

    logger = logging.getLogger("diffusers.configuration_utils")
    logger.addFilter(keep)
    try:
        yield
    finally:
        logger.removeFilter(keep)


def _finish(module: Autoencoder, ctx: BuildContext) -> Autoencoder:
    if not ctx.meta:
        module = module.to(device=ctx.torch_device, dtype=ctx.torch_dtype)
    return module.eval().requires_grad_(False)
