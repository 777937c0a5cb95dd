"""InstructPix2Pix and its MoViE descendants: one UNet family, four stages (paper Sec. 3).

instruct-pix2pix      SD-1.5 UNet with 8 input channels, 3-pass CFG (Eq. 1), epsilon, DDIM, 10 steps
mobile-pix2pix        the same without self-/cross-attention at the highest UNet resolution
mobile-pix2pix-mmg    + guidance-scale embeddings (s_I, s_T), one pass per step
mobile-pix2pix-1step  + v-prediction, LCM scheduler, 1 step, guidance embeddings kept

The multi-step stages sample with deterministic DDIM (eta 0) by default; the paper does not name its sampler, and
InstructPix2Pix's own scripts use Euler ancestral. Measured on the nano family (held-out procedural edits, 10
steps, s_T 7.5, s_I 1.5, PSNR against the ground truth): DDIM 14.8 dB vs Euler ancestral 11.2 dB for the base
model, and 11.9 vs 7.7 (mobile) and 13.5 vs 7.6 (mmg) for an earlier, shorter-trained family: with few steps the
ancestral sampler's fresh noise at each step is more than a small model corrects. Every frame of a video also gets
the same trajectory without per-step noise. `--denoiser-option scheduler=euler-ancestral` (the DenoiserConfig
option) brings the ancestral sampler back.

Guidance-scale injection (the embedded stages), two variants, told apart by the UNet's config:

* 'resnet' (paper Sec. 3.3, the default of a new model): the sinusoids of s_I and s_T (each half the time
  embedding's width) are concatenated to the time embedding (diffusers `class_embed_type="identity"`,
  `class_embeddings_concat=True`), so every ResNet block takes them "similarly to the timestep embedding": through
  the ResNet's nonlinearity and its own linear layer (the new columns of its time_emb_proj, zero-initialised, so
  the model starts equal to its Stage-2 teacher) and adds them to its features.
* 'time' (ours; the shipped nano family): one shared projection (linear, SiLU, linear; the last zero-initialised)
  of the sinusoids is added to the time embedding, and every ResNet reuses its time projection.

Both take the scales multiplied by GUIDANCE_EMBED_SCALE (100) before the sinusoid (ours, not in the paper: the
sinusoid is built for timesteps 0-999, and s in [1, 14] would vary only its slowest frequencies).
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import attrs
import torch
import torch.nn.functional as F
from diffusers import (
    DDIMScheduler,
    EulerAncestralDiscreteScheduler,
    EulerDiscreteScheduler,
    LCMScheduler,
    UNet2DConditionModel,
)
from diffusers.models.embeddings import get_timestep_embedding
from diffusers.utils.torch_utils import randn_tensor
from transformers import CLIPTextConfig, CLIPTextModel, CLIPTokenizer

from movie_core.components import BuildContext, Denoiser, KVHook, Network, NetworkSplit
from movie_core.errors import MovieError
from movie_core.weights import (
    check_component,
    check_tokenizer,
    component_folder,
    load_checked,
    low_memory_kw,
    read_config,
    read_manifest,
)
from movie_plugins.denoisers._tokenizer import CLIP_VOCAB_SIZE, byte_tokenizer

SD_SCALING_FACTOR = 0.18215
GUIDANCE_EMBED_SCALE = 100.0  # s -> sinusoid "timestep" s * 100: s_T in [2, 14] spans [200, 1400]


GUIDANCE_INJECT = ("resnet", "time")
DEFAULT_GUIDANCE_INJECT = "resnet"  # paper Sec. 3.3


@attrs.frozen
class Stage:
    name: str
    mobile: bool
    embedded: bool
    prediction_type: str
    scheduler: str
    steps: int


STAGES = {
    s.name: s
    for s in (
        Stage("instruct-pix2pix", mobile=False, embedded=False, prediction_type="epsilon", scheduler="ddim", steps=10),
        Stage("mobile-pix2pix", mobile=True, embedded=False, prediction_type="epsilon", scheduler="ddim", steps=10),
        Stage("mobile-pix2pix-mmg", mobile=True, embedded=True, prediction_type="epsilon", scheduler="ddim", steps=10),
        Stage("mobile-pix2pix-1step", mobile=True, embedded=True, prediction_type="v_prediction", scheduler="lcm",
              steps=1),
    )
}

_UNET_SIZES = {
    "full": dict(block_out_channels=(320, 640, 1280, 1280), layers_per_block=2, cross_attention_dim=768,
                 attention_head_dim=8, sample_size=64),
    "nano": dict(block_out_channels=(32, 64, 64, 64), layers_per_block=1, cross_attention_dim=64,
                 attention_head_dim=4, sample_size=32),
}
_TEXT_SIZES = {
    "full": dict(hidden_size=768, intermediate_size=3072, num_hidden_layers=12, num_attention_heads=12,
                 projection_dim=768),
    "nano": dict(hidden_size=64, intermediate_size=256, num_hidden_layers=2, num_attention_heads=2, projection_dim=64),
}


def unet_config(size: str, stage: Stage, guidance_inject: str = DEFAULT_GUIDANCE_INJECT) -> dict:
    """diffusers UNet2DConditionModel config for a stage at a size (guidance_inject: see the module docstring)."""
    top_down = "DownBlock2D" if stage.mobile else "CrossAttnDownBlock2D"
    top_up = "UpBlock2D" if stage.mobile else "CrossAttnUpBlock2D"
    cfg = dict(
        _UNET_SIZES[size],
        in_channels=8,
        out_channels=4,
        down_block_types=(top_down, "CrossAttnDownBlock2D", "CrossAttnDownBlock2D", "DownBlock2D"),
        up_block_types=("UpBlock2D", "CrossAttnUpBlock2D", "CrossAttnUpBlock2D", top_up),
    )
    cfg.update(guidance_config(stage.embedded, guidance_inject, cfg["block_out_channels"][0]))
    return cfg


def guidance_config(embedded: bool, guidance_inject: str, channels0: int) -> dict[str, Any]:
    """The UNet config entries of a guidance injection (none for a cfg3 stage)."""
    if guidance_inject not in GUIDANCE_INJECT:
        raise MovieError(f"guidance_inject must be one of {', '.join(GUIDANCE_INJECT)}, got '{guidance_inject}'")
    if not embedded:
        return dict(class_embed_type=None, projection_class_embeddings_input_dim=None, class_embeddings_concat=False)
    if guidance_inject == "resnet":
        return dict(class_embed_type="identity", projection_class_embeddings_input_dim=None,
                    class_embeddings_concat=True)
    return dict(class_embed_type="projection", projection_class_embeddings_input_dim=2 * channels0,
                class_embeddings_concat=False)


def guidance_inject_of(config: Any) -> str | None:
    """'resnet', 'time' or None (no guidance embedding) from a UNet config; MovieError for any other layout."""
    kind, concat = config.get("class_embed_type"), bool(config.get("class_embeddings_concat"))
    if kind is None:
        return None
    if kind == "identity" and concat:
        return "resnet"
    if kind == "projection" and not concat:
        return "time"
    raise MovieError(f"unsupported guidance embedding: class_embed_type={kind!r}, class_embeddings_concat={concat}")


def time_embed_dim(config: Any) -> int:
    return int(config.get("time_embedding_dim") or 4 * config["block_out_channels"][0])


def guidance_feature_dim(config: Any) -> int:
    """The width of one scale's sinusoid: half the class-embedding input ('time') or of the time embedding
    ('resnet', concatenated to it)."""
    if guidance_inject_of(config) == "resnet":
        return time_embed_dim(config) // 2
    return int(config["projection_class_embeddings_input_dim"]) // 2


def guided_resnets(unet: torch.nn.Module) -> list[torch.nn.Module]:
    """Every ResNet block with a time-embedding projection (down, mid and up blocks)."""
    return [m for m in unet.modules() if getattr(m, "time_emb_proj", None) is not None]


def text_config(size: str, tokenizer) -> CLIPTextConfig:
    """CLIP-L/14 text tower at full size (49,408 entries), a two-layer one sized to the tokenizer at nano size."""
    return CLIPTextConfig(
        vocab_size=CLIP_VOCAB_SIZE if size == "full" else len(tokenizer),
        max_position_embeddings=77, hidden_act="quick_gelu",
        bos_token_id=tokenizer.bos_token_id, eos_token_id=tokenizer.eos_token_id, pad_token_id=tokenizer.pad_token_id,
        **_TEXT_SIZES[size],
    )


def make_scheduler(name: str, prediction_type: str):
    """An SD-1.5 noise schedule with the named sampler."""
    common = dict(
        num_train_timesteps=1000, beta_start=0.00085, beta_end=0.012, beta_schedule="scaled_linear",
        prediction_type=prediction_type, steps_offset=1,
    )
    if name == "euler-ancestral":
        return EulerAncestralDiscreteScheduler(**common)
    if name == "euler":
        return EulerDiscreteScheduler(**common)
    if name == "ddim":
        return DDIMScheduler(**common, clip_sample=False, set_alpha_to_one=False)
    if name == "lcm":
        return LCMScheduler(**common, timestep_spacing="leading")
    raise MovieError(f"unknown scheduler '{name}'")


def zero_guidance_embedding(unet: UNet2DConditionModel) -> None:
    """Zero the guidance layers so the model starts identical to its teacher: 'time', the shared projection's last
    layer; 'resnet', each ResNet's own guidance columns (the second half of its time_emb_proj input)."""
    if guidance_inject_of(unet.config) == "resnet":
        t = time_embed_dim(unet.config)
        with torch.no_grad():
            for resnet in guided_resnets(unet):
                resnet.time_emb_proj.weight[:, t:] = 0
        return
    last = unet.class_embedding.linear_2
    torch.nn.init.zeros_(last.weight)
    torch.nn.init.zeros_(last.bias)


