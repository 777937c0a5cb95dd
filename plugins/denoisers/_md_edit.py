"""The MobileDiffusion UNet as an instruction-editing backbone (issue 22, item 4): MoViE's stages on it.

mobile-diffusion-pix2pix        8 input channels (noisy latents + source latents / 0.18215), 3-pass CFG (MoViE
                                Eq. 1), epsilon, DDIM 10 steps: InstructPix2Pix's recipe on the MD UNet
mobile-diffusion-pix2pix-mmg    + guidance embeddings (s_I, s_T sinusoids added to the time embedding, one pass),
                                epsilon, DDIM 10 steps: MoViE's guidance-distilled Stage 3 on the MD UNet
mobile-diffusion-pix2pix-1step  the same network, v-prediction, LCM, 1 step: the MoViE 1-step stage on the MD UNet

The sampler loop, guidance formula and host features are the Pix2Pix family's (plugins/denoisers/_pix2pix.py);
only the network differs. MoViE's distillers (pix2pix-finetune, mmg, vpred, adversarial) train these stages
through the editing-stage methods both families share (`restaged`, `family_stage`, `guidance_embedded_unet`,
`unet_forward` with the image latents and scales): see plugins/distillers/_common.py.
"""

from __future__ import annotations

from typing import Any

import attrs
import torch
from diffusers.models.embeddings import get_timestep_embedding
from transformers import CLIPTextModel

from movie_core.components import BuildContext, Network, NetworkSplit
from movie_plugins.denoisers import _mobile_diffusion as md
from movie_plugins.denoisers import _t2i
from movie_plugins.denoisers._pix2pix import (
    GUIDANCE_EMBED_SCALE,
    STAGES,
    Stage,
    TextEncoderNet,
    sample_edit,
    text_config,
)
from movie_plugins.denoisers._tokenizer import CLIP_VOCAB_SIZE, byte_tokenizer

# each MD stage samples and is trained as the Pix2Pix stage of the same role (its own name; no top attention to
# drop: the MD UNet has no attention at its outer levels, so every MD stage counts as mobile)
EDIT_STAGES = {
    md_name: attrs.evolve(STAGES[p2p], name=md_name, mobile=True)
    for md_name, p2p in (("mobile-diffusion-pix2pix", "instruct-pix2pix"),
                         ("mobile-diffusion-pix2pix-mmg", "mobile-pix2pix-mmg"),
                         ("mobile-diffusion-pix2pix-1step", "mobile-pix2pix-1step"))
}
FAMILY_STAGES = {"cfg3": "mobile-diffusion-pix2pix", "mmg": "mobile-diffusion-pix2pix-mmg",
                 "1step": "mobile-diffusion-pix2pix-1step"}


class MDEditNet(torch.nn.Module):
    """(sample, time_features, text_emb[, guidance_features]) -> model output: one pass as a static graph."""

    def __init__(self, unet: md.MobileDiffusionUNet):
        super().__init__()
        self.unet = unet

    def forward(self, sample, time_features, text_emb, *guidance):
        return self.unet(sample, time_features, text_emb, time_features=True,
                         guidance=guidance[0] if guidance else None)


