"""The MobileDiffusion UNet (Zhao et al., MobileDiffusion, Sec. 3.2-3.4, Fig. 2, Table 6) in plain torch.

Three resolution levels (320, 640, 1024 channels; MD-Lite 896 innermost) and no separate middle block: the
paper merges the innermost down stack, the bottleneck and the innermost up stack into one module (Sec. 3.4),
which Table 6 lists as Down-3 (2 blocks) and Up-3 (3 blocks). Skips run as in SD's UNet: the input conv, every
block and every downsampler push one, each up block pops one, so an up level has one block more than its down
level (Down-1 1 / Up-1 2, Down-2 1 / Up-2 2, Down-3 2 / Up-3 3). That gives Table 1's 11 conv blocks and
15 SA + 18 CA layers.

Every choice is a field of `MDConfig`; where the paper is silent the comment at the field says what was chosen
and why. `full` and `nano` sizes; `relu` attention is an option (the paper fine-tunes softmax into relu for
mobile NPUs); all operators are convolutions, linear layers, group/layer norms, sigmoid, matmuls and resizes.
"""

from __future__ import annotations

import math
from typing import Any

import attrs
import torch
import torch.nn.functional as F
from torch import nn


@attrs.frozen(kw_only=True)
class Level:
    """One resolution level of one stack: how many conv blocks, which kind, and the transformer after each."""

    blocks: int
    conv: str = attrs.field(validator=attrs.validators.in_(("full", "separable")))
    self_attention: int = 0  # SA layers per transformer (0: cross-attention-only layers)
    cross_attention: int = 0  # CA layers per transformer (0 and SA 0: no transformer)


def _levels(value: Any) -> tuple[Level, ...]:
    return tuple(v if isinstance(v, Level) else Level(**v) for v in value)


@attrs.frozen(kw_only=True)
class MDConfig:
    """Every architectural choice of the MobileDiffusion UNet."""

    in_channels: int = 4  # 8 as an editing backbone: noisy latents + the source image's latents (InstructPix2Pix)
    # MoViE's guidance embedding: sinusoids of (s_I, s_T) -> MLP added to the time embedding (zero-initialised)
    guidance_embed: bool = False
    out_channels: int = 4
    channels: tuple[int, ...] = attrs.field(default=(320, 640, 1024), converter=tuple)
    # Table 6, outermost level first. The transformer after a conv block has max(SA, CA) layers; a layer is
    # (SA) + CA + gated FF, like SD's BasicTransformerBlock with the self-attention optional (Fig. 2).
    down: tuple[Level, ...] = attrs.field(
        default=(Level(blocks=1, conv="full"), Level(blocks=1, conv="full", cross_attention=1),
                 Level(blocks=2, conv="separable", self_attention=3, cross_attention=3)),
        converter=_levels,
    )
    up: tuple[Level, ...] = attrs.field(
        default=(Level(blocks=2, conv="full"), Level(blocks=2, conv="full", cross_attention=1),
                 Level(blocks=3, conv="separable", self_attention=3, cross_attention=3)),
        converter=_levels,
    )
    cross_attention_dim: int = 768  # CLIP-ViT/L14 text encoder (Sec. 3)
    # Heads: the paper gives none. 64-wide heads (SD-2 / SD-XL style) rather than SD-1.5's 8 heads at every
    # level; parameters and matmul FLOPs do not depend on it.
    head_dim: int = 64
    ff_mult: int = 3  # "trimming the expansion ratio to 3" (Sec. 3.2)
    ff_activation: str = attrs.field(default="swish", validator=attrs.validators.in_(("swish", "gelu")))
    share_self_kv: bool = True  # W_K = W_V in self-attention (Sec. 3.2); cross-attention keeps both
    attention: str = attrs.field(default="softmax", validator=attrs.validators.in_(("softmax", "relu")))
    # Separable block (Fig. 2, "ConvNeXt-like, 3x3"): depthwise kxk -> GroupNorm -> (+ time) -> 1x1 to
    # expansion * out -> swish -> 1x1 to out, plus the shortcut. ConvNeXt's inverted bottleneck is 4 wide.
    separable_kernel: int = 3
    separable_expansion: int = 4
    # Resamplers: a strided 3x3 conv down, nearest x2 + 3x3 conv up, as in SD; at a separable level the
    # conv is separable too ("all the convolutional layers ... except the outermost level", Sec. 3.3).
    separable_resample: bool = True
    time_embed_mult: int = 4  # time embedding width = 4 x channels[0], as SD
    norm_groups: int = 32
    norm_eps: float = 1e-5
    flip_sin_to_cos: bool = True
    freq_shift: int = 0

    def __attrs_post_init__(self) -> None:
        if not (len(self.channels) == len(self.down) == len(self.up)):
            raise ValueError("channels, down and up need one entry per resolution level")
        if any(c % self.norm_groups or c % self.head_dim for c in self.channels):
            raise ValueError("every level's channels must divide by norm_groups and head_dim")

    def to_dict(self) -> dict[str, Any]:
        return attrs.asdict(self, recurse=True)