class KVHookAttnProcessor:
    """diffusers self-attention (SDPA) whose keys and values pass through the denoiser's KV hook."""

    def __init__(self, denoiser: Pix2PixDenoiser, name: str) -> None:
        self.denoiser = denoiser
        self.name = name

    def __call__(self, attn, hidden_states, encoder_hidden_states=None, attention_mask=None, temb=None,
                 *args, **kwargs):
        residual = hidden_states
        input_ndim = hidden_states.ndim
        if input_ndim == 4:
            b, c, h, w = hidden_states.shape
            hidden_states = hidden_states.view(b, c, h * w).transpose(1, 2)
        batch = hidden_states.shape[0]
        if attn.group_norm is not None:
            hidden_states = attn.group_norm(hidden_states.transpose(1, 2)).transpose(1, 2)
        query = attn.to_q(hidden_states)
        key, value = attn.to_k(hidden_states), attn.to_v(hidden_states)
        hook = self.denoiser.kv_hook
        if hook is not None:
            key, value = hook(self.name, key, value)
        heads = attn.heads
        head_dim = key.shape[-1] // heads
        query = query.view(batch, -1, heads, head_dim).transpose(1, 2)
        key = key.view(batch, -1, heads, head_dim).transpose(1, 2)
        value = value.view(batch, -1, heads, head_dim).transpose(1, 2)
        out = F.scaled_dot_product_attention(query, key, value)
        out = out.transpose(1, 2).reshape(batch, -1, heads * head_dim).to(query.dtype)
        out = attn.to_out[1](attn.to_out[0](out))
        if input_ndim == 4:
            out = out.transpose(-1, -2).reshape(b, c, h, w)
        if attn.residual_connection:
            out = out + residual
        return out / attn.rescale_output_factor


class TextEncoderNet(torch.nn.Module):
    """Token ids (B, 77) -> the CLIP text encoder's last hidden state."""

    def __init__(self, text_encoder: torch.nn.Module):
        super().__init__()
        self.text_encoder = text_encoder

    def forward(self, input_ids: torch.Tensor) -> torch.Tensor:
        return self.text_encoder(input_ids)[0]


def _features_as_time_embedding(sample: torch.Tensor, timestep: torch.Tensor) -> torch.Tensor:
    # installed as the UNet's get_time_embed: the "timestep" argument already holds the host's sinusoids
    return timestep.to(sample.dtype)


class UNetNet(torch.nn.Module):
    """One UNet pass on host-computed time (and guidance) sinusoids: a static graph.

    (sample, time_features, text_emb[, guidance_features]) -> model output. Run it inside active(), which
    makes the UNet take the time features as they are."""

    def __init__(self, unet: torch.nn.Module, embedded: bool):
        super().__init__()
        self.unet = unet
        self.embedded = embedded

    @contextlib.contextmanager
    def active(self) -> Iterator[None]:
        self.unet.get_time_embed = _features_as_time_embedding
        try:
            yield
        finally:
            del self.unet.get_time_embed

    def forward(self, sample, time_features, text_emb, *guidance):
        labels = guidance[0] if self.embedded else None
        return self.unet(sample, time_features, encoder_hidden_states=text_emb, class_labels=labels).sample


