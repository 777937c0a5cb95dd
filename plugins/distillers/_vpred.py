"""`vpred`: convert the guidance-distilled (epsilon) model to v-prediction, paper Appendix B, Stage-4.

Teacher: the frozen stage-3 model (mobile-pix2pix-mmg, epsilon). Student: the same UNet declared as a
v-prediction model of the 'mobile-pix2pix-1step' architecture (identical layers). Per example, as in
Algorithm 1: t, s_I, s_T, eps, x_t = alpha_t x + sigma_t eps; the teacher's epsilon eps_hat gives
x0_hat = (x_t - sigma_t eps_hat) / alpha_t and the target v = alpha_t eps_hat - sigma_t x0_hat (Salimans & Ho);
loss = lambda * ||student(x_t, c_I, c_T, s_I, s_T) - v||^2. Paper: lr 1e-6, 4k warm-up steps.

The result is still a multi-step model (the adversarial stage makes it one-step): it loads as
'mobile-pix2pix-1step' (LCM scheduler) and its manifest and recipe default to `default_steps` (10) steps.
"""

from __future__ import annotations

from typing import Any, ClassVar

import torch
import torch.nn.functional as F
from movie_plugins.distillers._common import (
    BuiltinDistiller,
    pix2pix_denoiser,
    restage,
    sample_guidance,
    sample_timesteps,
    v_from_epsilon,
)
from movie_plugins.distillers._options import VPredOptions

from movie_core.errors import UsageError


def v_target(teacher, x_t, t, src, emb, s_i, s_t, alpha, sigma) -> torch.Tensor:
    """v derived from the epsilon teacher's one-pass (guidance-embedded) prediction."""
    with torch.no_grad():
        eps = teacher.predict(x_t, t, src, emb, s_i, s_t)
    return v_from_epsilon(eps, x_t, alpha, sigma)


class VPredDistiller(BuiltinDistiller):
    name = "vpred"
    produces = "mobile-pix2pix-1step"
    options_class = VPredOptions
    defaults: ClassVar[dict[str, float]] = {"lr": 1e-6, "warmup_steps": 4000}  # paper Appendix B, Stage-4
    note = ("stage-3 guidance-distilled model finetuned to v-prediction (input of `movie distill adversarial`); "
            "a multi-step model: sample it with several steps")

    def make_student(self, teacher) -> torch.nn.Module:
        den = pix2pix_denoiser(teacher.denoiser, self.name)
        if den.guidance != "embedded" or den.prediction_type != "epsilon":
            raise UsageError(f"vpred converts the guidance-distilled epsilon model (mobile-pix2pix-mmg); the teacher "
                             f"is '{den.stage}' ({den.guidance}, {den.prediction_type}): run `movie distill mmg` first")
        student = restage(den, self.produces)
        student.default_steps = self.options.default_steps
        return student

    def train_step(self, batch: dict[str, Any], step: int) -> dict[str, float]:
        src, x0, emb = self.encode_batch(batch)
        n = x0.shape[0]
        t = sample_timesteps(n, x0.device)
        s_i, s_t = sample_guidance(self.options, n, x0.device)
        x_t, alpha, sigma = self.noised(x0, t, torch.randn_like(x0))
        target = v_target(self.teacher.denoiser, x_t, t, src, emb, s_i, s_t, alpha, sigma)
        pred = self.student.unet_forward(x_t, t, src, emb, s_i, s_t)
        loss = self.options.loss_weight * F.mse_loss(pred.float(), target.float())
        self.step_optimizer(loss, self.optimizers[0], self.student.unet)
        return {"loss": loss.item()}
