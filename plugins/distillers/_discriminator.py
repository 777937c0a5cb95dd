"""The adversarial stage's discriminator (paper Sec. 3.4, Appendix B "Spatial Head Architecture", Fig. 11).

D = frozen feature extractor + trainable spatial heads:

* FeatureExtractor: a deep copy of the teacher UNet's encoder arm (time embedding, guidance embedding when the
  teacher has one, conv_in, down blocks, mid block), frozen. It sees the noised latent next to the source-image
  latents (8 channels, as the UNet does), its own timestep t' and the prompt through cross-attention, and
  returns the output of every down block and of the mid block.
* SpatialHead, one per feature map: conv 3x3 -> GroupNorm -> FiLM (scale, shift) from the conditioning vector
  -> SiLU -> conv 1x1 to one logit per position, plus a projection-discriminator term: the inner product of
  the head's features with a linear projection of the mean-pooled prompt embedding (c_T^emb).
  The conditioning vector is an MLP over the sinusoidal embeddings of t', s_I and s_T (t^emb, s_I^emb, s_T^emb).
  The FiLM and prompt projections start at zero, so every head starts unconditioned.

D(x) per example = the mean over heads of each head's spatially averaged logit map (`score`); the losses use the
per-position maps (hinge averaged over positions, then over heads).
"""

from __future__ import annotations

import copy
import math

import torch
from diffusers.models.embeddings import get_timestep_embedding
from torch import nn

GUIDANCE_SCALE = 100.0  # s -> sinusoid of s * 100, as the denoisers' guidance embedding


class FeatureExtractor(nn.Module):
    """Frozen copy of a diffusers UNet2DConditionModel's encoder arm; returns one feature map per block."""

    def __init__(self, unet: nn.Module) -> None:
        super().__init__()
        unet = getattr(unet, "module", unet)
        self.time_proj = copy.deepcopy(unet.time_proj)
        self.time_embedding = copy.deepcopy(unet.time_embedding)
        self.class_embedding = copy.deepcopy(unet.class_embedding)
        self.concat = bool(unet.config.class_embeddings_concat)
        self.conv_in = copy.deepcopy(unet.conv_in)
        self.down_blocks = copy.deepcopy(unet.down_blocks)
        self.mid_block = copy.deepcopy(unet.mid_block)
        block_out = list(unet.config.block_out_channels)
        self.channels = block_out + [block_out[-1]]
        self.requires_grad_(False)
        self.eval()

    def train(self, mode: bool = True) -> FeatureExtractor:
        return super().train(False)  # frozen: always in eval mode

    def forward(self, sample: torch.Tensor, timesteps: torch.Tensor, text_emb: torch.Tensor,
                class_labels: torch.Tensor | None = None) -> list[torch.Tensor]:
        t_emb = self.time_proj(timesteps.reshape(-1).expand(sample.shape[0])).to(sample.dtype)
        emb = self.time_embedding(t_emb)
        if self.class_embedding is not None:  # the teacher's guidance injection: concatenated ('resnet') or added
            class_emb = self.class_embedding(class_labels).to(emb.dtype)
            emb = torch.cat([emb, class_emb], dim=-1) if self.concat else emb + class_emb
        h = self.conv_in(sample)
        feats = []
        for block in self.down_blocks:
            if getattr(block, "has_cross_attention", False):
                h, _ = block(hidden_states=h, temb=emb, encoder_hidden_states=text_emb)
            else:
                h, _ = block(hidden_states=h, temb=emb)
            feats.append(h)
        if getattr(self.mid_block, "has_cross_attention", False):
            h = self.mid_block(h, emb, encoder_hidden_states=text_emb)
        else:
            h = self.mid_block(h, emb)
        feats.append(h)
        return feats


class MDFeatureExtractor(nn.Module):
    """The same for a MobileDiffusion UNet: a frozen copy of its encoder arm (time and guidance embeddings, conv_in,
    the down levels); one feature map per level (the innermost level is its bottleneck: it has no mid block)."""

    def __init__(self, unet: nn.Module) -> None:
        super().__init__()
        unet = copy.deepcopy(getattr(unet, "module", unet))
        for name in ("up_blocks", "up_attn", "upsamplers"):  # the decoder arm is not read
            setattr(unet, name, nn.ModuleList())
        self.unet = unet
        self.channels = list(unet.config.channels)
        self.requires_grad_(False)
        self.eval()

    def train(self, mode: bool = True) -> MDFeatureExtractor:
        return super().train(False)

    def forward(self, sample: torch.Tensor, timesteps: torch.Tensor, text_emb: torch.Tensor,
                class_labels: torch.Tensor | None = None) -> list[torch.Tensor]:
        return self.unet.down_features(sample, timesteps, text_emb, guidance=class_labels)


def feature_extractor(unet: nn.Module) -> nn.Module:
    """The frozen encoder-arm features of the teacher's UNet, whichever family it is."""
    inner = getattr(unet, "module", unet)
    return MDFeatureExtractor(inner) if hasattr(inner, "down_features") else FeatureExtractor(inner)


