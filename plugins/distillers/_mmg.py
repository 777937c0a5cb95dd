"""`mmg`: multimodal guidance distillation, paper Sec. 3.3 and Algorithm 1.

Teacher: a frozen cfg3 model (mobile-pix2pix; an instruct-pix2pix teacher is converted on the way, which also
drops its top attention). Student: the same UNet with guidance layers added and zero-initialised
(`convert_unet(..., 'mobile-pix2pix-mmg', guidance_inject)`), so at step 0 it equals the teacher's conditional pass.
`-O guidance_inject=resnet` (default, Sec. 3.3): each ResNet block takes the scale sinusoids through its own linear
layer; `time` (ours; the shipped nano family): one projection added to the shared time embedding.
Per example: t ~ U{0..999}, s_I ~ U[1, 3], s_T ~ U[2, 14], eps ~ N(0, I), x_t = alpha_t x + sigma_t eps on the
edited latents; target = the teacher's 3-pass CFG output (Eq. 1) at (s_I, s_T);
loss = lambda * ||student(x_t, c_I, c_T, s_I, s_T) - target||^2.
"""

from __future__ import annotations

from typing import ClassVar

import torch

from movie_core.errors import UsageError
from movie_plugins.distillers._common import GuidedRegressionDistiller, pix2pix_denoiser, to_mmg
from movie_plugins.distillers._options import MMGOptions


def cfg_target(teacher, x_t, t, src, emb, s_i, s_t, null_emb) -> torch.Tensor:
    """The teacher's 3-pass classifier-free-guidance output (paper Eq. 1)."""
    with torch.no_grad():
        return teacher.predict(x_t, t, src, emb, s_i, s_t, null_emb=null_emb)


class MMGDistiller(GuidedRegressionDistiller):
    name = "mmg"
    produces = "mobile-pix2pix-mmg"
    options_class = MMGOptions
    defaults: ClassVar[dict[str, float]] = {"lr": 1e-5}  # paper Appendix B, Stage-3
    note = "guidance-distilled (s_I, s_T embedded): one UNet pass per step"

    def make_student(self, teacher) -> torch.nn.Module:
        den = pix2pix_denoiser(teacher.denoiser, self.name)
        if den.guidance != "cfg3":
            raise UsageError(f"mmg distils a 3-pass (cfg3) teacher; '{den.stage}' already embeds its guidance")
        student = to_mmg(den, self.options.guidance_inject)
        self.produces = student.stage  # this family's guidance-embedded stage (mobile-pix2pix-mmg for SD's UNet)
        return student

    def target(self, x_t, t, src, emb, s_i, s_t, alpha, sigma) -> torch.Tensor:
        return cfg_target(self.teacher.denoiser, x_t, t, src, emb, s_i, s_t, self.null_emb)

    @classmethod
    def objective(cls, student, teacher, data) -> dict[str, float]:
        """Distance to the teacher's 3-pass guidance over the (s_I, s_T) grid, at the start and for the student."""
        from movie_plugins.distillers import _metrics as m

        t = cls.load_frozen(teacher)
        src, x0, emb = m.held_out(t, data)
        before = m.grid_distance(None, t, src, x0, emb)
        after = m.grid_distance(cls.load_frozen(student), t, src, x0, emb)
        return {"grid_distance_start": before, "grid_distance": after, "ratio": after / before}