SIZES: dict[str, dict[str, Any]] = {
    "full": {},
    "nano": dict(channels=(32, 64, 64), cross_attention_dim=64, head_dim=16, norm_groups=8,
                 down=(Level(blocks=1, conv="full"), Level(blocks=1, conv="full", cross_attention=1),
                       Level(blocks=2, conv="separable", self_attention=1, cross_attention=1)),
                 up=(Level(blocks=2, conv="full"), Level(blocks=2, conv="full", cross_attention=1),
                     Level(blocks=3, conv="separable", self_attention=1, cross_attention=1))),
}
LITE = dict(channels=(320, 640, 896),
            up=(Level(blocks=2, conv="full"), Level(blocks=2, conv="full", cross_attention=1),
                Level(blocks=3, conv="separable", self_attention=2, cross_attention=2)))


def config_for(variant: str, size: str) -> MDConfig:
    """`mobile-diffusion` or `mobile-diffusion-lite` at `full` or `nano` size (nano lite: nano with the Up-3
    stack one SA layer lighter is not possible at 1, so nano lite narrows the innermost level instead)."""
    kw = dict(SIZES[size])
    if variant.endswith("lite"):
        if size == "full":
            kw.update(LITE)
        else:
            kw["channels"] = (32, 64, 48)
    return MDConfig(**kw)


def timestep_features(t: torch.Tensor, dim: int, flip_sin_to_cos: bool = True, shift: float = 0) -> torch.Tensor:
    """Sinusoidal timestep features (B,) -> (B, dim), the convention of SD's UNet."""
    half = dim // 2
    freqs = torch.exp(-math.log(10000) * torch.arange(half, dtype=torch.float32, device=t.device) / (half - shift))
    args = t.float()[:, None] * freqs[None]
    emb = torch.cat([torch.sin(args), torch.cos(args)], dim=-1)
    if flip_sin_to_cos:
        emb = torch.cat([emb[:, half:], emb[:, :half]], dim=-1)
    return emb


class FullResBlock(nn.Module):
    """SD's residual block: GN, swish, 3x3; + time; GN, swish, 3x3; 1x1 shortcut when the width changes."""

    def __init__(self, cin: int, cout: int, temb: int, cfg: MDConfig):
        super().__init__()
        self.norm1 = nn.GroupNorm(cfg.norm_groups, cin, eps=cfg.norm_eps)
        self.conv1 = nn.Conv2d(cin, cout, 3, padding=1)
        self.time = nn.Linear(temb, cout)
        self.norm2 = nn.GroupNorm(cfg.norm_groups, cout, eps=cfg.norm_eps)
        self.conv2 = nn.Conv2d(cout, cout, 3, padding=1)
        self.shortcut = nn.Conv2d(cin, cout, 1) if cin != cout else nn.Identity()

    def forward(self, x: torch.Tensor, temb: torch.Tensor) -> torch.Tensor:
        h = self.conv1(F.silu(self.norm1(x)))
        h = h + self.time(F.silu(temb))[:, :, None, None]
        h = self.conv2(F.silu(self.norm2(h)))
        return self.shortcut(x) + h


