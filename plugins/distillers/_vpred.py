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

from typing import ClassVar

import torch

from movie_core.errors import UsageError
from movie_plugins.distillers._common import GuidedRegressionDistiller, pix2pix_denoiser, restage, v_from_epsilon
from movie_plugins.distillers._options import VPredOptions


def v_target(teacher, x_t, t, src, emb, s_i, s_t, alpha, sigma) -> torch.Tensor:
    """v derived from the epsilon teacher's one-pass (guidance-embedded) prediction."""
    with torch.no_grad():
        eps = teacher.predict(x_t, t, src, emb, s_i, s_t)
    return v_from_epsilon(eps, x_t, alpha, sigma)


class VPredDistiller(GuidedRegressionDistiller):
    name = "vpred"
    produces = "mobile-pix2pix-1step"
    options_class = VPredOptions
    defaults: ClassVar[dict[str, float]] = {"lr": 1e-6, "warmup_steps": 4000}  # paper Appendix B, Stage-4
    note = ("stage-3 guidance-distilled model finetuned to v-prediction (input of `movie distill adversarial`); "
            "a multi-step model: sample it with several steps")

    def make_student(self, teacher) -> torch.nn.Module:
        den = pix2pix_denoiser(teacher.denoiser, self.name)
        if den.guidance != "embedded":
            raise UsageError(f"vpred converts the guidance-distilled epsilon model (mobile-pix2pix-mmg); the teacher "
                             f"is '{den.stage}' ({den.guidance}, {den.prediction_type}): run `movie distill mmg` first")
        if den.prediction_type != "epsilon":
            raise UsageError(f"vpred converts an epsilon model; the teacher '{den.stage}' predicts "
                             f"{den.prediction_type} already: `movie distill adversarial` takes it as it is")
        student = restage(den, den.family_stage("1step"), prediction_type="v_prediction")
        self.produces = student.stage
        student.default_steps = self.options.default_steps
        return student

    def target(self, x_t, t, src, emb, s_i, s_t, alpha, sigma) -> torch.Tensor:
        return v_target(self.teacher.denoiser, x_t, t, src, emb, s_i, s_t, alpha, sigma)

    @classmethod
    def objective(cls, student, teacher, data) -> dict[str, float]:
        """Relative error to the v derived from the epsilon teacher, over all t and t < 600, start and student."""
        from movie_plugins.distillers import _metrics as m

        t = cls.load_frozen(teacher)
        src, x0, emb = m.held_out(t, data)
        before, after = m.v_error(None, t, src, x0, emb), m.v_error(cls.load_frozen(student), t, src, x0, emb)
        return {"v_rel_error_start": before["all"], "v_rel_error": after["all"],
                "v_rel_error_low_t_start": before["low_t"], "v_rel_error_low_t": after["low_t"]}
