"""Shared pieces of the built-in distillers: noise schedule, targets, guidance sampling, stage changes.

Imports torch; loaded only when a distiller runs. Conventions (all latents in SD's scaled space):

* VP forward process of the SD-1.5 DDPM schedule: x_t = alpha_t x0 + sigma_t eps with
  alpha_t = sqrt(alphas_cumprod[t]), sigma_t = sqrt(1 - alphas_cumprod[t]), t integer in [0, 1000).
* v = alpha_t eps - sigma_t x0 (Salimans & Ho); x0 from a model output of any prediction type.
"""

from __future__ import annotations

from typing import Any, ClassVar

import torch

from movie_core.errors import UsageError
from movie_core.training.distiller import Distiller
from movie_plugins.denoisers._pix2pix import Pix2PixDenoiser, make_scheduler

NUM_TRAIN_TIMESTEPS = 1000


EDITING_CONTRACT = ("stage_info", "family_stage", "restaged", "guidance_embedded_unet", "unet_forward", "predict")


def pix2pix_denoiser(den: Any, strategy: str) -> Any:
    """The teacher's denoiser, if it is an instruction-editing stage these distillers can train: one that has the
    editing-stage methods (the Pix2Pix family on SD's UNet and the MobileDiffusion editing family have them):

    stage_info      the stage's facts (embedded guidance, mobile, prediction type, scheduler, steps)
    family_stage    its family's stage for a MoViE role: 'cfg3', 'mmg' (guidance embedded, epsilon), '1step'
    restaged        a denoiser of another stage of the family (a copy of the text tower, the given UNet)
    guidance_embedded_unet  a copy of the UNet with zero-initialised guidance layers
    unet_forward    one pass: (x_t, t, image latents, prompt embeddings, s_I, s_T)
    """
    if not all(hasattr(den, name) for name in EDITING_CONTRACT):
        raise UsageError(f"distiller '{strategy}' trains the instruction-editing stages (the Pix2Pix and "
                         f"MobileDiffusion editing families); the teacher's denoiser is "
                         f"'{getattr(den, 'stage', type(den).__name__)}'")
    return den


def restage(den: Any, stage: str, unet: torch.nn.Module | None = None, scheduler: str | None = None,
            prediction_type: str | None = None) -> Any:
    """A denoiser of another stage of den's family sharing nothing with `den`: its UNet (or `unet`), a copy of its
    text tower."""
    return den.restaged(stage, unet, scheduler, prediction_type)


def to_mmg(den: Any, guidance_inject: str = "resnet") -> Any:
    """The guidance-embedded student of a cfg3 model: same weights, zero-initialised guidance layers (for the
    Pix2Pix family: through each ResNet's own linear layer, 'resnet', paper Sec. 3.3, or one projection added to
    the time embedding, 'time'); it predicts what its teacher predicts."""
    return den.restaged(den.family_stage("mmg"), den.guidance_embedded_unet(guidance_inject),
                        prediction_type=den.prediction_type)


def alphas_cumprod(den: Pix2PixDenoiser, device: torch.device) -> torch.Tensor:
    """The DDPM alphas_cumprod of the denoiser's noise schedule (SD-1.5 scaled-linear, 1000 steps)."""
    return den.make_scheduler().alphas_cumprod.to(device=device, dtype=torch.float32)


