"""InstructPix2Pix and its MoViE descendants: one UNet family, four stages (paper Sec. 3).

instruct-pix2pix      SD-1.5 UNet with 8 input channels, 3-pass CFG (Eq. 1), epsilon, DDIM, 10 steps
mobile-pix2pix        the same without self-/cross-attention at the highest UNet resolution
mobile-pix2pix-mmg    + guidance-scale embeddings (s_I, s_T) added to the time embedding, one pass per step
mobile-pix2pix-1step  + v-prediction, LCM scheduler, 1 step, guidance embeddings kept

The multi-step stages sample with deterministic DDIM (eta 0) by default; the paper does not name its sampler, and
InstructPix2Pix's own scripts use Euler ancestral. Measured on the nano family (held-out procedural edits, 10
steps, s_T 7.5, s_I 1.5, PSNR against the ground truth): DDIM 14.8 dB vs Euler ancestral 11.2 dB for the base
model, and 11.9 vs 7.7 (mobile) and 13.5 vs 7.6 (mmg) for an earlier, shorter-trained family: with few steps the
ancestral sampler's fresh noise at each step is more than a small model corrects. Every frame of a video also gets
the same trajectory without per-step noise. `--denoiser-option scheduler=euler-ancestral` (the DenoiserConfig
option) brings the ancestral sampler back.
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

from movie_core.components import BuildContext, Denoiser, KVHook, Network
from movie_core.errors import MovieError
from movie_core.weights import check_folder, component_folder, read_manifest, use_safetensors
from movie_plugins.denoisers._tokenizer import CLIP_VOCAB_SIZE, byte_tokenizer

SD_SCALING_FACTOR = 0.18215
GUIDANCE_EMBED_SCALE = 100.0  # s -> sinusoid "timestep" s * 100: s_T in [2, 14] spans [200, 1400]


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


def unet_config(size: str, stage: Stage) -> dict:
    """diffusers UNet2DConditionModel config for a stage at a size."""
    top_down = "DownBlock2D" if stage.mobile else "CrossAttnDownBlock2D"
    top_up = "UpBlock2D" if stage.mobile else "CrossAttnUpBlock2D"
    cfg = dict(
        _UNET_SIZES[size],
        in_channels=8,
        out_channels=4,
        down_block_types=(top_down, "CrossAttnDownBlock2D", "CrossAttnDownBlock2D", "DownBlock2D"),
        up_block_types=("UpBlock2D", "CrossAttnUpBlock2D", "CrossAttnUpBlock2D", top_up),
    )
    embedded = stage.embedded
    cfg.update(
        class_embed_type="projection" if embedded else None,
        projection_class_embeddings_input_dim=2 * cfg["block_out_channels"][0] if embedded else None,
    )
    return cfg


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
    """Zero the guidance projection's last layer so the model starts identical to its teacher."""
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