class OneStepNet(torch.nn.Module):
    """The whole 1-step sampler as one graph: (initial_noise, image_latents, time_features, text_emb
    [, guidance_features]) -> edited latents. The UNet pass on concat(x_t, image_latents / 0.18215), then
    the scheduler's update with its constants baked in (v or epsilon -> x0, then LCM's c_skip / c_out)."""

    def __init__(self, net: UNetNet, *, init_sigma: float, alpha: float, sigma: float, c_skip: float, c_out: float,
                 prediction_type: str):
        super().__init__()
        self.net = net
        self.init_sigma, self.alpha, self.sigma = init_sigma, alpha, sigma
        self.c_skip, self.c_out, self.prediction_type = c_skip, c_out, prediction_type

    def extra_repr(self) -> str:  # the constants enter the artifact's cache key through the repr
        return (f"init_sigma={self.init_sigma!r}, alpha={self.alpha!r}, sigma={self.sigma!r}, c_skip={self.c_skip!r}, "
                f"c_out={self.c_out!r}, prediction_type={self.prediction_type}")

    def active(self):
        return self.net.active()

    def forward(self, initial_noise, image_latents, time_features, text_emb, *guidance):
        x = initial_noise * self.init_sigma
        out = self.net(torch.cat([x, image_latents / SD_SCALING_FACTOR], dim=1), time_features, text_emb, *guidance)
        if self.prediction_type == "v_prediction":
            x0 = self.alpha * x - self.sigma * out
        else:
            x0 = (x - self.sigma * out) / self.alpha
        return self.c_out * x0 + self.c_skip * x


def splittable(unet: torch.nn.Module) -> bool:
    """Whether UNetHead/Core/Tail reproduce this UNet's forward: a first down block that halves the resolution,
    its skips (with the input conv's) exactly feeding the last up block, and none of the extras the cut ignores."""
    cfg = unet.config
    down0, last_up = unet.down_blocks[0], unet.up_blocks[-1]
    return (
        len(unet.down_blocks) >= 2 and getattr(down0, "downsamplers", None) is not None
        and len(last_up.resnets) == len(down0.resnets) + 1 and getattr(last_up, "upsamplers", None) is None
        and unet.mid_block is not None and cfg.addition_embed_type is None and unet.time_embed_act is None
        and unet.encoder_hid_proj is None and not cfg.center_input_sample
        and cfg.class_embed_type in (None, "projection", "identity")
    )


class UNetHead(torch.nn.Module):
    """The high-resolution path before the cut: embeddings, input conv, first down block.

    (sample, time_features, text_emb[, guidance_features]) -> (r_in, emb, text_emb, *top_skips): the steps of
    diffusers' UNet2DConditionModel.forward up to the first down block, in its order."""

    def __init__(self, unet: torch.nn.Module, embedded: bool):
        super().__init__()
        self.unet = unet
        self.embedded = embedded

    def forward(self, sample, time_features, text_emb, *guidance):
        unet = self.unet
        emb = unet.time_embedding(time_features.to(sample.dtype))
        if self.embedded:
            class_emb = unet.class_embedding(guidance[0]).to(dtype=sample.dtype)
            emb = torch.cat([emb, class_emb], dim=-1) if unet.config.class_embeddings_concat else emb + class_emb
        x = unet.conv_in(sample)
        block = unet.down_blocks[0]
        if getattr(block, "has_cross_attention", False):
            r_in, res = block(hidden_states=x, temb=emb, encoder_hidden_states=text_emb)
        else:
            r_in, res = block(hidden_states=x, temb=emb)
        # res ends with the downsampled r_in, which the core's last up block takes as its skip
        return (r_in, emb, text_emb, x, *res[:-1])


def _up(block, sample, emb, text_emb, res, upsample_size):
    if getattr(block, "has_cross_attention", False):
        return block(hidden_states=sample, temb=emb, res_hidden_states_tuple=res, encoder_hidden_states=text_emb,
                     upsample_size=upsample_size)
    return block(hidden_states=sample, temb=emb, res_hidden_states_tuple=res, upsample_size=upsample_size)


class UNetCore(torch.nn.Module):
    """The low-resolution core: down blocks 2.., mid block, up blocks up to (and with) the upsampler back to the
    top resolution. (r_in, emb, text_emb, *top_skips) -> r_out; the top skips only give the output size."""

    def __init__(self, unet: torch.nn.Module):
        super().__init__()
        self.unet = unet

    def forward(self, r_in, emb, text_emb, *top_skips):
        unet = self.unet
        factor = 2 ** unet.num_upsamplers
        forward_size = any(d % factor for d in top_skips[0].shape[-2:])
        res_samples = (*top_skips, r_in)
        sample = r_in
        for block in unet.down_blocks[1:]:
            if getattr(block, "has_cross_attention", False):
                sample, res = block(hidden_states=sample, temb=emb, encoder_hidden_states=text_emb)
            else:
                sample, res = block(hidden_states=sample, temb=emb)
            res_samples += res
        if getattr(unet.mid_block, "has_cross_attention", False):
            sample = unet.mid_block(sample, emb, encoder_hidden_states=text_emb)
        else:
            sample = unet.mid_block(sample, emb)
        upsample_size = None
        for block in unet.up_blocks[:-1]:
            n = len(block.resnets)
            res, res_samples = res_samples[-n:], res_samples[:-n]
            if forward_size:
                upsample_size = res_samples[-1].shape[2:]
            sample = _up(block, sample, emb, text_emb, res, upsample_size)
        return sample


class UNetTail(torch.nn.Module):
    """The high-resolution path after the cut: last up block (fed the top skips) and the output layers.
    (r_out, emb, text_emb, *top_skips) -> model output."""

    def __init__(self, unet: torch.nn.Module):
        super().__init__()
        self.unet = unet

    def forward(self, r_out, emb, text_emb, *top_skips):
        unet = self.unet
        sample = _up(unet.up_blocks[-1], r_out, emb, text_emb, tuple(top_skips), None)
        if unet.conv_norm_out:
            sample = unet.conv_act(unet.conv_norm_out(sample))
        return unet.conv_out(sample)


def sample_edit(den: Any, image_latents: torch.Tensor, text_emb: torch.Tensor, *, steps=None, s_T=7.5, s_I=1.5,
                null_emb=None, generator=None, latents=None, scheduler=None, on_step=None) -> torch.Tensor:
    """The instruction-editing sampling loop every editing denoiser shares (Pix2Pix stages and MobileDiffusion's
    editing UNet): from noise (or `latents`), `den.predict` at each of the scheduler's steps, conditioned on the
    source latents, the prompt and the scales (3-pass guidance gets the empty prompt's embedding)."""
    scheduler = scheduler or den.make_scheduler()
    scheduler.set_timesteps(steps or den.default_steps, device=image_latents.device)
    if latents is None:
        latents = randn_tensor(
            image_latents.shape, generator=generator, device=image_latents.device, dtype=image_latents.dtype
        )
    latents = latents * scheduler.init_noise_sigma
    if den.guidance == "cfg3" and null_emb is None:
        null_emb = den.encode_prompt([""]).to(text_emb)
    for i, t in enumerate(scheduler.timesteps):
        if on_step is not None:
            on_step(i, t)
        model_in = scheduler.scale_model_input(latents, t)
        out = den.predict(model_in, t, image_latents, text_emb, s_I, s_T, null_emb=null_emb)
        latents = scheduler.step(out, t, latents, generator=generator).prev_sample
    return latents