class SpatialHead(nn.Module):
    """One trainable head: conv3x3 -> GroupNorm -> FiLM(t, s_I, s_T) -> SiLU -> conv1x1, + prompt projection."""

    def __init__(self, in_channels: int, hidden: int, cond_dim: int, text_dim: int) -> None:
        super().__init__()
        self.hidden = hidden
        self.conv = nn.Conv2d(in_channels, hidden, 3, padding=1)
        self.norm = nn.GroupNorm(math.gcd(32, hidden), hidden)
        self.film = nn.Linear(cond_dim, 2 * hidden)
        self.act = nn.SiLU()
        self.out = nn.Conv2d(hidden, 1, 1)
        self.text_proj = nn.Linear(text_dim, hidden)
        for layer in (self.film, self.text_proj):
            nn.init.zeros_(layer.weight)
            nn.init.zeros_(layer.bias)

    def forward(self, feat: torch.Tensor, cond: torch.Tensor, text: torch.Tensor) -> torch.Tensor:
        h = self.norm(self.conv(feat))
        scale, shift = self.film(cond)[:, :, None, None].chunk(2, dim=1)
        h = self.act(h * (1 + scale) + shift)
        proj = (h * self.text_proj(text)[:, :, None, None]).sum(dim=1, keepdim=True) / math.sqrt(self.hidden)
        return self.out(h) + proj


class Discriminator(nn.Module):
    """Frozen teacher-encoder features + conditioned spatial heads. forward -> list of (B, 1, h, w) logit maps."""

    def __init__(self, teacher_unet: nn.Module, text_dim: int, hidden: int = 128, embed_dim: int = 128) -> None:
        super().__init__()
        self.features = feature_extractor(teacher_unet)
        self.embed_dim = embed_dim
        cond_dim = 2 * embed_dim
        self.cond_mlp = nn.Sequential(nn.Linear(3 * embed_dim, cond_dim), nn.SiLU(), nn.Linear(cond_dim, cond_dim))
        self.heads = nn.ModuleList(SpatialHead(c, hidden, cond_dim, text_dim) for c in self.features.channels)

    def conditioning(self, timesteps: torch.Tensor, s_i: torch.Tensor, s_t: torch.Tensor, batch: int) -> torch.Tensor:
        parts = [
            get_timestep_embedding(v.reshape(-1).float().expand(batch), self.embed_dim, flip_sin_to_cos=True,
                                   downscale_freq_shift=0)
            for v in (timesteps, s_i * GUIDANCE_SCALE, s_t * GUIDANCE_SCALE)
        ]
        return self.cond_mlp(torch.cat(parts, dim=1))

    def forward(self, sample: torch.Tensor, image_cond: torch.Tensor, timesteps: torch.Tensor, text_emb: torch.Tensor,
                s_i: torch.Tensor, s_t: torch.Tensor, class_labels: torch.Tensor | None = None) -> list[torch.Tensor]:
        """sample: noised latents; image_cond: source latents as the UNet takes them (unscaled)."""
        n = sample.shape[0]
        feats = self.features(torch.cat([sample, image_cond], dim=1), timesteps, text_emb, class_labels)
        cond = self.conditioning(timesteps, s_i, s_t, n).to(sample.dtype)
        text = text_emb.mean(dim=1).to(sample.dtype)
        return [head(f, cond, text) for head, f in zip(self.heads, feats)]

    def trainable_parameters(self) -> list[nn.Parameter]:
        return [p for p in self.parameters() if p.requires_grad]


def score(maps: list[torch.Tensor]) -> torch.Tensor:
    """D(x) per example: spatial mean of each head's logits, averaged over heads."""
    return torch.stack([m.flatten(1).mean(dim=1) for m in maps]).mean(dim=0)


def hinge_d_loss(real: list[torch.Tensor], fake: list[torch.Tensor]) -> torch.Tensor:
    """E[max(0, 1 - D(real))] + E[max(0, 1 + D(fake))] per position, averaged over heads."""
    losses = [torch.relu(1 - r).mean() + torch.relu(1 + f).mean() for r, f in zip(real, fake)]
    return torch.stack(losses).mean()


def hinge_g_loss(fake: list[torch.Tensor]) -> torch.Tensor:
    """-E[D(fake)] per position, averaged over heads (the hinge GAN's generator loss)."""
    return -torch.stack([f.mean() for f in fake]).mean()


def discriminator_health(real: torch.Tensor, fake: torch.Tensor) -> dict[str, float]:
    """How well a discriminator (any GAN-type distiller's) separates real from fake this step, from its per-example
    scores D(x) (hinge: real > 0 > fake).

    d_acc_real / d_acc_fake: the share of real examples scored above 0 and of fake ones below 0 (ties count half);
    0.5 each is chance. d_real / d_fake: the mean scores."""

    def share(x: torch.Tensor) -> float:
        return float(((x > 0).float() + 0.5 * (x == 0).float()).mean())

    return {"d_acc_real": share(real), "d_acc_fake": share(-fake), "d_real": float(real.float().mean()),
            "d_fake": float(fake.float().mean())}