class Pix2PixDenoiser(Denoiser):
    """Tokenizer + CLIP text encoder + 8-channel UNet + the stage's sampling defaults."""

    def __init__(self, stage: Stage, unet, text_encoder, tokenizer, scheduler_name: str,
                 standin_tokenizer: bool = False):
        super().__init__()
        self.stage_info = stage
        self.stage = stage.name
        self.unet = unet
        self.text_encoder = text_encoder
        self.tokenizer = tokenizer
        self.scheduler_name = scheduler_name
        self.standin_tokenizer = standin_tokenizer
        self.guidance = "embedded" if stage.embedded else "cfg3"
        self.prediction_type = stage.prediction_type
        self.default_steps = stage.steps
        self._saved_processors: list[tuple[Any, Any]] | None = None

    # --- the contract's network surface ----------------------------------------------------

    def networks(self) -> dict[str, Network]:
        # built on demand (not submodules: the denoiser's own state dict stays unet + text encoder)
        nets = self.__dict__.get("_nets")
        if nets is None or nets[0] is not self.unet or nets[1] is not self.text_encoder:
            guidance = ("guidance_features",) if self.stage_info.embedded else ()
            unet_inputs = ("sample", "time_features", "text_emb", *guidance)
            nets = (self.unet, self.text_encoder, {
                "text_encoder": Network(TextEncoderNet(self.text_encoder), ("input_ids",), ("text_emb",)),
                "unet": Network(UNetNet(self.unet, self.stage_info.embedded), unet_inputs, ("noise",)),
            })
            self.__dict__["_nets"] = nets
        return nets[2]

    def anchor_layers(self) -> list[str]:
        return sorted(name for name in self.unet.attn_processors if name.endswith("attn1.processor"))

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
            "standin_tokenizer": self.standin_tokenizer,
            "host": {
                "text": f"input_ids: the tokenizer's ids padded to {self.max_prompt_tokens} "
                        "(tokenizer/ in the model folder)",
                "time_features": f"sinusoidal timestep embedding, dim {unet.block_out_channels[0]}, "
                                 f"flip_sin_to_cos={unet.flip_sin_to_cos}, freq_shift={unet.freq_shift}",
                "sample": f"concat(noisy latents, image latents / {SD_SCALING_FACTOR}) on channels",
            },
        }
        if self.guidance == "embedded":
            facts["host"]["guidance_features"] = (f"concat(sinusoid({GUIDANCE_EMBED_SCALE:g} * s_I), "
                                                  f"sinusoid({GUIDANCE_EMBED_SCALE:g} * s_T)), each like time_features")
        else:
            facts["host"]["cfg"] = ("3 passes per step in one batch: (text, image), (null text, image), "
                                    "(null text, zero image)")
        if self.standin_tokenizer:
            facts["notes"] = [
                "random init at full size: a stand-in byte-level tokenizer with CLIP's vocabulary size (49408) "
                "and length (77) replaces CLIP's BPE vocabulary (not available offline); prompts are not CLIP tokens"
            ]
        return facts

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
        dim = config.projection_class_embeddings_input_dim // 2
        parts = []
        for s in (s_I, s_T):
            s = torch.as_tensor(s, dtype=torch.float32, device=like.device).reshape(-1).expand(batch)
            parts.append(
                get_timestep_embedding(
                    s * GUIDANCE_EMBED_SCALE, dim,
                    flip_sin_to_cos=config.flip_sin_to_cos, downscale_freq_shift=config.freq_shift,
                )
            )
        return torch.cat(parts, dim=1).to(like.dtype)

    def unet_forward(self, x, t, image_latents, text_emb, s_I=None, s_T=None) -> torch.Tensor:
        """One UNet pass; image_latents are in SD's scaled space and are unscaled here (as IP2P was trained).

        Through the backend's runner when one is routed (on the static graph's inputs), else the UNet itself."""
        runner = self.runner("unet")
        if runner is not None:
            return runner(*self.graph_inputs(x, t, image_latents, text_emb, s_I, s_T))
        cond = image_latents / SD_SCALING_FACTOR
        labels = self.guidance_labels(s_I, s_T, x.shape[0], x) if self.stage_info.embedded else None
        return self.unet(torch.cat([x, cond], dim=1), t, encoder_hidden_states=text_emb, class_labels=labels).sample

    def graph_inputs(self, x, t, image_latents, text_emb, s_I=None, s_T=None) -> list[torch.Tensor]:
        """unet_forward's inputs for a static graph: the time and guidance sinusoids computed here, on the host.

        [sample (x and the unscaled image latents), time_features, text_emb] + [guidance_features] when embedded.
        """
        batch = x.shape[0]
        t = torch.as_tensor(t, device=x.device).reshape(-1).expand(batch)
        time_features = self.unet.time_proj(t).to(x.dtype)
        inputs = [torch.cat([x, image_latents / SD_SCALING_FACTOR], dim=1), time_features,
                  text_emb.expand(batch, -1, -1)]
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
        return make_scheduler(self.scheduler_name, self.prediction_type)

    def reference_pipeline(self, autoencoder) -> tuple[Any, str]:
        """diffusers' StableDiffusionInstructPix2PixPipeline on these very modules (for `movie bench --compare`):
        a callable (uint8 HxWx3 frame, prompt, steps, s_T, s_I, seed) -> image, and its name."""
        from diffusers import StableDiffusionInstructPix2PixPipeline

        vae = getattr(autoencoder, "vae", None)
        if vae is None:
            raise MovieError("the diffusers comparison needs the SD VAE (sd-vae) as the autoencoder")
        ref = StableDiffusionInstructPix2PixPipeline(
            vae=vae, text_encoder=self.text_encoder, tokenizer=self.tokenizer, unet=self.unet,
            scheduler=self.make_scheduler(), safety_checker=None, feature_extractor=None, image_encoder=None,
            requires_safety_checker=False,
        )
        ref.set_progress_bar_config(disable=True)
        device = next(self.unet.parameters()).device

        def call(frame, prompt: str, *, steps: int, s_T: float, s_I: float, seed: int):
            image = torch.from_numpy(frame).permute(2, 0, 1)[None].float().div(255).to(device)
            return ref(prompt, image=image, num_inference_steps=steps, guidance_scale=s_T, image_guidance_scale=s_I,
                       generator=torch.Generator(device).manual_seed(seed), output_type="np")

        return call, "StableDiffusionInstructPix2PixPipeline"

    @torch.no_grad()
    def sample(self, image_latents, text_emb, *, steps=None, s_T=7.5, s_I=1.5, null_emb=None,
               generator=None, latents=None, scheduler=None, on_step=None) -> torch.Tensor:
        """Edit latents: sample from noise conditioned on the source latents, the prompt and the scales."""
        scheduler = scheduler or self.make_scheduler()
        scheduler.set_timesteps(steps or self.default_steps, device=image_latents.device)
        if latents is None:
            latents = randn_tensor(image_latents.shape, generator=generator, device=image_latents.device,
                                   dtype=image_latents.dtype)
        latents = latents * scheduler.init_noise_sigma
        if self.guidance == "cfg3" and null_emb is None:
            null_emb = self.encode_prompt([""]).to(text_emb)
        for i, t in enumerate(scheduler.timesteps):
            if on_step is not None:
                on_step(i, t)
            model_in = scheduler.scale_model_input(latents, t)
            out = self.predict(model_in, t, image_latents, text_emb, s_I, s_T, null_emb=null_emb)
            latents = scheduler.step(out, t, latents, generator=generator).prev_sample
        return latents

    def save_pretrained(self, root: str | Path) -> None:
        """unet/, text_encoder/, tokenizer/, scheduler/ in diffusers layout (safetensors)."""
        root = Path(root)
        self.unet.save_pretrained(root / "unet", safe_serialization=True)
        self.text_encoder.save_pretrained(root / "text_encoder", safe_serialization=True)
        self.tokenizer.save_pretrained(root / "tokenizer")
        self.make_scheduler().save_pretrained(root / "scheduler")