class Pix2PixDenoiser(Denoiser):
    """Tokenizer + CLIP text encoder + 8-channel UNet + the stage's sampling defaults."""

    def __init__(
        self,
        stage: Stage,
        unet,
        text_encoder,
        tokenizer,
        scheduler_name: str,
        standin_tokenizer: bool = False,
        folder_scheduler: Any = None,
        latent_scale: float = SD_SCALING_FACTOR,
        notes: list[str] | None = None,
    ):
        super().__init__()
        self.stage_info = stage
        self.stage = stage.name
        self.unet = unet
        self.text_encoder = text_encoder
        self.tokenizer = tokenizer
        self.scheduler_name = scheduler_name
        self.standin_tokenizer = standin_tokenizer
        self.guidance = "embedded" if stage.embedded else "cfg3"
        # a model folder's own scheduler (scheduler/scheduler_config.json): sampled with unless --scheduler overrides
        self.folder_scheduler = folder_scheduler
        self.prediction_type = (
            folder_scheduler.config.prediction_type if folder_scheduler is not None else stage.prediction_type
        )
        self.latent_scale = latent_scale  # the folder's VAE scaling_factor: image latents are unscaled by it
        self.load_notes = list(notes or [])
        self.default_steps = stage.steps
        self._saved_processors: list[tuple[Any, Any]] | None = None

    # --- the editing-stage contract MoViE's distillers train through ----------------------

    def family_stage(self, role: str) -> str:
        """This family's stage for a MoViE role: 'cfg3', 'mmg' (guidance embedded, epsilon) or '1step'."""
        return {"cfg3": self.stage if not self.stage_info.embedded else "mobile-pix2pix",
                "mmg": "mobile-pix2pix-mmg", "1step": "mobile-pix2pix-1step"}[role]

    def guidance_embedded_unet(self, guidance_inject: str = "resnet") -> torch.nn.Module:
        """A copy of the UNet with zero-initialised guidance layers taking the scales through each ResNet's own
        linear layer ('resnet', paper Sec. 3.3) or one projection added to the time embedding ('time')."""
        return convert_unet(self.unet, "mobile-pix2pix-mmg", guidance_inject)

    def restaged(self, stage: str, unet: torch.nn.Module | None = None, scheduler: str | None = None,
                 prediction_type: str | None = None) -> Pix2PixDenoiser:
        """A denoiser of another stage sharing nothing with this one: its UNet (or `unet`), a copy of its text
        tower; the stage's scheduler and prediction type unless given."""
        import copy

        info = STAGES[stage]
        if prediction_type is not None:
            info = attrs.evolve(info, prediction_type=prediction_type)
        return Pix2PixDenoiser(info, unet if unet is not None else copy.deepcopy(self.unet),
                               copy.deepcopy(self.text_encoder), self.tokenizer, scheduler or info.scheduler,
                               standin_tokenizer=self.standin_tokenizer, latent_scale=self.latent_scale)

    # --- the contract's network surface ----------------------------------------------------

    def networks(self) -> dict[str, Network]:
        # built on demand (not submodules: the denoiser's own state dict stays unet + text encoder)
        nets = self.__dict__.get("_nets")
        if nets is None or nets[0] is not self.unet or nets[1] is not self.text_encoder:
            guidance = ("guidance_features",) if self.stage_info.embedded else ()
            unet_inputs = ("sample", "time_features", "text_emb", *guidance)
            nets = (
                self.unet,
                self.text_encoder,
                {
                    "text_encoder": Network(TextEncoderNet(self.text_encoder), ("input_ids",), ("text_emb",)),
                    "unet": Network(UNetNet(self.unet, self.stage_info.embedded), unet_inputs, ("noise",)),
                },
            )
            self.__dict__["_nets"] = nets
        return nets[2]

    def network_split(self) -> NetworkSplit | None:
        """The 'unet' network (on the same graph inputs) cut after the first down block, for Clockwork."""
        if not splittable(self.unet):
            return None
        split = self.__dict__.get("_split")
        if split is None or split[0] is not self.unet:
            split = (
                self.unet,
                NetworkSplit(
                    head=UNetHead(self.unet, self.stage_info.embedded),
                    core=UNetCore(self.unet),
                    tail=UNetTail(self.unet),
                ),
            )
            self.__dict__["_split"] = split
        return split[1]

    def anchor_layers(self) -> list[str]:
        return sorted(name for name in self.unet.attn_processors if name.endswith("attn1.processor"))

    def native_latent_size(self) -> int | None:
        """The unet config's `sample_size` (the latent side it was trained at; its larger side when a pair)."""
        size = getattr(getattr(self.unet, "config", None), "sample_size", None)
        if isinstance(size, (list, tuple)):
            size = max(size)
        return int(size) if isinstance(size, int) and size > 0 else None

    def set_kv_hook(self, hook: KVHook | None) -> KVHook | None:
        """Install KV-hook processors on the self-attention layers while a hook is set (set directly:
        set_attn_processor walks the whole UNet on every call); restore diffusers' own when it is removed."""
        previous = super().set_kv_hook(hook)
        if hook is not None and self._saved_processors is None:
            modules = dict(self.unet.named_modules())
            attns = [modules[name[: -len(".processor")]] for name in self.anchor_layers()]
            self._saved_processors = [(a, a.processor) for a in attns]
            for attn, name in zip(attns, self.anchor_layers()):
                attn.processor = KVHookAttnProcessor(self, name)
        elif hook is None and self._saved_processors is not None:
            for attn, proc in self._saved_processors:
                attn.processor = proc
            self._saved_processors = None
        return previous

    def describe(self) -> dict[str, Any]:
        unet = self.unet.config
        facts: dict[str, Any] = super().describe() | {
            "scheduler": self.scheduler_name,
            "guidance_embed_scale": GUIDANCE_EMBED_SCALE if self.guidance == "embedded" else None,
            "guidance_inject": guidance_inject_of(unet),
            "standin_tokenizer": self.standin_tokenizer,
            "host": {
                "text": f"input_ids: the tokenizer's ids padded to {self.max_prompt_tokens} "
                "(tokenizer/ in the model folder)",
                "time_features": f"sinusoidal timestep embedding, dim {unet.block_out_channels[0]}, "
                f"flip_sin_to_cos={unet.flip_sin_to_cos}, freq_shift={unet.freq_shift}",
                "sample": f"concat(noisy latents, image latents / {self.latent_scale:g}) on channels",
            },
        }
        if self.guidance == "embedded":
            facts["host"]["guidance_features"] = (
                f"concat(sinusoid({GUIDANCE_EMBED_SCALE:g} * s_I), "
                f"sinusoid({GUIDANCE_EMBED_SCALE:g} * s_T)), each of dim {guidance_feature_dim(unet)} with "
                "time_features' flip_sin_to_cos and freq_shift"
            )
        else:
            facts["host"]["cfg"] = (
                "3 passes per step in one batch: (text, image), (null text, image), (null text, zero image)"
            )
        if self.load_notes:
            facts["notes"] = list(self.load_notes)
        if self.standin_tokenizer:
            facts.setdefault("notes", []).extend(
                [
                    "random init at full size: a stand-in byte-level tokenizer with CLIP's vocabulary size (49408) "
                    "and length (77) replaces CLIP's BPE vocabulary (not available offline); "
                    "prompts are not CLIP tokens"
                ]
            )
        return facts

    # --- export: what an app computes around the graphs ------------------------------------

    def _schedule(self, steps: int) -> tuple[Any, list[dict[str, Any]]]:
        """The scheduler set for `steps`, and per step its timestep, alpha_bar (and the previous one) and, for
        LCM, the boundary scalings, exactly as `sample` will use them."""
        sched = self.make_scheduler()
        sched.set_timesteps(steps, device="cpu")
        ts = [int(t) for t in sched.timesteps]
        ac = sched.alphas_cumprod
        rows = []
        for i, t in enumerate(ts):
            row: dict[str, Any] = {"timestep": t, "alpha_bar": float(ac[t])}
            if self.scheduler_name == "ddim":
                prev = t - sched.config.num_train_timesteps // sched.num_inference_steps
                row["alpha_bar_prev"] = float(ac[prev]) if prev >= 0 else float(sched.final_alpha_cumprod)
            if self.scheduler_name == "lcm":
                c_skip, c_out = sched.get_scalings_for_boundary_condition_discrete(torch.tensor(t))
                row.update(c_skip=float(c_skip), c_out=float(c_out))
                row["alpha_bar_prev"] = float(ac[ts[i + 1]]) if i + 1 < len(ts) else None
            if self.scheduler_name in ("euler", "euler-ancestral"):
                row["sigma"], row["sigma_next"] = float(sched.sigmas[i]), float(sched.sigmas[i + 1])
            rows.append(row)
        return sched, rows

    def fused_step(self, steps: int) -> Network | None:
        if steps != 1 or self.scheduler_name != "lcm" or self.guidance != "embedded":
            return None
        sched, (row,) = self._schedule(1)
        unet = self.networks()["unet"]
        module = OneStepNet(
            unet.module,
            init_sigma=float(sched.init_noise_sigma),
            alpha=row["alpha_bar"] ** 0.5,
            sigma=(1 - row["alpha_bar"]) ** 0.5,
            c_skip=row["c_skip"],
            c_out=row["c_out"],
            prediction_type=self.prediction_type,
        )
        inputs = ("initial_noise", "image_latents") + tuple(unet.inputs[1:])
        return Network(module, inputs, ("edited_latents",))

    def export_host(self, folder, image_latents, *, steps, s_T, s_I, generator=None) -> dict[str, Any] | None:
        import numpy as np

        folder = Path(folder)
        sched, rows = self._schedule(steps)
        shape = (1, *image_latents.shape[1:])
        gen = generator[0] if isinstance(generator, list) else generator
        dev, dtype = image_latents.device, image_latents.dtype
        tensors: dict[str, torch.Tensor] = {}
        # the draws `sample` makes from each frame's generator, in order: the initial noise, then per-step noise
        tensors["initial_noise"] = randn_tensor(shape, generator=gen, device=dev, dtype=dtype)
        noisy = self.scheduler_name == "euler-ancestral" or self.scheduler_name == "lcm"
        for i in range(steps - 1 if self.scheduler_name == "lcm" else steps if noisy else 0):
            tensors[f"step_noise_{i}"] = randn_tensor(shape, generator=gen, device=dev, dtype=dtype)
        t = torch.tensor([r["timestep"] for r in rows], device=dev)
        tensors["time_features"] = self.unet.time_proj(t).to(dtype)
        if self.guidance == "embedded":
            tensors["guidance_features"] = self.guidance_labels(s_I, s_T, 1, image_latents)
        else:
            tensors["null_text_emb"] = self.encode_prompt([""]).to(dtype)
        files = {}
        for name, value in tensors.items():
            np.save(folder / f"{name}.npy", value.detach().float().cpu().numpy())
            files[name] = {"file": f"{name}.npy", "shape": list(value.shape), "dtype": "float32"}
        tok_info = self._export_tokenizer(folder)
        fused = self.fused_step(steps) is not None
        formula = {
            "lcm": "x0 = sqrt(alpha_bar) * x - sqrt(1 - alpha_bar) * v (v_prediction) "
                   "or (x - sqrt(1 - alpha_bar) * eps) "
            "/ sqrt(alpha_bar) (epsilon); denoised = c_out * x0 + c_skip * x; x_next = sqrt(alpha_bar_prev) * "
            "denoised + sqrt(1 - alpha_bar_prev) * step_noise_i, the last step returns denoised",
            "ddim": "eps = model output (epsilon) or sqrt(alpha_bar) * v + sqrt(1 - alpha_bar) * x (v_prediction); "
            "x0 = (x - sqrt(1 - alpha_bar) * eps) / sqrt(alpha_bar); x_next = sqrt(alpha_bar_prev) * x0 + "
            "sqrt(1 - alpha_bar_prev) * eps (eta 0: no noise)",
            "euler": "Karras-style Euler on sigma: x starts at initial_noise * init_noise_sigma; model input "
            "x / sqrt(sigma^2 + 1); x0 from the output; x_next = x + (x - x0) / sigma * (sigma_next - sigma)",
            "euler-ancestral": "as euler, with ancestral noise step_noise_i "
                               "(sigma_up, sigma_down from sigma, sigma_next)",
        }[self.scheduler_name]
        return {
            "tokenizer": tok_info,
            "tensors": files,
            "sampler": {
                "name": self.scheduler_name,
                "prediction_type": self.prediction_type,
                "steps": steps,
                "init_noise_sigma": float(sched.init_noise_sigma),
                "schedule": "scaled_linear 0.00085-0.012, 1000 steps",
                "per_step": rows,
                "update": formula,
                "fused_in_unet": fused,
            },
            "guidance": (
                {"mode": "embedded", "s_I": s_I, "s_T": s_T, "features": "guidance_features.npy"}
                if self.guidance == "embedded"
                else {
                    "mode": "cfg3",
                    "s_I": s_I,
                    "s_T": s_T,
                    "passes": "(text, image), (null text, image), (null text, zero image) in one batch",
                    "combine": "u + s_T * (t - i) + s_I * (i - u)",
                }
            ),
            "unet_sample": (
                None
                if fused
                else f"concat(x, image_latents / {SD_SCALING_FACTOR}) on channels (x: the current latents)"
            ),
            "decoder_input": "the sampler's output as it is (no scaling)",
        }

    def _export_tokenizer(self, folder: Path) -> dict[str, Any]:
        return export_tokenizer(self.tokenizer, self.max_prompt_tokens, folder)

    @property
    def max_prompt_tokens(self) -> int:
        return int(self.tokenizer.model_max_length)

    def tokenize(self, prompts: list[str]) -> tuple[torch.Tensor, list[bool]]:
        """Token ids padded to the encoder's length, and for each prompt whether it was truncated."""
        # an explicit max_length avoids transformers' own "sequence too long" log line
        full = self.tokenizer(prompts, truncation=True, max_length=1 << 20).input_ids
        ids = self.tokenizer(
            prompts, padding="max_length", max_length=self.max_prompt_tokens, truncation=True, return_tensors="pt"
        ).input_ids
        return ids, [len(f) > self.max_prompt_tokens for f in full]

    def guidance_labels(self, s_I, s_T, batch: int, like: torch.Tensor) -> torch.Tensor:
        """Sinusoidal embeddings of both guidance scales, concatenated: the UNet's class labels."""
        config = getattr(self.unet, "module", self.unet).config  # the UNet may be DDP-wrapped in training
        dim = guidance_feature_dim(config)
        parts = []
        for s in (s_I, s_T):
            s = torch.as_tensor(s, dtype=torch.float32, device=like.device).reshape(-1).expand(batch)
            parts.append(
                get_timestep_embedding(
                    s * GUIDANCE_EMBED_SCALE,
                    dim,
                    flip_sin_to_cos=config.flip_sin_to_cos,
                    downscale_freq_shift=config.freq_shift,
                )
            )
        return torch.cat(parts, dim=1).to(like.dtype)

    def unet_forward(self, x, t, image_latents, text_emb, s_I=None, s_T=None) -> torch.Tensor:
        """One UNet pass; image_latents are in SD's scaled space and are unscaled here (as IP2P was trained).

        Through the backend's runner when one is routed (on the static graph's inputs), else the UNet itself."""
        runner = self.runner("unet")
        if runner is not None:
            return runner(*self.graph_inputs(x, t, image_latents, text_emb, s_I, s_T))
        cond = image_latents / self.latent_scale
        labels = self.guidance_labels(s_I, s_T, x.shape[0], x) if self.stage_info.embedded else None
        return self.unet(torch.cat([x, cond], dim=1), t, encoder_hidden_states=text_emb, class_labels=labels).sample

    def graph_inputs(self, x, t, image_latents, text_emb, s_I=None, s_T=None) -> list[torch.Tensor]:
        """unet_forward's inputs for a static graph: the time and guidance sinusoids computed here, on the host.

        [sample (x and the unscaled image latents), time_features, text_emb] + [guidance_features] when embedded.
        """
        batch = x.shape[0]
        t = torch.as_tensor(t, device=x.device).reshape(-1).expand(batch)
        time_features = self.unet.time_proj(t).to(x.dtype)
        inputs = [
            torch.cat([x, image_latents / self.latent_scale], dim=1),
            time_features,
            text_emb.expand(batch, -1, -1),
        ]
        if self.stage_info.embedded:
            inputs.append(self.guidance_labels(s_I, s_T, batch, x))
        return inputs

    def predict(self, x_t, t, image_latents, text_emb, s_I, s_T, null_emb=None) -> torch.Tensor:
        """The guided model output for one step: Eq. 1 with three passes, or one embedded pass."""
        batch = x_t.shape[0]
        text_emb = text_emb.expand(batch, -1, -1)
        if self.guidance == "embedded":
            return self.unet_forward(x_t, t, image_latents, text_emb, s_I, s_T)
        if null_emb is None:
            null_emb = self.encode_prompt([""]).to(text_emb)
        null_emb = null_emb.expand(batch, -1, -1)
        x = torch.cat([x_t] * 3)
        img = torch.cat([image_latents, image_latents, torch.zeros_like(image_latents)])
        emb = torch.cat([text_emb, null_emb, null_emb])
        if torch.is_tensor(t) and t.ndim == 1 and t.numel() == batch > 1:
            t = t.repeat(3)  # per-sample timesteps (training): one per pass
        eps_text, eps_image, eps_uncond = self.unet_forward(x, t, img, emb).chunk(3)
        s_I = torch.as_tensor(s_I, dtype=x_t.dtype, device=x_t.device).reshape(-1, 1, 1, 1)
        s_T = torch.as_tensor(s_T, dtype=x_t.dtype, device=x_t.device).reshape(-1, 1, 1, 1)
        return eps_uncond + s_T * (eps_text - eps_image) + s_I * (eps_image - eps_uncond)

    def make_scheduler(self):
        """A fresh sampler: the model folder's own scheduler, else the named one on SD-1.5's schedule."""
        if self.folder_scheduler is not None:
            return type(self.folder_scheduler).from_config(self.folder_scheduler.config)
        return make_scheduler(self.scheduler_name, self.prediction_type)

    def reference_pipeline(self, autoencoder) -> tuple[Any, str]:
        """diffusers' StableDiffusionInstructPix2PixPipeline on these very modules (for `movie bench --compare`):
        a callable (uint8 HxWx3 frame, prompt, steps, s_T, s_I, seed) -> image, and its name."""
        from diffusers import StableDiffusionInstructPix2PixPipeline

        vae = getattr(autoencoder, "vae", None)
        if vae is None:
            raise MovieError("the diffusers comparison needs the SD VAE (sd-vae) as the autoencoder")
        ref = StableDiffusionInstructPix2PixPipeline(
            vae=vae,
            text_encoder=self.text_encoder,
            tokenizer=self.tokenizer,
            unet=self.unet,
            scheduler=self.make_scheduler(),
            safety_checker=None,
            feature_extractor=None,
            image_encoder=None,
            requires_safety_checker=False,
        )
        ref.set_progress_bar_config(disable=True)
        device = next(self.unet.parameters()).device

        def call(frame, prompt: str, *, steps: int, s_T: float, s_I: float, seed: int):
            image = torch.from_numpy(frame).permute(2, 0, 1)[None].float().div(255).to(device)
            return ref(
                prompt,
                image=image,
                num_inference_steps=steps,
                guidance_scale=s_T,
                image_guidance_scale=s_I,
                generator=torch.Generator(device).manual_seed(seed),
                output_type="np",
            )

        return call, "StableDiffusionInstructPix2PixPipeline"

    @torch.no_grad()
    def sample(
        self,
        image_latents,
        text_emb,
        *,
        steps=None,
        s_T=7.5,
        s_I=1.5,
        null_emb=None,
        generator=None,
        latents=None,
        scheduler=None,
        on_step=None,
    ) -> torch.Tensor:
        """Edit latents: sample from noise conditioned on the source latents, the prompt and the scales."""
        return sample_edit(self, image_latents, text_emb, steps=steps, s_T=s_T, s_I=s_I, null_emb=null_emb,
                           generator=generator, latents=latents, scheduler=scheduler, on_step=on_step)

    def save_pretrained(self, root: str | Path) -> None:
        """unet/, text_encoder/, tokenizer/, scheduler/ in diffusers layout (safetensors)."""
        root = Path(root)
        self.unet.save_pretrained(root / "unet", safe_serialization=True)
        self.text_encoder.save_pretrained(root / "text_encoder", safe_serialization=True)
        self.tokenizer.save_pretrained(root / "tokenizer")
        self.make_scheduler().save_pretrained(root / "scheduler")