class SeparableBlock(nn.Module):
    """Fig. 2's separable conv block (ConvNeXt-like with a 3x3 depthwise kernel), time added after the norm.

    A width change (the concatenated skip of an up block) is a 1x1 projection first, then the block runs at
    the output width with an identity residual, as ConvNeXt changes width in separate layers; this keeps the
    wide concatenation out of the inverted bottleneck (the paper does not say; it lands the UNet at 383M
    parameters against the paper's 386M, where expanding from the concatenation gives 395M)."""

    def __init__(self, cin: int, cout: int, temb: int, cfg: MDConfig):
        super().__init__()
        k = cfg.separable_kernel
        self.proj_in = nn.Conv2d(cin, cout, 1) if cin != cout else nn.Identity()
        self.depthwise = nn.Conv2d(cout, cout, k, padding=k // 2, groups=cout)
        self.norm = nn.GroupNorm(cfg.norm_groups, cout, eps=cfg.norm_eps)
        self.time = nn.Linear(temb, cout)
        self.expand = nn.Conv2d(cout, cfg.separable_expansion * cout, 1)
        self.project = nn.Conv2d(cfg.separable_expansion * cout, cout, 1)

    def forward(self, x: torch.Tensor, temb: torch.Tensor) -> torch.Tensor:
        x = self.proj_in(x)
        h = self.norm(self.depthwise(x)) + self.time(F.silu(temb))[:, :, None, None]
        return x + self.project(F.silu(self.expand(h)))


class SeparableConv(nn.Module):
    """Depthwise kxk then pointwise 1x1: a drop-in for a kxk conv (used by the resamplers of separable levels)."""

    def __init__(self, cin: int, cout: int, k: int, stride: int = 1):
        super().__init__()
        self.depthwise = nn.Conv2d(cin, cin, k, stride=stride, padding=k // 2, groups=cin)
        self.pointwise = nn.Conv2d(cin, cout, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.pointwise(self.depthwise(x))


class Attention(nn.Module):
    """Multi-head attention; self-attention may share one projection for keys and values (W_K = W_V)."""

    def __init__(self, dim: int, context_dim: int | None, cfg: MDConfig):
        super().__init__()
        self.heads = dim // cfg.head_dim
        self.relu = cfg.attention == "relu"
        kv_in = context_dim or dim
        self.to_q = nn.Linear(dim, dim, bias=False)
        self.shared_kv = context_dim is None and cfg.share_self_kv
        self.to_k = nn.Linear(kv_in, dim, bias=False)
        self.to_v = None if self.shared_kv else nn.Linear(kv_in, dim, bias=False)
        self.to_out = nn.Linear(dim, dim)
        self.kv_hook: Any = None  # set by the denoiser on self-attention layers: (k, v) -> (k, v)
        self.name = ""

    def forward(self, x: torch.Tensor, context: torch.Tensor | None = None) -> torch.Tensor:
        src = x if context is None else context
        q = self.to_q(x)
        k = self.to_k(src)
        v = k if self.to_v is None else self.to_v(src)
        if self.kv_hook is not None:
            k, v = self.kv_hook(self.name, k, v)
        b, n, d = q.shape
        q, k, v = (t.reshape(b, -1, self.heads, d // self.heads).transpose(1, 2) for t in (q, k, v))
        if self.relu:
            # relu(QK^T / sqrt(d)) / L_k: Wortsman et al.'s relu attention (the paper's ref. [57]), whose
            # division by the sequence length keeps the output's scale near softmax's
            w = F.relu(q @ k.transpose(-1, -2) * (q.shape[-1] ** -0.5)) / k.shape[2]
            out = w @ v
        else:
            out = F.scaled_dot_product_attention(q, k, v)
        return self.to_out(out.transpose(1, 2).reshape(b, n, d))


class GatedFeedForward(nn.Module):
    """GLU feed-forward: (x W1) * act(x W2), expansion ff_mult, swish (or gelu) on the gate."""

    def __init__(self, dim: int, cfg: MDConfig):
        super().__init__()
        inner = cfg.ff_mult * dim
        self.proj_in = nn.Linear(dim, 2 * inner)
        self.proj_out = nn.Linear(inner, dim)
        self.act = F.silu if cfg.ff_activation == "swish" else F.gelu

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h, gate = self.proj_in(x).chunk(2, dim=-1)
        return self.proj_out(h * self.act(gate))


class TransformerLayer(nn.Module):
    """(LN, self-attention) + LN, cross-attention + LN, gated FF, each residual."""

    def __init__(self, dim: int, self_attention: bool, cfg: MDConfig):
        super().__init__()
        self.norm_sa = nn.LayerNorm(dim) if self_attention else None
        self.sa = Attention(dim, None, cfg) if self_attention else None
        self.norm_ca = nn.LayerNorm(dim)
        self.ca = Attention(dim, cfg.cross_attention_dim, cfg)
        self.norm_ff = nn.LayerNorm(dim)
        self.ff = GatedFeedForward(dim, cfg)

    def forward(self, x: torch.Tensor, context: torch.Tensor) -> torch.Tensor:
        if self.sa is not None and self.norm_sa is not None:
            x = x + self.sa(self.norm_sa(x))
        x = x + self.ca(self.norm_ca(x), context)
        return x + self.ff(self.norm_ff(x))


class Transformer(nn.Module):
    """GroupNorm, linear in, layers, linear out, residual over the whole stack (SD's Transformer2DModel)."""

    def __init__(self, dim: int, level: Level, cfg: MDConfig):
        super().__init__()
        n = max(level.self_attention, level.cross_attention)
        self.norm = nn.GroupNorm(cfg.norm_groups, dim, eps=1e-6)
        self.proj_in = nn.Linear(dim, dim)
        self.layers = nn.ModuleList(TransformerLayer(dim, i < level.self_attention, cfg) for i in range(n))
        self.proj_out = nn.Linear(dim, dim)

    def forward(self, x: torch.Tensor, context: torch.Tensor) -> torch.Tensor:
        b, c, h, w = x.shape
        t = self.proj_in(self.norm(x).reshape(b, c, h * w).transpose(1, 2))
        for layer in self.layers:
            t = layer(t, context)
        return x + self.proj_out(t).transpose(1, 2).reshape(b, c, h, w)


def _conv_block(kind: str, cin: int, cout: int, temb: int, cfg: MDConfig) -> nn.Module:
    return (SeparableBlock if kind == "separable" else FullResBlock)(cin, cout, temb, cfg)


def _has_transformer(level: Level) -> bool:
    return level.self_attention > 0 or level.cross_attention > 0


class MobileDiffusionUNet(nn.Module):
    """(sample, timestep or time features, text embeddings) -> noise prediction (the MobileDiffusion UNet)."""

    def __init__(self, config: MDConfig):
        super().__init__()
        self.config = config
        cfg, ch = config, config.channels
        temb = cfg.time_embed_mult * ch[0]
        self.time_embed = nn.Sequential(nn.Linear(ch[0], temb), nn.SiLU(), nn.Linear(temb, temb))
        self.guidance_embed = None
        if cfg.guidance_embed:
            self.guidance_embed = nn.Sequential(nn.Linear(2 * ch[0], temb), nn.SiLU(), nn.Linear(temb, temb))
            nn.init.zeros_(self.guidance_embed[2].weight)
            nn.init.zeros_(self.guidance_embed[2].bias)
        self.conv_in = nn.Conv2d(cfg.in_channels, ch[0], 3, padding=1)
        self.down_blocks = nn.ModuleList()
        self.down_attn = nn.ModuleList()
        self.downsamplers = nn.ModuleList()
        skips = [ch[0]]
        cin = ch[0]
        for i, level in enumerate(cfg.down):
            blocks, attns = nn.ModuleList(), nn.ModuleList()
            for _ in range(level.blocks):
                blocks.append(_conv_block(level.conv, cin, ch[i], temb, cfg))
                attns.append(Transformer(ch[i], level, cfg) if _has_transformer(level) else nn.Identity())
                cin = ch[i]
                skips.append(cin)
            self.down_blocks.append(blocks)
            self.down_attn.append(attns)
            if i < len(ch) - 1:
                sep = level.conv == "separable" and cfg.separable_resample
                self.downsamplers.append(SeparableConv(cin, cin, 3, 2) if sep else nn.Conv2d(cin, cin, 3, 2, 1))
                skips.append(cin)
        self.up_blocks = nn.ModuleList()
        self.up_attn = nn.ModuleList()
        self.upsamplers = nn.ModuleList()
        for i in reversed(range(len(ch))):
            level = cfg.up[i]
            blocks, attns = nn.ModuleList(), nn.ModuleList()
            for _ in range(level.blocks):
                blocks.append(_conv_block(level.conv, cin + skips.pop(), ch[i], temb, cfg))
                attns.append(Transformer(ch[i], level, cfg) if _has_transformer(level) else nn.Identity())
                cin = ch[i]
            self.up_blocks.append(blocks)
            self.up_attn.append(attns)
            if i > 0:
                sep = level.conv == "separable" and cfg.separable_resample
                self.upsamplers.append(SeparableConv(cin, cin, 3) if sep else nn.Conv2d(cin, cin, 3, padding=1))
        if skips:
            raise ValueError(f"the up stack leaves {len(skips)} skip(s) unused: give each up level one block more "
                             "than its down level")
        self.norm_out = nn.GroupNorm(cfg.norm_groups, ch[0], eps=cfg.norm_eps)
        self.conv_out = nn.Conv2d(ch[0], cfg.out_channels, 3, padding=1)
        for name, attn in self.self_attention_layers():
            attn.name = name

    def self_attention_layers(self) -> list[tuple[str, Attention]]:
        """(name, module) of every self-attention layer, in forward order."""
        return [(name, m) for name, m in self.named_modules() if isinstance(m, Attention) and name.endswith(".sa")]

    def set_attention(self, kind: str) -> None:
        """Switch every attention layer to softmax or relu weights (the paper fine-tunes one into the other)."""
        if kind not in ("softmax", "relu"):
            raise ValueError(f"attention must be softmax or relu, got {kind!r}")
        self.config = attrs.evolve(self.config, attention=kind)
        for m in self.modules():
            if isinstance(m, Attention):
                m.relu = kind == "relu"

    def time_proj(self, t: torch.Tensor) -> torch.Tensor:
        """Timesteps (B,) -> the sinusoidal features the network's time embedding takes."""
        cfg = self.config
        return timestep_features(t, cfg.channels[0], cfg.flip_sin_to_cos, cfg.freq_shift)

    def _embedding(self, sample: torch.Tensor, timestep: torch.Tensor, time_features: bool,
                   guidance: torch.Tensor | None) -> torch.Tensor:
        if not time_features:
            t = torch.as_tensor(timestep, device=sample.device).reshape(-1).expand(sample.shape[0])
            timestep = self.time_proj(t)
        temb = self.time_embed(timestep.to(sample.dtype))
        if self.guidance_embed is not None:
            if guidance is None:
                raise ValueError("this UNet embeds the guidance scales: pass guidance features")
            temb = temb + self.guidance_embed(guidance.to(sample.dtype))
        return temb

    def _down(self, sample: torch.Tensor, temb: torch.Tensor, text_emb: torch.Tensor):
        """The encoder arm: (h, skips, each level's output before its downsampler)."""
        h = self.conv_in(sample)
        skips, levels = [h], []
        for i, (blocks, attns) in enumerate(zip(self.down_blocks, self.down_attn)):
            for block, attn in zip(blocks, attns):
                h = block(h, temb)
                h = attn(h, text_emb) if isinstance(attn, Transformer) else h
                skips.append(h)
            levels.append(h)
            if i < len(self.downsamplers):
                h = self.downsamplers[i](h)
                skips.append(h)
        return h, skips, levels

    def down_features(self, sample: torch.Tensor, timestep: torch.Tensor, text_emb: torch.Tensor,
                      time_features: bool = False, guidance: torch.Tensor | None = None) -> list[torch.Tensor]:
        """The encoder arm's output at each level (channels[i] channels; the innermost is the bottleneck, the
        network has no separate mid block): what a discriminator built on this UNet reads."""
        return self._down(sample, self._embedding(sample, timestep, time_features, guidance), text_emb)[2]

    def forward(self, sample: torch.Tensor, timestep: torch.Tensor, text_emb: torch.Tensor,
                time_features: bool = False, guidance: torch.Tensor | None = None) -> torch.Tensor:
        """timestep: (B,) timesteps, or with time_features=True the (B, channels[0]) sinusoids themselves;
        guidance: (B, 2 channels[0]) guidance-scale sinusoids when the config has guidance_embed."""
        temb = self._embedding(sample, timestep, time_features, guidance)
        h, skips, _ = self._down(sample, temb, text_emb)
        for i, (blocks, attns) in enumerate(zip(self.up_blocks, self.up_attn)):
            for block, attn in zip(blocks, attns):
                h = block(torch.cat([h, skips.pop()], dim=1), temb)
                h = attn(h, text_emb) if isinstance(attn, Transformer) else h
            if i < len(self.upsamplers):
                # to the next skip's size: x2, or the odd size a strided conv rounded down (as diffusers' UNet)
                h = self.upsamplers[i](F.interpolate(h, size=skips[-1].shape[-2:], mode="nearest"))
        return self.conv_out(F.silu(self.norm_out(h)))


class MDHead(nn.Module):
    """Clockwork's cut of the MobileDiffusion UNet (movie_core.components.NetworkSplit), the high-resolution path
    before it: embeddings, input conv, the top level's blocks and its downsampler.
    (sample, time_features, text_emb[, guidance_features]) -> (r_in, temb, text_emb, *top_skips)."""

    def __init__(self, unet: MobileDiffusionUNet):
        super().__init__()
        self.unet = unet

    def forward(self, sample, time_features, text_emb, *guidance):
        unet = self.unet
        temb = unet._embedding(sample, time_features, True, guidance[0] if guidance else None)
        h = unet.conv_in(sample)
        skips = [h]
        for block, attn in zip(unet.down_blocks[0], unet.down_attn[0]):
            h = block(h, temb)
            h = attn(h, text_emb) if isinstance(attn, Transformer) else h
            skips.append(h)
        return (unet.downsamplers[0](h), temb, text_emb, *skips)


class MDCore(nn.Module):
    """The low-resolution core: levels 2.. down, back up, and the upsampler to the top resolution.
    (r_in, temb, text_emb, *top_skips) -> r_out; the top skips only give the output size."""

    def __init__(self, unet: MobileDiffusionUNet):
        super().__init__()
        self.unet = unet

    def forward(self, r_in, temb, text_emb, *top_skips):
        unet = self.unet
        h, skips = r_in, [r_in]
        for i in range(1, len(unet.down_blocks)):
            for block, attn in zip(unet.down_blocks[i], unet.down_attn[i]):
                h = block(h, temb)
                h = attn(h, text_emb) if isinstance(attn, Transformer) else h
                skips.append(h)
            if i < len(unet.downsamplers):
                h = unet.downsamplers[i](h)
                skips.append(h)
        for i, (blocks, attns) in enumerate(zip(unet.up_blocks[:-1], unet.up_attn[:-1])):
            for block, attn in zip(blocks, attns):
                h = block(torch.cat([h, skips.pop()], dim=1), temb)
                h = attn(h, text_emb) if isinstance(attn, Transformer) else h
            target = skips[-1] if skips else top_skips[-1]
            h = unet.upsamplers[i](F.interpolate(h, size=target.shape[-2:], mode="nearest"))
        return h


class MDTail(nn.Module):
    """The high-resolution path after the cut: the top level's up blocks (fed the top skips) and the output layers.
    (r_out, temb, text_emb, *top_skips) -> model output."""

    def __init__(self, unet: MobileDiffusionUNet):
        super().__init__()
        self.unet = unet

    def forward(self, r_out, temb, text_emb, *top_skips):
        unet = self.unet
        h, skips = r_out, list(top_skips)
        for block, attn in zip(unet.up_blocks[-1], unet.up_attn[-1]):
            h = block(torch.cat([h, skips.pop()], dim=1), temb)
            h = attn(h, text_emb) if isinstance(attn, Transformer) else h
        return unet.conv_out(F.silu(unet.norm_out(h)))


def build_unet(variant: str, size: str, **overrides: Any) -> MobileDiffusionUNet:
    cfg = config_for(variant, size)
    if overrides:
        cfg = attrs.evolve(cfg, **overrides)
    return MobileDiffusionUNet(cfg)