def build_unet(size: str, stage: Stage) -> UNet2DConditionModel:
    unet = UNet2DConditionModel(**unet_config(size, stage))
    if stage.embedded:
        zero_guidance_embedding(unet)
    return unet


def build(stage_name: str, ctx: BuildContext, config) -> Pix2PixDenoiser:
    """Random init at ctx.size, or load ctx.weights (a model folder); on the meta device for FLOPs."""
    stage = STAGES[stage_name]
    scheduler = (config.scheduler if config and config.scheduler else None) or stage.scheduler
    if ctx.weights is not None:
        den = load(stage, Path(ctx.weights), scheduler)
    else:
        torch.manual_seed(ctx.seed)
        standin = ctx.size == "full"
        tokenizer = byte_tokenizer(size=CLIP_VOCAB_SIZE if standin else None)
        with ctx.torch_device:
            unet = build_unet(ctx.size, stage)
            text = CLIPTextModel(text_config(ctx.size, tokenizer))
        den = Pix2PixDenoiser(stage, unet, text, tokenizer, scheduler, standin_tokenizer=standin)
    if not ctx.meta:
        den = den.to(device=ctx.torch_device, dtype=ctx.torch_dtype)
    return den.eval().requires_grad_(False)


def load(stage: Stage, root: Path, scheduler: str) -> Pix2PixDenoiser:
    """Load a diffusers-format folder (unet/, text_encoder/, tokenizer/), checking the architecture.

    text_encoder/ and tokenizer/ may live in a folder shared by several models (the manifest's "components" map)."""
    folders = {sub: component_folder(root, sub) for sub in ("unet", "text_encoder", "tokenizer")}
    for sub, folder in folders.items():
        if folder is None or (sub == "unet" and folder != root / sub):
            raise MovieError(f"{root} has no {sub}/ folder: not a diffusers-format model for '{stage.name}'")
    check_folder(root / "unet")
    check_folder(folders["text_encoder"])
    unet = UNet2DConditionModel.from_pretrained(root / "unet", use_safetensors=use_safetensors())
    expected = unet_config("nano", stage)
    have_top = unet.config.down_block_types[0]
    if unet.config.in_channels != 8:
        raise MovieError(f"{root}/unet has {unet.config.in_channels} input channels; "
                         f"'{stage.name}' needs 8 (image-conditioned)")
    if have_top != expected["down_block_types"][0]:
        raise MovieError(
            f"{root}/unet is not the '{stage.name}' architecture (top block {have_top}); use `movie convert` first"
        )
    if stage.embedded != (unet.config.class_embed_type == "projection"):
        raise MovieError(f"{root}/unet guidance embeddings do not match '{stage.name}'; use `movie convert` first")
    manifest = read_manifest(root)
    if manifest and manifest.get("prediction_type", stage.prediction_type) != stage.prediction_type:
        raise MovieError(
            f"{root} predicts {manifest['prediction_type']}, but '{stage.name}' expects {stage.prediction_type}"
        )
    text = CLIPTextModel.from_pretrained(folders["text_encoder"], use_safetensors=use_safetensors())
    tokenizer = CLIPTokenizer.from_pretrained(folders["tokenizer"])
    standin = bool(manifest and manifest.get("standin_tokenizer"))  # saved from a full-size random init
    return Pix2PixDenoiser(stage, unet, text, tokenizer, scheduler, standin_tokenizer=standin)


def convert_unet(unet: UNet2DConditionModel, target: str) -> UNet2DConditionModel:
    """Carry UNet weights into another stage's architecture: drop removed blocks, add zeroed guidance layers."""
    stage = STAGES[target]
    cfg = dict(unet.config)
    cfg.update(unet_config("nano", stage))
    for key in _UNET_SIZES["nano"]:
        cfg[key] = unet.config[key]
    if stage.embedded:  # sized to the source's channels, as unet_config does (not nano's)
        cfg["projection_class_embeddings_input_dim"] = 2 * cfg["block_out_channels"][0]
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
        raise MovieError(f"cannot convert to '{target}': "
                         f"the target has new layers {added[:3]} beyond the guidance embedding")
    for k in dst:
        if k in src:
            if src[k].shape != dst[k].shape:
                raise MovieError(f"cannot convert to '{target}': "
                                 f"{k} is {tuple(src[k].shape)}, target wants {tuple(dst[k].shape)}")
            dst[k] = src[k]
    new.load_state_dict(dst)
    return new