def build_unet(size: str, stage: Stage, guidance_inject: str = DEFAULT_GUIDANCE_INJECT) -> UNet2DConditionModel:
    unet = UNet2DConditionModel(**unet_config(size, stage, guidance_inject))
    if stage.embedded:
        zero_guidance_embedding(unet)
    return unet


def build(stage_name: str, ctx: BuildContext, config) -> Pix2PixDenoiser:
    """Random init at ctx.size, or load ctx.weights (a model folder); on the meta device for FLOPs."""
    stage = STAGES[stage_name]
    asked = config.scheduler if config and config.scheduler else None
    scheduler = asked or stage.scheduler
    inject = getattr(config, "guidance_inject", None)
    if ctx.weights is not None:
        den = load(stage, Path(ctx.weights), scheduler, variant=ctx.variant, asked=asked)
        have = guidance_inject_of(den.unet.config)
        if inject and have and inject != have:
            raise MovieError(f"{ctx.weights} takes the guidance scales the '{have}' way, not '{inject}' "
                             "(guidance_inject is fixed by the weights)")
    else:
        torch.manual_seed(ctx.seed)
        standin = ctx.size == "full"
        tokenizer = byte_tokenizer(size=CLIP_VOCAB_SIZE if standin else None)
        with ctx.torch_device:
            unet = build_unet(ctx.size, stage, inject or DEFAULT_GUIDANCE_INJECT)
            text = CLIPTextModel(text_config(ctx.size, tokenizer))
        den = Pix2PixDenoiser(stage, unet, text, tokenizer, scheduler, standin_tokenizer=standin)
    if not ctx.meta:
        den = den.to(device=ctx.torch_device, dtype=ctx.torch_dtype)
    return den.eval().requires_grad_(False)