class MDEditDenoiser(_t2i.TextToImageDenoiser):
    """Tokenizer + CLIP text encoder + the 8-channel MobileDiffusion UNet, sampled like the Pix2Pix stages."""

    def __init__(self, stage: Stage, unet: md.MobileDiffusionUNet, text_encoder, tokenizer, scheduler_name: str,
                 **kw: Any):
        super().__init__(stage.name, unet, text_encoder, tokenizer, scheduler_name, **kw)
        self.stage_info = stage
        self.guidance = "embedded" if stage.embedded else "cfg3"
        if kw.get("folder_scheduler") is None:
            self.prediction_type = stage.prediction_type
        self.default_steps = stage.steps

    def networks(self) -> dict[str, Network]:
        nets = self.__dict__.get("_nets")
        if nets is None or nets[0] is not self.unet or nets[1] is not self.text_encoder:
            guidance = ("guidance_features",) if self.stage_info.embedded else ()
            nets = (self.unet, self.text_encoder, {
                "text_encoder": Network(TextEncoderNet(self.text_encoder), ("input_ids",), ("text_emb",)),
                "unet": Network(MDEditNet(self.unet), ("sample", "time_features", "text_emb", *guidance), ("noise",)),
            })
            self.__dict__["_nets"] = nets
        return nets[2]

    def network_split(self) -> NetworkSplit | None:
        """The 'unet' network (on the same graph inputs) cut after the top level, for Clockwork."""
        split = self.__dict__.get("_split")
        if split is None or split[0] is not self.unet:
            if len(self.unet.config.channels) < 2:
                return None
            split = (self.unet, NetworkSplit(head=md.MDHead(self.unet), core=md.MDCore(self.unet),
                                             tail=md.MDTail(self.unet)))
            self.__dict__["_split"] = split
        return split[1]

    def describe(self) -> dict[str, Any]:
        facts = super().describe() | {"task": "edit", "guidance_embed_scale": GUIDANCE_EMBED_SCALE
                                      if self.guidance == "embedded" else None}
        facts["host"] = {
            "time_features": facts["host"]["time_features"],
            "sample": f"concat(noisy latents, image latents / {self.latent_scale:g}) on channels",
        }
        if self.guidance == "embedded":
            facts["host"]["guidance_features"] = (f"concat(sinusoid({GUIDANCE_EMBED_SCALE:g} * s_I), "
                                                  f"sinusoid({GUIDANCE_EMBED_SCALE:g} * s_T)), each like time_features")
        else:
            facts["host"]["cfg"] = "3 passes per step in one batch: (text, image), (null text, image), (null, zero)"
        return facts

    def guidance_features(self, s_I, s_T, batch: int, like: torch.Tensor) -> torch.Tensor:
        cfg = self.unet.config
        parts = []
        for s in (s_I, s_T):
            s = torch.as_tensor(s, dtype=torch.float32, device=like.device).reshape(-1).expand(batch)
            parts.append(get_timestep_embedding(s * GUIDANCE_EMBED_SCALE, cfg.channels[0],
                                                flip_sin_to_cos=cfg.flip_sin_to_cos,
                                                downscale_freq_shift=cfg.freq_shift))
        return torch.cat(parts, dim=1).to(like.dtype)

    def graph_inputs(self, x, t, image_latents, text_emb, s_I=None, s_T=None) -> list[torch.Tensor]:
        batch = x.shape[0]
        inputs = [torch.cat([x, image_latents / self.latent_scale], dim=1), self.time_features(t, batch, x),
                  text_emb.expand(batch, -1, -1)]
        if self.stage_info.embedded:
            inputs.append(self.guidance_features(s_I, s_T, batch, x))
        return inputs

    guidance_labels = guidance_features  # the Pix2Pix family's name for them (the adversarial discriminator's)

    def unet_forward(self, x, t, image_latents, text_emb, s_I=None, s_T=None) -> torch.Tensor:  # type: ignore[override]
        """One UNet pass on the editing stages' inputs (the Pix2Pix family's signature; the distillers call it)."""
        inputs = self.graph_inputs(x, t, image_latents, text_emb, s_I, s_T)
        runner = self.runner("unet")
        if runner is not None:
            return runner(*inputs)
        return self.networks()["unet"].module(*inputs)

    # --- the editing-stage contract MoViE's distillers train through ----------------------

    def family_stage(self, role: str) -> str:
        """This family's stage for a MoViE role: 'cfg3', 'mmg' (guidance embedded, epsilon) or '1step'."""
        return FAMILY_STAGES[role]

    def guidance_embedded_unet(self, guidance_inject: str = "resnet") -> md.MobileDiffusionUNet:
        """A copy of the UNet with a zero-initialised guidance embedding (MD has one way to take the scales: added
        to the time embedding; guidance_inject is the Pix2Pix family's choice and is not used here)."""
        return convert_md_unet(self.unet, FAMILY_STAGES["mmg"])

    def restaged(self, stage: str, unet: torch.nn.Module | None = None, scheduler: str | None = None,
                 prediction_type: str | None = None) -> MDEditDenoiser:
        """A denoiser of another MD stage sharing nothing with this one: its UNet (or `unet`), a copy of its text
        tower; the stage's scheduler and prediction type unless given."""
        import copy

        info = EDIT_STAGES[stage]
        if prediction_type is not None:
            info = attrs.evolve(info, prediction_type=prediction_type)
        unet = unet if unet is not None else copy.deepcopy(self.unet)
        if bool(unet.config.guidance_embed) != info.embedded:
            raise ValueError(f"'{stage}' {'needs' if info.embedded else 'has no'} guidance embedding")
        return MDEditDenoiser(info, unet, copy.deepcopy(self.text_encoder), self.tokenizer,
                              scheduler or info.scheduler, latent_scale=self.latent_scale,
                              standin_tokenizer=self.standin_tokenizer)

    def predict(self, x_t, t, image_latents, text_emb, s_I=1.5, s_T=7.5, null_emb=None) -> torch.Tensor:
        """MoViE Eq. 1 with three passes in one batch, or one embedded pass."""
        batch = x_t.shape[0]
        text_emb = text_emb.expand(batch, -1, -1)
        if self.guidance == "embedded":
            return self.unet_forward(x_t, t, image_latents, text_emb, s_I, s_T)
        if null_emb is None:
            null_emb = self.encode_prompt([""]).to(text_emb)
        null_emb = null_emb.expand(batch, -1, -1)
        img = torch.cat([image_latents, image_latents, torch.zeros_like(image_latents)])
        if torch.is_tensor(t) and t.ndim == 1 and t.numel() == batch > 1:
            t = t.repeat(3)  # per-sample timesteps (training): one per pass
        out = self.unet_forward(torch.cat([x_t] * 3), t, img, torch.cat([text_emb, null_emb, null_emb]))
        eps_text, eps_image, eps_uncond = out.chunk(3)
        s_I = torch.as_tensor(s_I, dtype=x_t.dtype, device=x_t.device).reshape(-1, 1, 1, 1)
        s_T = torch.as_tensor(s_T, dtype=x_t.dtype, device=x_t.device).reshape(-1, 1, 1, 1)
        return eps_uncond + s_T * (eps_text - eps_image) + s_I * (eps_image - eps_uncond)

    @torch.no_grad()
    def sample(self, image_latents, text_emb, *, steps=None, s_T=7.5, s_I=1.5, null_emb=None, generator=None,
               latents=None, on_step=None, scheduler=None) -> torch.Tensor:
        """Edited latents: from noise, conditioned on the source latents, the prompt and the scales."""
        return sample_edit(self, image_latents, text_emb, steps=steps, s_T=s_T, s_I=s_I, null_emb=null_emb,
                           generator=generator, latents=latents, scheduler=scheduler, on_step=on_step)


