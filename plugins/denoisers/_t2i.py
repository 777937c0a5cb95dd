"""Text-to-image denoisers: SD-1.5's UNet (`stable-diffusion`) and the MobileDiffusion UNet (`mobile-diffusion`,
`mobile-diffusion-lite`), each with a CLIP text encoder and 2-pass classifier-free guidance.

guidance 'cfg2': two network passes per step in one batch, (empty prompt, prompt), combined as
eps_uncond + s_T (eps_text - eps_uncond), in the order and arithmetic of diffusers' StableDiffusionPipeline.
`sample(image_latents, ...)` takes the source latents for their shape only (text-to-image starts from noise).
Sampler: deterministic DDIM on SD-1.5's schedule, 25 steps by default (MobileDiffusion reports DDIM too).
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import torch
from diffusers import UNet2DConditionModel
from diffusers.utils.torch_utils import randn_tensor
from transformers import CLIPTextModel, CLIPTokenizer

from movie_core.components import BuildContext, Denoiser, KVHook, Network
from movie_core.errors import MovieError
from movie_core.weights import check_component, check_tokenizer, component_folder, load_checked, read_config
from movie_plugins.denoisers import _mobile_diffusion as md
from movie_plugins.denoisers._pix2pix import (
    _UNET_SIZES,
    SD_SCALING_FACTOR,
    KVHookAttnProcessor,
    TextEncoderNet,
    UNetNet,
    folder_latent_scale,
    folder_scheduler,
    make_scheduler,
    text_config,
)
from movie_plugins.denoisers._tokenizer import CLIP_VOCAB_SIZE, byte_tokenizer

DEFAULT_STEPS = 25
DEFAULT_SCHEDULER = "ddim"
MD_CLASS = "MobileDiffusionUNet"


def sd_unet_config(size: str) -> dict[str, Any]:
    """diffusers config of SD-1.5's text-to-image UNet (4 input channels) at a size."""
    return dict(
        _UNET_SIZES[size],
        in_channels=4,
        out_channels=4,
        down_block_types=("CrossAttnDownBlock2D", "CrossAttnDownBlock2D", "CrossAttnDownBlock2D", "DownBlock2D"),
        up_block_types=("UpBlock2D", "CrossAttnUpBlock2D", "CrossAttnUpBlock2D", "CrossAttnUpBlock2D"),
    )


class MDNet(torch.nn.Module):
    """(sample, time_features, text_emb) -> noise: one MobileDiffusion UNet pass as a static graph."""

    def __init__(self, unet: md.MobileDiffusionUNet):
        super().__init__()
        self.unet = unet

    def forward(self, sample: torch.Tensor, time_features: torch.Tensor, text_emb: torch.Tensor) -> torch.Tensor:
        return self.unet(sample, time_features, text_emb, time_features=True)