SCHEDULER_NAMES = {
    "DDIMScheduler": "ddim",
    "EulerAncestralDiscreteScheduler": "euler-ancestral",
    "EulerDiscreteScheduler": "euler",
    "LCMScheduler": "lcm",
}


def folder_scheduler(root: Path) -> Any:
    """The scheduler a model folder ships (scheduler/scheduler_config.json: class, betas, spacing, prediction type),
    or None when it has none."""
    import diffusers
    from diffusers import SchedulerMixin

    path = root / "scheduler" / "scheduler_config.json"
    if not path.is_file():
        return None
    config = read_config(path)
    cls = getattr(diffusers, str(config.get("_class_name")), None)
    if not (isinstance(cls, type) and issubclass(cls, SchedulerMixin)):
        raise MovieError(f"{path}: unknown scheduler class {config.get('_class_name')!r}")
    return load_checked(path, lambda: cls.from_config(config))


def folder_latent_scale(root: Path) -> float:
    """The scaling_factor of the folder's KL VAE (vae/config.json), else SD-1.5's 0.18215."""
    folder = component_folder(root, "vae")
    if folder is None or not (folder / "config.json").is_file():
        return SD_SCALING_FACTOR
    config = read_config(folder / "config.json")
    value = (
        config.get("scaling_factor", SD_SCALING_FACTOR)
        if config.get("_class_name") == "AutoencoderKL"
        else SD_SCALING_FACTOR
    )
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not value > 0:
        raise MovieError(f"{folder / 'config.json'}: scaling_factor must be a positive number, got {value!r}")
    return float(value)


