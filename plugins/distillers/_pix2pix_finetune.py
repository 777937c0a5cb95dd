"""`pix2pix-finetune`: InstructPix2Pix training (Brooks et al. 2023), as in paper Appendix B Stages 1-2.

For each example: t ~ U{0..999}, eps ~ N(0, I), x_t = alpha_t x0 + sigma_t eps on the edited latents x0; the
UNet sees [x_t, source latents] and the prompt and regresses the target of its prediction type (epsilon for
the cfg3 stages). Conditioning dropout makes classifier-free guidance (paper Eq. 1) work: a share of the
examples loses the text (null prompt embedding), another the image (zero latents), another both.
"""

from __future__ import annotations

import copy
from typing import Any, ClassVar

import torch
import torch.nn.functional as F

from movie_core.errors import UsageError
from movie_plugins.denoisers._pix2pix import STAGES, convert_unet
from movie_plugins.distillers._common import (
    BuiltinDistiller,
    model_target,
    pix2pix_denoiser,
    regression_loss,
    restage,
    sample_timesteps,
    vp_coefficients,
)
from movie_plugins.distillers._options import Pix2PixFinetuneOptions


def dropout_masks(batch: int, drop_text: float, drop_image: float, drop_both: float,
                  device: torch.device | str = "cpu", generator: torch.Generator | None = None):
    """(drop_text_mask, drop_image_mask), bool (B,): one uniform draw per example split into exclusive bands.

    u < p_text: text only; p_text <= u < p_text + p_image: image only; the next p_both: both. So the text is
    dropped for p_text + p_both of the examples and the image for p_image + p_both.
    """
    u = torch.rand(batch, device=device, generator=generator)
    text_only = u < drop_text
    image_only = (u >= drop_text) & (u < drop_text + drop_image)
    both = (u >= drop_text + drop_image) & (u < drop_text + drop_image + drop_both)
    return text_only | both, image_only | both


def apply_dropout(src: torch.Tensor, emb: torch.Tensor, null_emb: torch.Tensor, drop_text: torch.Tensor,
                  drop_image: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Null prompt embedding where the text is dropped, zero image latents where the image is (as CFG's passes)."""
    emb = torch.where(drop_text.view(-1, 1, 1), null_emb.expand_as(emb).to(emb), emb)
    src = src * (~drop_image).to(src.dtype).view(-1, 1, 1, 1)
    return src, emb


def denoising_loss(den, acp: torch.Tensor, src: torch.Tensor, x0: torch.Tensor, emb: torch.Tensor,
                   t: torch.Tensor, noise: torch.Tensor, weighting: str = "uniform") -> torch.Tensor:
    """MSE between the UNet output at x_t and the target of its prediction type; weighting 'v': each example's
    error as the v error it implies (epsilon's over alpha_bar_t), a weighted mean over the batch."""
    alpha, sigma = vp_coefficients(acp, t)
    x_t = alpha * x0 + sigma * noise
    out = den.unet_forward(x_t, t, src, emb)
    target = model_target(den.prediction_type, x0, noise, alpha, sigma)
    if weighting == "uniform" or den.prediction_type != "epsilon":
        return F.mse_loss(out.float(), target.float())
    # v = alpha eps - sigma x0 and x0_hat = (x_t - sigma eps_hat) / alpha give v_hat - v = (eps_hat - eps) / alpha
    return regression_loss(out, target, "v", acp[t])


class Pix2PixFinetuneDistiller(BuiltinDistiller):
    name = "pix2pix-finetune"
    produces = ""  # the teacher's stage, or options.stage; set in make_student
    options_class = Pix2PixFinetuneOptions
    defaults: ClassVar[dict[str, float]] = {"lr": 1e-4}  # InstructPix2Pix: 1e-4, no warm-up
    note = "InstructPix2Pix-style finetune with conditioning dropout"

    def make_student(self, teacher) -> torch.nn.Module:
        den = pix2pix_denoiser(teacher.denoiser, self.name)
        target = self.options.stage or den.stage
        if den.stage_info.embedded:
            raise UsageError(f"pix2pix-finetune trains the 3-pass (cfg3) stages; the teacher is '{den.stage}' "
                             "(guidance-embedded): finetune its cfg3 parent instead")
        self.produces = target
        if target == den.stage:
            return copy.deepcopy(den)
        if target in STAGES and den.stage in STAGES and STAGES[target].mobile and not den.stage_info.mobile:
            return restage(den, target, convert_unet(den.unet, target))
        raise UsageError(f"pix2pix-finetune cannot turn a '{den.stage}' teacher into '{target}'")

    def train_step(self, batch: dict[str, Any], step: int) -> dict[str, float]:
        o = self.options
        src, x0, emb = self.encode_batch(batch)
        n = x0.shape[0]
        drop_t, drop_i = dropout_masks(n, o.drop_text, o.drop_image, o.drop_both, device=x0.device)
        src, emb = apply_dropout(src, emb, self.null_emb, drop_t, drop_i)
        t = sample_timesteps(n, x0.device)
        noise = torch.randn_like(x0)
        loss = denoising_loss(self.student, self.acp, src, x0, emb, t, noise, o.weighting)
        self.step_optimizer(loss, self.optimizers[0], self.student.unet)
        return {"loss": loss.item()}
