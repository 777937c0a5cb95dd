"""md-vae: MobileDiffusion's autoencoder (Zhao et al., Sec. 3.5): f = 8, c = 8 latent channels, a lightweight decoder.

The paper trains a KL VAE with f = 8, c = 8 (L2 + KL + perceptual + adversarial losses), then a lightweight decoder
"by pruning model width and depth", trained with the encoder frozen and without the KL term. It gives neither
decoder's shape; ours (fields of `MDVAEConfig`):

* encoder: SD's VAE encoder (diffusers `Encoder`: 128/256/512/512 channels, 2 ResNets a level, mid-block attention),
  its output conv widened to 2 x 8 moments; `encode` takes the posterior mode times `scaling_factor` (1 / the
  latents' standard deviation, measured on the training images by `movie_plugins.nano.md_vae_train`);
* lightweight decoder: half the width at every level (64/128/256/256), one ResNet a level fewer (2 instead of SD's
  3 per up block), no mid-block attention. At 512 x 512 that is about a sixth of the SD decoder's FLOPs (the paper
  reports its pruned decoder 3x faster than SD's on an iPhone; width and depth are config fields here);
* the full-width decoder (`full_decoder_config`) exists only while the encoder trains (stage 1) and is not shipped.

Latent space tag "md8": the composer pairs md-vae only with denoisers that declare that space (the MobileDiffusion
denoisers build for it: 8 latent channels; the editing ones take 16 UNet inputs).
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import attrs
import torch
from diffusers.models.autoencoders.vae import Decoder, Encoder
from torch import nn

from movie_core.components import Autoencoder, BuildContext
from movie_core.errors import MovieError
from movie_core.weights import component_folder, load_checked, read_config

LATENT_SPACE = "md8"
CLASS_NAME = "MDVAE"
SUBFOLDER = "md_vae"
WEIGHTS = "diffusion_pytorch_model.safetensors"


@attrs.frozen(kw_only=True)
class MDVAEConfig:
    """Every shape of md-vae (see the module docstring for the choices)."""

    latent_channels: int = 8  # c = 8 (Sec. 3.5)
    encoder_channels: tuple[int, ...] = attrs.field(default=(128, 256, 512, 512), converter=tuple)
    encoder_layers: int = 2
    decoder_channels: tuple[int, ...] = attrs.field(default=(64, 128, 256, 256), converter=tuple)  # width pruned
    decoder_layers: int = 1  # depth pruned: decoder_layers + 1 ResNets per up block (SD: 3)
    decoder_attention: bool = False  # the light decoder drops the mid-block self-attention
    norm_groups: int = 32
    decoder_norm_groups: int = 32
    scaling_factor: float = 1.0  # latents = posterior mode x scaling_factor (set after training: 1 / std)

    def __attrs_post_init__(self) -> None:
        if len(self.encoder_channels) != len(self.decoder_channels):
            raise ValueError("encoder_channels and decoder_channels need one entry per level (f = 2^(levels - 1))")

    @property
    def downscale(self) -> int:
        return 2 ** (len(self.encoder_channels) - 1)

    def to_dict(self) -> dict[str, Any]:
        return attrs.asdict(self)


SIZES: dict[str, dict[str, Any]] = {
    "full": {},
    # nano: the nano SD VAE's encoder (32/64/64/64, 1 ResNet a level, 8 groups: see _sd1.VAE_SIZES), half its width
    # in the decoder
    "nano": dict(encoder_channels=(32, 64, 64, 64), encoder_layers=1, decoder_channels=(16, 32, 32, 32),
                 decoder_layers=1, norm_groups=8, decoder_norm_groups=8),
}


def make_encoder(cfg: MDVAEConfig) -> nn.Module:
    return Encoder(in_channels=3, out_channels=cfg.latent_channels, down_block_types=("DownEncoderBlock2D",)
                   * len(cfg.encoder_channels), block_out_channels=cfg.encoder_channels,
                   layers_per_block=cfg.encoder_layers, norm_num_groups=cfg.norm_groups, act_fn="silu", double_z=True)


def make_decoder(cfg: MDVAEConfig, full: bool = False) -> nn.Module:
    """The lightweight decoder, or with full=True the encoder-sized one (SD's decoder shape) used in stage 1."""
    channels = cfg.encoder_channels if full else cfg.decoder_channels
    return Decoder(in_channels=cfg.latent_channels, out_channels=3,
                   up_block_types=("UpDecoderBlock2D",) * len(channels),
                   block_out_channels=channels, layers_per_block=cfg.encoder_layers if full else cfg.decoder_layers,
                   norm_num_groups=cfg.norm_groups if full else cfg.decoder_norm_groups, act_fn="silu",
                   mid_block_add_attention=True if full else cfg.decoder_attention)


class MDVAE(Autoencoder):
    """Encoder (posterior mode x scaling_factor) and the lightweight decoder, in the md8 latent space."""

    latent_space = LATENT_SPACE
    subfolder = SUBFOLDER

    def __init__(self, config: MDVAEConfig):
        super().__init__()
        self.config = config
        self.latent_channels = config.latent_channels
        self.downscale = config.downscale
        c = config.latent_channels
        self.encoder = make_encoder(config)
        self.quant_conv = nn.Conv2d(2 * c, 2 * c, 1)
        self.decoder = make_decoder(config)
        self.post_quant_conv = nn.Conv2d(c, c, 1)

    @property
    def scale(self) -> float:
        return self.config.scaling_factor

    def set_scaling_factor(self, value: float) -> None:
        self.config = attrs.evolve(self.config, scaling_factor=float(value))

    def moments(self, images: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Posterior mean and log-variance (unscaled), as the KL stage trains them."""
        mean, logvar = self.quant_conv(self.encoder(images)).chunk(2, dim=1)
        return mean, logvar.clamp(-30.0, 20.0)

    def encode(self, images: torch.Tensor) -> torch.Tensor:
        return self.moments(images)[0] * self.scale

    def decode_unscaled(self, z: torch.Tensor, decoder: nn.Module | None = None) -> torch.Tensor:
        return (decoder or self.decoder)(self.post_quant_conv(z))

    def decode(self, latents: torch.Tensor) -> torch.Tensor:
        return self.decode_unscaled(latents / self.scale).clamp(-1, 1)

    def encoder_modules(self) -> list[nn.Module]:
        """What the decoder stage keeps frozen."""
        return [self.encoder, self.quant_conv]

    def decoder_modules(self) -> list[nn.Module]:
        return [self.decoder, self.post_quant_conv]

    def save_pretrained(self, root: str | Path) -> None:
        from safetensors.torch import save_file

        folder = Path(root) / self.subfolder
        folder.mkdir(parents=True, exist_ok=True)
        (folder / "config.json").write_text(json.dumps({"_class_name": CLASS_NAME, **self.config.to_dict()},
                                                       indent=1) + "\n")
        save_file({k: v.detach().contiguous() for k, v in self.state_dict().items()}, folder / WEIGHTS)


def config_for(size: str) -> MDVAEConfig:
    return MDVAEConfig(**SIZES[size])


def load_md_vae(folder: Path) -> MDVAE:
    from safetensors.torch import load_file

    config = read_config(folder / "config.json")
    if config.get("_class_name") != CLASS_NAME:
        raise MovieError(f"{folder}/config.json is not an {CLASS_NAME} (class {config.get('_class_name')!r})")
    vae = MDVAE(MDVAEConfig(**{k: v for k, v in config.items() if not k.startswith("_")}))
    vae.load_state_dict(load_file(folder / WEIGHTS))
    return vae


def build_md_vae(ctx: BuildContext, config) -> MDVAE:
    """md-vae at ctx.size (random init), or loaded from <model>/md_vae."""
    if ctx.weights is not None:
        folder = component_folder(Path(ctx.weights), SUBFOLDER)
        if folder is None or not (folder / WEIGHTS).is_file():
            raise MovieError(f"{ctx.weights} has no md-vae weights ({SUBFOLDER}/{WEIGHTS})")
        vae = load_checked(folder, lambda: load_md_vae(folder))
    else:
        torch.manual_seed(ctx.seed + 2)
        with ctx.torch_device:
            vae = MDVAE(config_for(ctx.size))
    if not ctx.meta:
        vae = vae.to(device=ctx.torch_device, dtype=ctx.torch_dtype)
    return vae.eval().requires_grad_(False)