def load(
    stage: Stage, root: Path, scheduler: str, variant: str | None = None, asked: str | None = None
) -> Pix2PixDenoiser:
    """Load a diffusers-format folder (unet/, text_encoder/, tokenizer/), checking the architecture.

    The folder's own scheduler (scheduler/) is sampled with unless a scheduler was `asked` for, and its VAE's
    scaling_factor unscales the image latents; notes say which.

    text_encoder/ and tokenizer/ may live in a folder shared by several models (the manifest's "components" map)."""
    folders = {sub: component_folder(root, sub) for sub in ("unet", "text_encoder", "tokenizer")}
    for sub, folder in folders.items():
        if folder is None or (sub == "unet" and folder != root / sub):
            raise MovieError(f"{root} has no {sub}/ folder: not a diffusers-format model for '{stage.name}'")
    unet_kw = check_component(root / "unet", "diffusion_pytorch_model", variant)
    text_kw = check_component(folders["text_encoder"], "model", variant)
    check_tokenizer(folders["tokenizer"])
    unet_kw |= low_memory_kw()
    unet = load_checked(root / "unet", lambda: UNet2DConditionModel.from_pretrained(root / "unet", **unet_kw))
    expected = unet_config("nano", stage)
    have_top = unet.config.down_block_types[0]
    if unet.config.in_channels != 8:
        raise MovieError(
            f"{root}/unet has {unet.config.in_channels} input channels; '{stage.name}' needs 8 (image-conditioned)"
        )
    if have_top != expected["down_block_types"][0]:
        raise MovieError(
            f"{root}/unet is not the '{stage.name}' architecture (top block {have_top}); use `movie convert` first"
        )
    if stage.embedded != (guidance_inject_of(unet.config) is not None):
        raise MovieError(f"{root}/unet guidance embeddings do not match '{stage.name}'; use `movie convert` first")
    manifest = read_manifest(root)
    if manifest and manifest.get("prediction_type", stage.prediction_type) != stage.prediction_type:
        raise MovieError(
            f"{root} predicts {manifest['prediction_type']}, but '{stage.name}' expects {stage.prediction_type}"
        )
    text = load_checked(
        folders["text_encoder"], lambda: CLIPTextModel.from_pretrained(folders["text_encoder"], **text_kw)
    )
    tokenizer = load_checked(folders["tokenizer"], lambda: CLIPTokenizer.from_pretrained(folders["tokenizer"]))
    standin = bool(manifest and manifest.get("standin_tokenizer"))  # saved from a full-size random init
    own, notes, prediction = folder_scheduler(root), [], None
    if own is not None:
        what = (
            f"{type(own).__name__} ({own.config.prediction_type}, timestep spacing "
            f"{own.config.get('timestep_spacing', 'leading')}, {own.config.beta_schedule} betas)"
        )
        if asked:
            prediction = own.config.prediction_type
            notes.append(f"--scheduler {asked} overrides the folder's scheduler/scheduler_config.json {what}")
            own = None
        else:
            scheduler = SCHEDULER_NAMES.get(type(own).__name__, type(own).__name__)
            if (scheduler, own.config.prediction_type) != (stage.scheduler, stage.prediction_type):  # news only
                notes.append(
                    f"sampling with the folder's scheduler/scheduler_config.json: {what}; --scheduler overrides it"
                )
    scale = folder_latent_scale(root)
    if scale != SD_SCALING_FACTOR:
        notes.append(f"VAE scaling_factor {scale:g} from vae/config.json")
    den = Pix2PixDenoiser(
        stage,
        unet,
        text,
        tokenizer,
        scheduler,
        standin_tokenizer=standin,
        folder_scheduler=own,
        latent_scale=scale,
        notes=notes,
    )
    if prediction is not None:  # the asked-for sampler runs on the folder's prediction type
        den.prediction_type = prediction
    return den