def vp_coefficients(acp: torch.Tensor, t: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """(alpha_t, sigma_t), shaped (B, 1, 1, 1), for integer timesteps t."""
    a = acp[t.long()]
    return a.sqrt().view(-1, 1, 1, 1), (1 - a).sqrt().view(-1, 1, 1, 1)


def sample_timesteps(batch: int, device: torch.device) -> torch.Tensor:
    """t ~ U{0, ..., 999} (Algorithm 1 line 4)."""
    return torch.randint(0, NUM_TRAIN_TIMESTEPS, (batch,), device=device)


def model_target(prediction_type: str, x0: torch.Tensor, noise: torch.Tensor, alpha: torch.Tensor,
                 sigma: torch.Tensor) -> torch.Tensor:
    """What a model of `prediction_type` should output for x_t = alpha x0 + sigma noise."""
    if prediction_type == "epsilon":
        return noise
    if prediction_type == "v_prediction":
        return alpha * noise - sigma * x0
    if prediction_type == "sample":
        return x0
    raise UsageError(f"unknown prediction type '{prediction_type}'")


def x0_from_output(prediction_type: str, out: torch.Tensor, x_t: torch.Tensor, alpha: torch.Tensor,
                   sigma: torch.Tensor) -> torch.Tensor:
    """The clean-latent estimate from a model output at x_t = alpha x0 + sigma eps."""
    if prediction_type == "epsilon":
        return (x_t - sigma * out) / alpha
    if prediction_type == "v_prediction":
        return alpha * x_t - sigma * out
    if prediction_type == "sample":
        return out
    raise UsageError(f"unknown prediction type '{prediction_type}'")


def v_from_epsilon(eps: torch.Tensor, x_t: torch.Tensor, alpha: torch.Tensor, sigma: torch.Tensor) -> torch.Tensor:
    """The standard conversion: x0_hat = (x_t - sigma eps) / alpha, v = alpha eps - sigma x0_hat."""
    x0_hat = (x_t - sigma * eps) / alpha
    return alpha * eps - sigma * x0_hat


def sample_guidance(options, batch: int, device: torch.device) -> tuple[torch.Tensor, torch.Tensor]:
    """(s_I, s_T) per example, uniform in the option ranges (paper: U[1, 3] and U[2, 14])."""
    u = torch.rand(2, batch, device=device)
    s_i = options.image_guidance_min + (options.image_guidance_max - options.image_guidance_min) * u[0]
    s_t = options.text_guidance_min + (options.text_guidance_max - options.text_guidance_min) * u[1]
    return s_i, s_t


class BuiltinDistiller(Distiller):
    """Base of the built-ins: checks the teacher, keeps the null prompt and the noise schedule at hand."""

    defaults: ClassVar[dict[str, float]] = {}
    note = ""

    def setup_extra(self, accelerator, cfg) -> None:
        self.device = accelerator.device
        self.acp = alphas_cumprod(self.teacher.denoiser, self.device)
        self.null_emb = self.teacher.denoiser.encode_prompt([""])

    def manifest_fields(self) -> dict[str, Any]:
        return {"training_stage": self.name, **({"note": self.note} if self.note else {})}

    def noised(self, x0: torch.Tensor, t: torch.Tensor, noise: torch.Tensor):
        """(x_t, alpha_t, sigma_t) of the VP forward process."""
        alpha, sigma = vp_coefficients(self.acp, t)
        return alpha * x0 + sigma * noise, alpha, sigma


def regression_loss(pred: torch.Tensor, target: torch.Tensor, weighting: str = "uniform",
                    acp_t: torch.Tensor | None = None) -> torch.Tensor:
    """'uniform': mean squared error; 'relative': per example ||pred - target||^2 / ||target||^2, averaged; 'v'
    (epsilon outputs): each example's squared error over alpha_bar_t (`acp_t`, per example), the v error it implies,
    as a weighted mean over the batch (as pix2pix-finetune's denoising_loss)."""
    import torch.nn.functional as F

    pred, target = pred.float(), target.float()
    if weighting == "uniform":
        return F.mse_loss(pred, target)
    if weighting == "v":
        if acp_t is None:
            raise ValueError("weighting 'v' needs each example's alpha_bar_t")
        w = 1.0 / acp_t.float()
        return (w * (pred - target).pow(2).flatten(1).mean(1)).sum() / w.sum()
    err = (pred - target).pow(2).flatten(1).sum(1)
    return (err / target.pow(2).flatten(1).sum(1).clamp_min(1e-6)).mean()


class GuidedRegressionDistiller(BuiltinDistiller):
    """mmg and vpred: regress the student's one pass onto a teacher-derived target at random (s_I, s_T)."""

    def target(self, x_t, t, src, emb, s_i, s_t, alpha, sigma) -> torch.Tensor:
        raise NotImplementedError

    def train_step(self, batch: dict[str, Any], step: int) -> dict[str, float]:
        src, x0, emb = self.encode_batch(batch)
        n = x0.shape[0]
        t = sample_timesteps(n, x0.device)
        s_i, s_t = sample_guidance(self.options, n, x0.device)
        x_t, alpha, sigma = self.noised(x0, t, torch.randn_like(x0))
        with torch.no_grad():
            target = self.target(x_t, t, src, emb, s_i, s_t, alpha, sigma)
        pred = self.student.unet_forward(x_t, t, src, emb, s_i, s_t)
        weighting = getattr(self.options, "weighting", "uniform")
        if weighting == "v" and self.student.prediction_type != "epsilon":
            weighting = "uniform"  # a v model's error is the error in v already
        loss = self.options.loss_weight * regression_loss(pred, target, weighting, self.acp[t])
        self.step_optimizer(loss, self.optimizers[0], self.student.unet)
        return {"loss": loss.item()}


def make_euler(prediction_type: str, steps: int, device: torch.device):
    """An Euler (Karras-sigma) scheduler set to `steps` discrete timesteps, as the student trains on: from 999 (where
    a one-step sampler starts) down to 0. `linspace` spacing gives that for 2 steps or more but [0] for one, a
    student trained only where no sampler ever runs it; one step takes `trailing` spacing, [999]."""
    sched = make_scheduler("euler", prediction_type)
    if steps == 1:
        sched = type(sched).from_config(sched.config, timestep_spacing="trailing")
    sched.set_timesteps(steps, device=device)
    return sched