def edit_config(name: str, size: str, channels: int = 4) -> md.MDConfig:
    """The editing UNet: noisy latents + source latents in (2 x channels), channels out."""
    stage = EDIT_STAGES[name]
    return attrs.evolve(md.config_for("mobile-diffusion", size), in_channels=2 * channels, out_channels=channels,
                        guidance_embed=stage.embedded)


def build(name: str, ctx: BuildContext, config) -> MDEditDenoiser:
    """Random init at ctx.size, or a folder written by save_pretrained (unet/ a MobileDiffusionUNet)."""
    from pathlib import Path

    stage = EDIT_STAGES[name]
    asked = config.scheduler if config is not None and config.scheduler else None
    scheduler = asked or stage.scheduler
    channels = _t2i.latent_channels(config)
    # md-vae's latents are unit-scaled already: the source conditioning takes them as they are (SD's latents are
    # unscaled by the VAE's scaling_factor first, as InstructPix2Pix was trained)
    md8 = channels != 4
    if ctx.weights is not None:
        loaded = _t2i.load("mobile-diffusion", Path(ctx.weights), scheduler, asked=bool(asked))
        if loaded.unet.config.in_channels != 2 * channels or loaded.unet.config.guidance_embed != stage.embedded:
            from movie_core.errors import MovieError

            raise MovieError(f"{ctx.weights}/unet is not a '{name}' UNet ({2 * channels} input channels"
                             f"{', guidance embedding' if stage.embedded else ', no guidance embedding'})")
        den = MDEditDenoiser(stage, loaded.unet, loaded.text_encoder, loaded.tokenizer, scheduler,
                             folder_scheduler=loaded.folder_scheduler,
                             latent_scale=1.0 if md8 else loaded.latent_scale)
    else:
        torch.manual_seed(ctx.seed)
        standin = ctx.size == "full"
        tokenizer = byte_tokenizer(size=CLIP_VOCAB_SIZE if standin else None)
        with ctx.torch_device:
            unet = md.MobileDiffusionUNet(edit_config(name, ctx.size, channels))
            text = CLIPTextModel(text_config(ctx.size, tokenizer))
        den = MDEditDenoiser(stage, unet, text, tokenizer, scheduler, standin_tokenizer=standin,
                             **({"latent_scale": 1.0} if md8 else {}))
    if not ctx.meta:
        den = den.to(device=ctx.torch_device, dtype=ctx.torch_dtype)
    return den.eval().requires_grad_(False)


def convert_md_unet(unet: md.MobileDiffusionUNet, target: str) -> md.MobileDiffusionUNet:
    """Carry a MobileDiffusion UNet's weights into `target`'s architecture: a 4-channel (text-to-image) input conv
    gets zero weights for the 4 source-latent channels (InstructPix2Pix's initialisation, so the model starts as
    its text-to-image self), and a guidance embedding is added zeroed (or dropped when the target has none)."""
    stage = EDIT_STAGES[target]
    channels = unet.config.out_channels  # 4 in SD's latent space, 8 in md-vae's: the editing UNet takes twice that
    cfg = attrs.evolve(unet.config, in_channels=2 * channels, guidance_embed=stage.embedded)
    new = md.MobileDiffusionUNet(cfg)
    src, dst = unet.state_dict(), new.state_dict()
    for key, value in dst.items():
        if key == "conv_in.weight" and src[key].shape[1] != value.shape[1]:
            if src[key].shape[1] != channels:
                raise ValueError(f"conv_in has {src[key].shape[1]} input channels; {channels} or {2 * channels} "
                                 "convert")
            dst[key] = torch.cat([src[key], torch.zeros_like(src[key])], dim=1)
        elif key in src:
            dst[key] = src[key]
    new.load_state_dict(dst)
    return new