class TextToImageDenoiser(Denoiser):
    """Tokenizer + CLIP text encoder + a 4-channel UNet (diffusers' SD UNet or the MobileDiffusion UNet)."""

    guidance = "cfg2"
    prediction_type = "epsilon"
    default_steps = DEFAULT_STEPS

    def __init__(self, name: str, unet: torch.nn.Module, text_encoder, tokenizer, scheduler_name: str,
                 folder_scheduler: Any = None, latent_scale: float = SD_SCALING_FACTOR,
                 standin_tokenizer: bool = False):
        super().__init__()
        self.stage = name
        self.unet = unet
        self.text_encoder = text_encoder
        self.tokenizer = tokenizer
        self.scheduler_name = scheduler_name
        self.folder_scheduler = folder_scheduler
        if folder_scheduler is not None:
            self.prediction_type = folder_scheduler.config.prediction_type
        self.latent_scale = latent_scale
        self.standin_tokenizer = standin_tokenizer
        # the contract's latent_channels: what the UNet outputs (4 in SD's latent space, 8 in md-vae's)
        self.latent_channels = int(getattr(unet.config, "out_channels", 4))
        self.strength: float | None = None  # img2img (SDEdit): the fraction of the schedule the source is noised to
        self._saved_processors: list[tuple[Any, Any]] | None = None

    @property
    def is_md(self) -> bool:
        return isinstance(self.unet, md.MobileDiffusionUNet)

    # --- networks --------------------------------------------------------------------------

    def networks(self) -> dict[str, Network]:
        nets = self.__dict__.get("_nets")
        if nets is None or nets[0] is not self.unet or nets[1] is not self.text_encoder:
            unet_net = MDNet(self.unet) if self.is_md else UNetNet(self.unet, embedded=False)
            nets = (self.unet, self.text_encoder, {
                "text_encoder": Network(TextEncoderNet(self.text_encoder), ("input_ids",), ("text_emb",)),
                "unet": Network(unet_net, ("sample", "time_features", "text_emb"), ("noise",)),
            })
            self.__dict__["_nets"] = nets
        return nets[2]

    def anchor_layers(self) -> list[str]:
        if self.is_md:
            return [name for name, _ in self.unet.self_attention_layers()]
        return sorted(name for name in self.unet.attn_processors if name.endswith("attn1.processor"))

    def set_kv_hook(self, hook: KVHook | None) -> KVHook | None:
        previous = super().set_kv_hook(hook)
        if self.is_md:
            for _, attn in self.unet.self_attention_layers():
                attn.kv_hook = None if hook is None else self._call_kv_hook
        elif hook is not None and self._saved_processors is None:
            modules = dict(self.unet.named_modules())
            attns = [modules[name[: -len(".processor")]] for name in self.anchor_layers()]
            self._saved_processors = [(a, a.processor) for a in attns]
            for attn, name in zip(attns, self.anchor_layers()):
                attn.processor = KVHookAttnProcessor(self, name)  # type: ignore[arg-type]
        elif hook is None and self._saved_processors is not None:
            for attn, proc in self._saved_processors:
                attn.processor = proc
            self._saved_processors = None
        return previous

    def _call_kv_hook(self, name: str, k: torch.Tensor, v: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        hook = self.kv_hook
        return (k, v) if hook is None else hook(name, k, v)

    def describe(self) -> dict[str, Any]:
        facts = super().describe() | {
            "scheduler": self.scheduler_name,
            "task": "text-to-image",
            "strength": self.strength,
            "unet": MD_CLASS if self.is_md else "UNet2DConditionModel",
            "host": {"cfg": "2 passes per step in one batch: (empty prompt, prompt); "
                            "eps_uncond + s_T * (eps_text - eps_uncond)",
                     "time_features": "sinusoidal timestep embedding of width channels[0], flip_sin_to_cos"},
        }
        if self.standin_tokenizer:
            facts["notes"] = ["random init at full size: a stand-in byte-level tokenizer with CLIP's vocabulary "
                              "size replaces CLIP's BPE vocabulary; prompts are not CLIP tokens"]
        return facts

    # --- text ------------------------------------------------------------------------------

    def tokenize(self, prompts: list[str]) -> tuple[torch.Tensor, list[bool]]:
        length = int(self.tokenizer.model_max_length)
        full = self.tokenizer(prompts, truncation=True, max_length=1 << 20).input_ids
        ids = self.tokenizer(prompts, padding="max_length", max_length=length, truncation=True,
                             return_tensors="pt").input_ids
        return ids, [len(f) > length for f in full]

    # --- one pass and the sampler ------------------------------------------------------------

    def time_features(self, t: Any, batch: int, like: torch.Tensor) -> torch.Tensor:
        t = torch.as_tensor(t, device=like.device).reshape(-1).expand(batch)
        return self.unet.time_proj(t).to(like.dtype)

    def graph_inputs(self, x, t, image_latents, text_emb, s_I=None, s_T=None) -> list[torch.Tensor]:
        """[sample, time_features, text_emb]: image_latents and s_I play no part in text-to-image."""
        batch = x.shape[0]
        return [x, self.time_features(t, batch, x), text_emb.expand(batch, -1, -1)]

    def unet_forward(self, x: torch.Tensor, t: Any, text_emb: torch.Tensor) -> torch.Tensor:
        runner = self.runner("unet")
        if runner is not None:
            return runner(*self.graph_inputs(x, t, x, text_emb))
        if self.is_md:
            return self.unet(x, torch.as_tensor(t, device=x.device), text_emb)
        return self.unet(x, t, encoder_hidden_states=text_emb).sample

    def predict(self, x_t, t, image_latents, text_emb, s_I=None, s_T=7.5, null_emb=None) -> torch.Tensor:
        """Classifier-free guidance with two passes in one batch (empty prompt first, as diffusers); the
        signature of the editing denoisers' predict, image_latents and s_I unused."""
        batch = x_t.shape[0]
        if null_emb is None:
            null_emb = self.encode_prompt([""]).to(text_emb)
        emb = torch.cat([null_emb.expand(batch, -1, -1), text_emb.expand(batch, -1, -1)])
        eps_uncond, eps_text = self.unet_forward(torch.cat([x_t] * 2), t, emb).chunk(2)
        return eps_uncond + s_T * (eps_text - eps_uncond)

    def make_scheduler(self):
        if self.folder_scheduler is not None:
            return type(self.folder_scheduler).from_config(self.folder_scheduler.config)
        return make_scheduler(self.scheduler_name, self.prediction_type)

    @torch.no_grad()
    def sample(self, image_latents, text_emb, *, steps=None, s_T=7.5, s_I=1.5, null_emb=None, generator=None,
               latents=None, on_step=None, scheduler=None) -> torch.Tensor:
        """Latents from noise for the prompt (image_latents: shape, device and dtype only), or with `strength` set
        the source latents noised to that point of the schedule and denoised from there (SDEdit, the order of
        diffusers' StableDiffusionImg2ImgPipeline): int(steps * strength) steps run. `latents` is the noise."""
        scheduler = scheduler or self.make_scheduler()
        steps = steps or self.default_steps
        scheduler.set_timesteps(steps, device=image_latents.device)
        if latents is None:
            latents = randn_tensor(image_latents.shape, generator=generator, device=image_latents.device,
                                   dtype=image_latents.dtype)
        timesteps = scheduler.timesteps
        if self.strength is None:
            latents = latents * scheduler.init_noise_sigma
        else:
            start = steps - min(max(int(steps * self.strength), 1), steps)
            timesteps = timesteps[start * scheduler.order:]
            if hasattr(scheduler, "set_begin_index"):
                scheduler.set_begin_index(start * scheduler.order)
            latents = scheduler.add_noise(image_latents, latents, timesteps[:1].repeat(image_latents.shape[0]))
        if null_emb is None:
            null_emb = self.encode_prompt([""]).to(text_emb)
        for i, t in enumerate(timesteps):
            if on_step is not None:
                on_step(i, t)
            model_in = scheduler.scale_model_input(latents, t)
            out = self.predict(model_in, t, image_latents, text_emb, s_T=s_T, null_emb=null_emb)
            latents = scheduler.step(out, t, latents, generator=generator).prev_sample
        return latents

    # --- weights -----------------------------------------------------------------------------

    def save_pretrained(self, root: str | Path) -> None:
        root = Path(root)
        if self.is_md:
            save_md_unet(self.unet, root / "unet")
        else:
            self.unet.save_pretrained(root / "unet", safe_serialization=True)
        self.text_encoder.save_pretrained(root / "text_encoder", safe_serialization=True)
        self.tokenizer.save_pretrained(root / "tokenizer")
        self.make_scheduler().save_pretrained(root / "scheduler")


def save_md_unet(unet: md.MobileDiffusionUNet, folder: Path) -> None:
    from safetensors.torch import save_file

    folder.mkdir(parents=True, exist_ok=True)
    (folder / "config.json").write_text(json.dumps({"_class_name": MD_CLASS, **unet.config.to_dict()}, indent=1))
    save_file({k: v.contiguous() for k, v in unet.state_dict().items()}, folder / "diffusion_pytorch_model.safetensors")


def load_md_unet(folder: Path) -> md.MobileDiffusionUNet:
    from safetensors.torch import load_file

    config = read_config(folder / "config.json")
    if config.get("_class_name") != MD_CLASS:
        raise MovieError(f"{folder}/config.json is not a {MD_CLASS} (class {config.get('_class_name')!r})")
    cfg = md.MDConfig(**{k: v for k, v in config.items() if not k.startswith("_")})
    unet = md.MobileDiffusionUNet(cfg)
    unet.load_state_dict(load_file(folder / "diffusion_pytorch_model.safetensors"))
    return unet


def _random_unet(name: str, size: str, channels: int = 4) -> torch.nn.Module:
    if name == "stable-diffusion":
        return UNet2DConditionModel(**sd_unet_config(size))
    return md.build_unet(name, size, in_channels=channels, out_channels=channels)


def latent_channels(config) -> int:
    """The latent channels a MobileDiffusion denoiser's config asks for (its `latent_space`; None: SD's 4)."""
    from movie_plugins.denoisers import LATENT_CHANNELS

    return LATENT_CHANNELS[getattr(config, "latent_space", None) or "sd1"]


def check_channels(name: str, folder: Path, have: int, want: int, space: str | None) -> None:
    if have != want:
        raise MovieError(f"{folder}/unet takes {have} input channels, but '{name}' in latent space {space or 'sd1'} "
                         f"needs {want}")


def build(name: str, ctx: BuildContext, config) -> TextToImageDenoiser:
    """Random init at ctx.size, or load ctx.weights (a diffusers-layout folder); on the meta device for FLOPs."""
    scheduler = (config.scheduler if config is not None and config.scheduler else None) or DEFAULT_SCHEDULER
    channels = latent_channels(config)
    if ctx.weights is not None:
        den = load(name, Path(ctx.weights), scheduler, asked=bool(config is not None and config.scheduler))
        if den.is_md:
            check_channels(name, Path(ctx.weights), den.unet.config.in_channels, channels,
                           getattr(config, "latent_space", None))
    else:
        torch.manual_seed(ctx.seed)
        standin = ctx.size == "full"
        tokenizer = byte_tokenizer(size=CLIP_VOCAB_SIZE if standin else None)
        with ctx.torch_device:
            unet = _random_unet(name, ctx.size, channels)
            text = CLIPTextModel(text_config(ctx.size, tokenizer))
        den = TextToImageDenoiser(name, unet, text, tokenizer, scheduler, standin_tokenizer=standin)
    den.strength = getattr(config, "strength", None)
    attention = getattr(config, "attention", None)
    if attention and isinstance(den.unet, md.MobileDiffusionUNet):  # softmax <-> relu on the same weights
        den.unet.set_attention(attention)
    if not ctx.meta:
        den = den.to(device=ctx.torch_device, dtype=ctx.torch_dtype)
    return den.eval().requires_grad_(False)


def load(name: str, root: Path, scheduler: str, asked: bool = False) -> TextToImageDenoiser:
    """A diffusers-layout folder: unet/ (4 input channels), text_encoder/, tokenizer/, optional scheduler/ and vae/."""
    folders = {sub: component_folder(root, sub) for sub in ("unet", "text_encoder", "tokenizer")}
    for sub, folder in folders.items():
        if folder is None:
            raise MovieError(f"{root} has no {sub}/ folder: not a diffusers-format model for '{name}'")
    unet_dir = folders["unet"]
    assert unet_dir is not None
    cls = read_config(unet_dir / "config.json").get("_class_name")
    want = "UNet2DConditionModel" if name == "stable-diffusion" else MD_CLASS
    if cls != want:
        raise MovieError(f"{unet_dir} holds a {cls}, but '{name}' needs a {want}")
    if name == "stable-diffusion":
        kw = check_component(unet_dir, "diffusion_pytorch_model", None)
        unet = load_checked(unet_dir, lambda: UNet2DConditionModel.from_pretrained(unet_dir, **kw))
        if unet.config.in_channels != 4:
            raise MovieError(f"{unet_dir} has {unet.config.in_channels} input channels; '{name}' needs 4 "
                             "(text-to-image)")
    else:
        unet = load_checked(unet_dir, lambda: load_md_unet(unet_dir))
    text_dir, tok_dir = folders["text_encoder"], folders["tokenizer"]
    assert text_dir is not None and tok_dir is not None
    text_kw = check_component(text_dir, "model", None)
    check_tokenizer(tok_dir)
    text = load_checked(text_dir, lambda: CLIPTextModel.from_pretrained(text_dir, **text_kw))
    tokenizer = load_checked(tok_dir, lambda: CLIPTokenizer.from_pretrained(tok_dir))
    own = folder_scheduler(root)
    den = TextToImageDenoiser(name, unet, text, tokenizer, scheduler, folder_scheduler=None if asked else own,
                              latent_scale=folder_latent_scale(root))
    if asked and own is not None:  # another sampler, the same network: it still predicts what the folder says
        den.prediction_type = own.config.prediction_type
    return den
