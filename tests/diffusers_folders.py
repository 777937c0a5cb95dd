"""Model folders written by diffusers' own classes at tiny sizes, as users have them on disk (issue 20).

`write_ip2p(folder, scheduler=..., variant=..., safe=...)` saves a StableDiffusionInstructPix2PixPipeline with a
tiny random UNet (8 input channels), KL VAE and CLIP text encoder, through `save_pretrained`: model_index.json,
scheduler/scheduler_config.json, unet/, vae/, text_encoder/, tokenizer/, exactly as diffusers lays them out.
"""

from __future__ import annotations

from pathlib import Path

import torch

SCHEDULERS = ("ddim", "euler-ancestral")


def make_scheduler(name: str, **overrides):
    """A diffusers scheduler as model repos ship them (SD-1.5 betas), with overrides such as prediction_type."""
    from diffusers import DDIMScheduler, EulerAncestralDiscreteScheduler

    common = dict(num_train_timesteps=1000, beta_start=0.00085, beta_end=0.012, beta_schedule="scaled_linear",
                  steps_offset=1) | overrides
    if name == "ddim":
        return DDIMScheduler(**common, clip_sample=False, set_alpha_to_one=False)
    if name == "euler-ancestral":
        return EulerAncestralDiscreteScheduler(**common)
    raise ValueError(name)


def tiny_pipeline(scheduler: str = "ddim", *, scaling_factor: float = 0.18215, seed: int = 0, **scheduler_overrides):
    """A StableDiffusionInstructPix2PixPipeline of tiny random modules (CPU, float32)."""
    from diffusers import AutoencoderKL, StableDiffusionInstructPix2PixPipeline, UNet2DConditionModel
    from transformers import CLIPTextConfig, CLIPTextModel

    from movie_plugins.denoisers._tokenizer import byte_tokenizer

    torch.manual_seed(seed)
    tokenizer = byte_tokenizer()
    unet = UNet2DConditionModel(
        block_out_channels=(32, 64), layers_per_block=1, sample_size=8, in_channels=8, out_channels=4,
        down_block_types=("CrossAttnDownBlock2D", "DownBlock2D"), up_block_types=("UpBlock2D", "CrossAttnUpBlock2D"),
        cross_attention_dim=32, attention_head_dim=4, norm_num_groups=8,
    )
    vae = AutoencoderKL(
        in_channels=3, out_channels=3, latent_channels=4, block_out_channels=(8, 16, 16, 16), layers_per_block=1,
        norm_num_groups=8, down_block_types=("DownEncoderBlock2D",) * 4, up_block_types=("UpDecoderBlock2D",) * 4,
        sample_size=64, scaling_factor=scaling_factor,
    )
    text = CLIPTextModel(CLIPTextConfig(
        vocab_size=len(tokenizer), hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=2,
        projection_dim=32, max_position_embeddings=77, hidden_act="quick_gelu",
        bos_token_id=tokenizer.bos_token_id, eos_token_id=tokenizer.eos_token_id, pad_token_id=tokenizer.pad_token_id,
    ))
    pipe = StableDiffusionInstructPix2PixPipeline(
        vae=vae, text_encoder=text, tokenizer=tokenizer, unet=unet,
        scheduler=make_scheduler(scheduler, **scheduler_overrides), safety_checker=None, feature_extractor=None,
        requires_safety_checker=False,
    )
    pipe.set_progress_bar_config(disable=True)
    return pipe.to(torch.float32)


def write_ip2p(folder: Path, scheduler: str = "ddim", *, variant: str | None = None, safe: bool = True,
               scaling_factor: float = 0.18215, **scheduler_overrides) -> Path:
    """Save a tiny InstructPix2Pix pipeline with diffusers' save_pretrained; returns the folder."""
    pipe = tiny_pipeline(scheduler, scaling_factor=scaling_factor, **scheduler_overrides)
    if variant == "fp16":
        pipe = pipe.to(torch.float16)
    pipe.save_pretrained(folder, safe_serialization=safe, variant=variant)
    return Path(folder)