def convert_unet(unet: UNet2DConditionModel, target: str, guidance_inject: str | None = None) -> UNet2DConditionModel:
    """Carry UNet weights into another stage's architecture: drop removed blocks, add zeroed guidance layers.

    guidance_inject: how an embedded target takes the scales ('resnet' or 'time', module docstring); None keeps
    the source's when it has guidance layers, else 'time' (this function's own default, kept for the callers that
    predate the option; the mmg distiller and `movie convert` default to the paper's 'resnet'). A 4-channel
    text-to-image UNet (SD-1.5's) gets 4 zero-initialised image-latent input channels: Sec. 4's Stage 2."""
    stage = STAGES[target]
    cfg = dict(unet.config)
    have = guidance_inject_of(cfg)
    inject = guidance_inject or have or "time"
    if have is not None and stage.embedded and inject != have:
        raise MovieError(f"cannot convert to '{target}' with guidance_inject={inject}: the UNet already takes the "
                         f"scales the '{have}' way")
    # the source's own levels (any count): only the top level's attention and the guidance embedding change
    down, up = list(cfg["down_block_types"]), list(cfg["up_block_types"])
    if not down or not up:
        raise MovieError(f"cannot convert to '{target}': the UNet has no down or up blocks")
    top = unet_config("nano", stage)
    down[0], up[-1] = top["down_block_types"][0], top["up_block_types"][-1]
    cfg.update(down_block_types=tuple(down), up_block_types=tuple(up),
               **guidance_config(stage.embedded, inject, cfg["block_out_channels"][0]))
    text_to_image = cfg["in_channels"] == 4
    if text_to_image:
        cfg["in_channels"] = 8
    elif cfg["in_channels"] != 8:
        raise MovieError(f"cannot convert to '{target}': the UNet has {cfg['in_channels']} input channels (4 or 8)")
    cfg = {k: v for k, v in cfg.items() if not k.startswith("_")}
    new = UNet2DConditionModel(**cfg)
    if stage.embedded:
        zero_guidance_embedding(new)
    src = unet.state_dict()
    dst = new.state_dict()
    dropped = [k for k in src if k not in dst]
    bad = [k for k in dropped if ".attentions." not in k]
    if bad:
        raise MovieError(f"cannot convert to '{target}': weights {bad[:3]} have no place in the target")
    added = [k for k in dst if k not in src]
    if any(not k.startswith("class_embedding.") for k in added):
        raise MovieError(
            f"cannot convert to '{target}': the target has new layers {added[:3]} beyond the guidance embedding"
        )
    for k in dst:
        if k not in src:
            continue
        a, b = src[k], dst[k]
        if a.shape == b.shape:
            dst[k] = a
        elif (k == "conv_in.weight" and text_to_image) or (k.endswith("time_emb_proj.weight") and inject == "resnet"):
            # new input columns (image latents; guidance sinusoids) start at zero: the output is the source's
            if a.shape[0] != b.shape[0] or a.shape[1] > b.shape[1] or a.shape[2:] != b.shape[2:]:
                raise MovieError(f"cannot convert to '{target}': {k} is {tuple(a.shape)}, target wants "
                                 f"{tuple(b.shape)}")
            grown = torch.zeros_like(b)
            grown[:, : a.shape[1]] = a
            dst[k] = grown
        else:
            raise MovieError(f"cannot convert to '{target}': {k} is {tuple(a.shape)}, target wants {tuple(b.shape)}")
    new.load_state_dict(dst)
    return new


def drop_top_attention(unet: UNet2DConditionModel) -> UNet2DConditionModel:
    """The same UNet (its input channels and guidance layers too) with the top level's self- and cross-attention
    removed, every other weight carried over: Mobile-Pix2Pix's block removal on its own, as Sec. 4's Stage 1 applies
    it to the text-to-image SD UNet before finetuning it (the image channels come in Stage 2)."""
    cfg = dict(unet.config)
    down, up = list(cfg["down_block_types"]), list(cfg["up_block_types"])
    if not down or not up:
        raise MovieError("cannot drop the top attention: the UNet has no down or up blocks")
    top = unet_config("nano", STAGES["mobile-pix2pix"])
    new_down, new_up = top["down_block_types"][0], top["up_block_types"][-1]
    if (down[0], up[-1]) == (new_down, new_up):
        raise MovieError("the UNet has no top-level attention to drop (its top blocks are "
                         f"{down[0]} and {up[-1]})")
    down[0], up[-1] = new_down, new_up
    cfg.update(down_block_types=tuple(down), up_block_types=tuple(up))
    new = UNet2DConditionModel(**{k: v for k, v in cfg.items() if not k.startswith("_")})
    removed = ("down_blocks.0.attentions.", f"up_blocks.{len(up) - 1}.attentions.")
    missing, unexpected = new.load_state_dict(unet.state_dict(), strict=False)
    stray = [k for k in unexpected if not k.startswith(removed)]
    if missing or stray:
        raise MovieError(f"cannot drop the top attention: weights {(missing or stray)[:3]} do not carry over")
    return new


def export_tokenizer(tokenizer: Any, length: int, folder: Path) -> dict[str, Any]:
    """tokenizer.json (Hugging Face tokenizers format) of a CLIP tokenizer, truncating and padding to length."""
    import tempfile

    from transformers import CLIPTokenizerFast

    with tempfile.TemporaryDirectory() as tmp:
        tokenizer.save_pretrained(tmp)
        fast = CLIPTokenizerFast.from_pretrained(tmp, from_slow=True)
    backend = fast.backend_tokenizer
    pad = tokenizer.pad_token_id
    backend.enable_truncation(length)
    backend.enable_padding(length=length, pad_id=pad, pad_token=tokenizer.pad_token)
    backend.save(str(Path(folder) / "tokenizer.json"))
    return {
        "file": "tokenizer.json",
        "max_length": length,
        "bos_id": tokenizer.bos_token_id,
        "eos_id": tokenizer.eos_token_id,
        "pad_id": pad,
        "input": "input_ids int64 (1, max_length)",
        "rule": "CLIP BPE: NFC, whitespace runs to one space, lowercase; split into 's 't 're 've 'm 'll 'd, "
        "letter runs, single digits and runs of other non-space characters; each piece's UTF-8 bytes as "
        "GPT-2 byte characters, the last with the suffix </w>, merged by the rank of model.merges; then "
        "bos_id, the ids (truncated to max_length - 2), eos_id, padded with pad_id to max_length "
        "(tokenizers: Tokenizer.from_file(...).encode(prompt).ids)",
    }
