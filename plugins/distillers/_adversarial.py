"""`adversarial`: guidance-preserving adversarial step distillation, paper Sec. 3.4, Algorithm 2, Appendix B.

Models (Appendix B). `--teacher` is the v-prediction model of the `vpred` stage (Stage 4's conversion): the
student starts as a copy of it and is trained as 'mobile-pix2pix-1step' (LCM, 1 step). The multi-step teacher M
that makes the real samples, and whose UNet encoder arm is the discriminator's frozen feature extractor (see
_discriminator.py), is the Stage-3 model (guidance-distilled, epsilon prediction), named by
`-O teacher_sampler_model=DIR` (the default `teacher_sampler=stage3`; without the folder the run stops at once
with one line naming what is missing). `-O teacher_sampler=student-init` (a named departure, not the paper) uses
the --teacher v-prediction model for both instead: the shipped nano family was trained that way.

One training step (Algorithm 2; D update, then G update):
  1. c_I, c_T from the batch, s_I ~ U[1, 3], s_T ~ U[2, 14] per example.
  2. x0 = M(eps, C): the teacher samples `teacher_steps` (5) steps with the LCM scheduler from fresh noise.
  3. Student timestep: one of the `student_timesteps` (8) discrete timesteps of EulerDiscreteScheduler
     .set_timesteps(8) (999, 856, ..., 0) with its Karras sigma; x_t = c_in(t) (x0 + sigma eps), c_in =
     1/sqrt(sigma^2 + 1), which is what the scheduler's scale_model_input does and equals the VP
     alpha_t x0 + sigma_t eps. The student outputs v; x0_hat = alpha_t x_t - sigma_t v.
  4. Discriminator noise t' = floor(1000 sigmoid(n)), n ~ N(disc_noise_mean, disc_noise_std) (logit-normal,
     default (-1, 1)); x_t' = alpha_t' x + sigma_t' eps' for x = x0 (real) and x0_hat (fake), same t', eps'
     (an Euler scheduler with 1000 training timesteps, c_in' applied, is the same VP noising).
  5. L_D = E[max(0, 1 - D(real))] + E[max(0, 1 + D(fake))] + lambda_r1 R1, R1 = E ||grad_x D(x_t', real)||^2.
     (The paper writes the hinge with D's sign flipped, max(0, 1 + D(real)) + max(0, 1 - D(fake)) and
     + lambda_gen E[D(fake)] for G; the conventions are equivalent.)
  6. With fresh t', eps' (Algorithm 2 line 14): L_G = lambda_mse ||x0_hat - x0||^2 + lambda_gen (-E[D(fake)]).
  Health (logged every step, training log and the manifest's final losses): d_acc_real / d_acc_fake, the share of
  real (fake) examples D scores above (below) zero (0.5 each = chance: a D that learns nothing); d_real / d_fake, the
  mean scores; d_hinge, r1 and its weighted share d_r1_term; g_adv (-E[D(fake)]) and the generator's two weighted
  terms g_adv_term = lambda_gen g_adv and g_mse_term = lambda_mse mse, with g_adv_share = |g_adv_term| /
  (|g_adv_term| + g_mse_term), how much of the generator's loss the GAN term is.
  Ground-truth anchoring (ours, `-O data_weight=w`, default 0 = the above): the real samples x0 of steps 2-6 become
  x0 + w (z_edit - x0_ref), x0_ref = M at the anchor scales (`data_image_guidance`, `data_text_guidance`: the
  movie preset's 1.5, 7.5) from the same noise, z_edit the ground-truth edit's latents. The teacher's response to
  the scales is kept; at the anchor the target is the ground truth, so the student can end better than its teacher.
  x0_hat is computed once per step (the student does not change during the D update) and detached for L_D.
  With lambda_gen 0 (`-O lambda_gen=0`, the shipped 1-step stage's) steps 4-5 and D(fake) of step 6 are skipped: they
  cannot change the student, and they were about a fifth of each step's time.
  At the anchor (ours: both guidance ranges collapsed onto data_image_guidance and data_text_guidance, as the shipped
  1-step stage trains, `-B adversarial_guidance=anchor`) x0_ref is x0, so the real samples take one teacher run, and
  none at w = 1: they are the ground truth, and the stage is supervised one-step training from the vpred model (a
  step at batch 32 took 0.32 s against 0.75 with the teacher's two 5-step runs, one thread each beside another run).
"""

from __future__ import annotations

import contextlib
from pathlib import Path
from typing import Any, ClassVar

import torch
import torch.nn.functional as F
from torch.nn.attention import SDPBackend, sdpa_kernel

from movie_core.errors import UsageError
from movie_plugins.denoisers._pix2pix import SD_SCALING_FACTOR, make_scheduler
from movie_plugins.distillers._common import (
    NUM_TRAIN_TIMESTEPS,
    BuiltinDistiller,
    make_euler,
    pix2pix_denoiser,
    restage,
    sample_guidance,
    vp_coefficients,
    x0_from_output,
)
from movie_plugins.distillers._discriminator import (
    Discriminator,
    discriminator_health,
    hinge_d_loss,
    hinge_g_loss,
    score,
)
from movie_plugins.distillers._options import AdversarialOptions

STUDENT_STAGE = "mobile-pix2pix-1step"


def teacher_samples(sampler, src, emb, s_i, s_t, steps: int, scheduler: str, null_emb=None,
                    latents: torch.Tensor | None = None, generator: torch.Generator | None = None) -> torch.Tensor:
    """x0 = M(eps, C): the frozen teacher sampled `steps` steps with `scheduler` (paper: 5 steps, LCM)."""
    with torch.no_grad():
        sched = make_scheduler(scheduler, sampler.prediction_type)
        return sampler.sample(src, emb, steps=steps, s_T=s_t, s_I=s_i, null_emb=null_emb, latents=latents,
                              generator=generator, scheduler=sched)


def _twice(v: torch.Tensor | None) -> torch.Tensor | None:
    return torch.cat([v, v]) if v is not None else None


def logit_normal_timesteps(batch: int, mean: float, std: float, device: torch.device) -> torch.Tensor:
    """t' = floor(1000 * sigmoid(n)), n ~ N(mean, std), in {0, ..., 999}."""
    n = torch.randn(batch, device=device) * std + mean
    return (torch.sigmoid(n) * NUM_TRAIN_TIMESTEPS).long().clamp(0, NUM_TRAIN_TIMESTEPS - 1)


class AdversarialDistiller(BuiltinDistiller):
    name = "adversarial"
    produces = STUDENT_STAGE
    options_class = AdversarialOptions
    defaults: ClassVar[dict[str, float]] = {"lr": 1e-5}  # paper Appendix B, Stage-4 adversarial
    note = "adversarially distilled one-step model (LCM, 1 step); guidance scales s_I, s_T stay inputs"

    @classmethod
    def objective(cls, student, teacher, data) -> dict[str, float]:
        """MSE (latents) to the teacher's 5-step LCM output: the teacher run for 1 step, and the student at 1 step."""
        from movie_plugins.distillers import _metrics as m

        t = cls.load_frozen(teacher)
        src, _, emb = m.held_out(t, data)
        stage3, one_step = m.one_step_vs_teacher(cls.load_frozen(student), t, src, emb)
        return {"teacher_at_1_step_mse": stage3, "student_mse": one_step, "ratio": one_step / stage3}

    def make_student(self, teacher) -> torch.nn.Module:
        den = pix2pix_denoiser(teacher.denoiser, self.name)
        if den.guidance != "embedded" or den.prediction_type != "v_prediction":
            raise UsageError(f"adversarial starts from the v-prediction model; the teacher is '{den.stage}' "
                             f"({den.guidance}, {den.prediction_type}): run `movie distill vpred` first")
        student = restage(den, den.family_stage("1step"), prediction_type=den.prediction_type)
        self.produces = student.stage  # STUDENT_STAGE for SD's UNet
        student.default_steps = 1
        return student

    @property
    def trainable_modules(self) -> list[torch.nn.Module]:
        return [self.student.unet, self.disc]

    def setup(self, teacher_dir: Path, accelerator, cfg) -> None:
        o = self.options
        if o.teacher_sampler == "stage3" and not o.teacher_sampler_model:  # before anything loads
            raise UsageError(
                "adversarial: Appendix B's teacher sampler and discriminator backbone are the Stage-3 model "
                "(mobile-pix2pix-mmg): pass -O teacher_sampler_model=DIR, or -O teacher_sampler=student-init to use "
                "the --teacher (v-prediction) model instead")
        super().setup(teacher_dir, accelerator, cfg)

    def setup_extra(self, accelerator, cfg) -> None:
        super().setup_extra(accelerator, cfg)
        o = self.options
        if o.teacher_sampler == "stage3":
            assert o.teacher_sampler_model is not None
            sampler = self.load_teacher(Path(o.teacher_sampler_model), accelerator.device).denoiser
            self.sampler = pix2pix_denoiser(sampler, self.name)
            if not self.sampler.stage_info.embedded or self.sampler.prediction_type != "epsilon":
                raise UsageError(
                    f"adversarial: teacher_sampler_model {o.teacher_sampler_model} is '{self.sampler.stage}' "
                    f"({self.sampler.guidance}, {self.sampler.prediction_type}); the Stage-3 model is the "
                    "guidance-distilled epsilon model (mobile-pix2pix-mmg)")
            self.sampler_null_emb = self.sampler.encode_prompt([""])
        else:
            self.sampler, self.sampler_null_emb = self.teacher.denoiser, self.null_emb
        self.euler = make_euler(self.student.prediction_type, o.student_timesteps, accelerator.device)
        text_dim = self.null_emb.shape[-1]
        disc = Discriminator(self.sampler.unet, text_dim=text_dim, hidden=o.head_channels).to(accelerator.device)
        self.latent_scale = float(getattr(self.sampler, "latent_scale", SD_SCALING_FACTOR))
        opt_d = torch.optim.AdamW(disc.trainable_parameters(), lr=o.lr_d, weight_decay=0.0)
        self.disc, opt_d = accelerator.prepare(disc, opt_d)
        if self.gan:  # after the student's: the loop's LR schedules follow this order
            self.optimizers.append(opt_d)

    @property
    def gan(self) -> bool:
        """Whether the discriminator shapes the student. With lambda_gen 0 the generator's loss is the MSE alone: the
        discriminator is neither run nor trained (it stays as built; the checkpoints keep its layout), and the
        student's steps are the same as with it trained, each step's noise being drawn from the loop's per-step seed
        before the discriminator's."""
        return self.options.lambda_gen > 0

    @property
    def at_anchor(self) -> bool:
        """Whether every sampled (s_I, s_T) is the anchor (`data_image_guidance`, `data_text_guidance`): both ranges
        collapsed onto it. With data_weight w > 0 the real samples are then x0 + w (z_edit - x0), one teacher run,
        and at w = 1 the ground truth z_edit itself, no teacher run at all (the same targets up to float rounding,
        and the same random draws: the teacher's seed is still drawn)."""
        o = self.options
        return (o.image_guidance_min == o.image_guidance_max == o.data_image_guidance
                and o.text_guidance_min == o.text_guidance_max == o.data_text_guidance)

    def _disc_module(self) -> Discriminator:
        return getattr(self.disc, "module", self.disc)

    def real_samples(self, src, tgt, emb_m, s_i, s_t) -> torch.Tensor:
        """x0 = M(eps, C) (Algorithm 2); with data_weight w > 0, x0 + w (z_edit - x0_ref), x0_ref = M(eps, C) at
        the anchor scales with the same noise: the teacher's guidance response is kept, its error at the anchor
        (the preset's s_I, s_T) is replaced by the ground truth's edit."""
        o = self.options
        if o.data_weight <= 0:
            return teacher_samples(self.sampler, src, emb_m, s_i, s_t, o.teacher_steps, o.teacher_scheduler,
                                   self.sampler_null_emb)
        seed = int(torch.randint(0, 2**62, (1,)).item())
        if self.at_anchor and o.data_weight == 1:  # x0_ref = x0 at the anchor, so the real samples are z_edit
            return tgt
        scales = [(s_i, s_t)]
        if not self.at_anchor:  # at the anchor x0_ref is x0: one run
            scales.append((torch.full_like(s_i, o.data_image_guidance), torch.full_like(s_t, o.data_text_guidance)))
        runs = []
        for si, st in scales:
            gen = torch.Generator(device=src.device).manual_seed(seed)
            runs.append(teacher_samples(self.sampler, src, emb_m, si, st, o.teacher_steps, o.teacher_scheduler,
                                        self.sampler_null_emb, generator=gen))
        return runs[0] + o.data_weight * (tgt - runs[-1])

    def student_x0(self, src, emb, x0, s_i, s_t):
        """x_t at one of the Euler timesteps (c_in applied) and the student's x0_hat from its v output."""
        n = x0.shape[0]
        idx = torch.randint(0, len(self.euler.timesteps), (n,), device=x0.device)
        sigma = self.euler.sigmas.to(x0.device)[idx].view(-1, 1, 1, 1).float()
        t = self.euler.timesteps.to(x0.device)[idx]
        c_in = 1 / (sigma**2 + 1).sqrt()
        x_t = c_in * (x0 + sigma * torch.randn_like(x0))
        out = self.student.unet_forward(x_t, t, src, emb, s_i, s_t)
        return x0_from_output(self.student.prediction_type, out, x_t, c_in, sigma * c_in)

    def disc_inputs(self, x: torch.Tensor, t_d: torch.Tensor, noise: torch.Tensor) -> torch.Tensor:
        alpha, sigma = vp_coefficients(self.acp, t_d)
        return alpha * x + sigma * noise

    def guidance_labels(self, s_i, s_t, like):
        if not self.sampler.stage_info.embedded:
            return None
        return self.sampler.guidance_labels(s_i, s_t, like.shape[0], like)

    def train_step(self, batch: dict[str, Any], step: int) -> dict[str, float]:
        o = self.options
        src, tgt, emb = self.encode_batch(batch)
        # the multi-step teacher and the discriminator (its encoder arm) read prompts with their own text tower
        emb_m = emb if self.sampler is self.teacher.denoiser else self.sampler.encode_prompt(batch["instruction"])
        n = src.shape[0]
        dev = src.device
        s_i, s_t = sample_guidance(o, n, dev)
        x0 = self.real_samples(src, tgt, emb_m, s_i, s_t)
        x0_hat = self.student_x0(src, emb, x0, s_i, s_t)
        if not self.gan:
            mse = F.mse_loss(x0_hat.float(), x0.float())
            g_loss = o.lambda_mse * mse
            self.step_optimizer(g_loss, self.optimizers[0], self.student.unet)
            return {"loss": g_loss.item(), "mse": mse.item(), "g_mse_term": g_loss.item(), "g_adv_share": 0.0}
        cond = src / self.latent_scale  # the source latents as the sampler's UNet takes them

        # discriminator: real and fake in one forward (one DDP pass), R1 on the real inputs
        t_d = logit_normal_timesteps(n, o.disc_noise_mean, o.disc_noise_std, dev)
        noise = torch.randn_like(x0)
        real_in = self.disc_inputs(x0, t_d, noise).requires_grad_(o.lambda_r1 > 0)
        fake_in = self.disc_inputs(x0_hat.detach(), t_d, noise)
        labels = self.guidance_labels(s_i, s_t, x0)
        # R1 needs a double backward through the feature extractor's attention: the math SDPA kernel has one
        with sdpa_kernel(SDPBackend.MATH) if o.lambda_r1 > 0 else contextlib.nullcontext():
            maps = self.disc(torch.cat([real_in, fake_in]), _twice(cond), _twice(t_d), _twice(emb_m), _twice(s_i),
                             _twice(s_t), _twice(labels))
        real_maps = [m[:n] for m in maps]
        fake_maps = [m[n:] for m in maps]
        d_hinge = hinge_d_loss(real_maps, fake_maps)
        r1 = torch.zeros((), device=dev)
        if o.lambda_r1 > 0:
            (grad,) = torch.autograd.grad(score(real_maps).sum(), real_in, create_graph=True)
            r1 = grad.pow(2).flatten(1).sum(dim=1).mean()
        d_loss = d_hinge + o.lambda_r1 * r1
        self.step_optimizer(d_loss, self.optimizers[1], self.disc)
        health = discriminator_health(score(real_maps).detach(), score(fake_maps).detach())

        # generator: fresh discriminator noise, D's heads frozen (the unwrapped module: no DDP reduction for D)
        t_g = logit_normal_timesteps(n, o.disc_noise_mean, o.disc_noise_std, dev)
        fake_g = self.disc_inputs(x0_hat, t_g, torch.randn_like(x0))
        disc = self._disc_module()
        trainable = disc.trainable_parameters()
        for p in trainable:
            p.requires_grad_(False)
        try:
            g_adv = hinge_g_loss(disc(fake_g, cond, t_g, emb_m, s_i, s_t, labels))
        finally:
            for p in trainable:
                p.requires_grad_(True)
        mse = F.mse_loss(x0_hat.float(), x0.float())
        g_mse_term, g_adv_term = o.lambda_mse * mse, o.lambda_gen * g_adv
        g_loss = g_mse_term + g_adv_term
        self.step_optimizer(g_loss, self.optimizers[0], self.student.unet)
        mse_v, adv_v = g_mse_term.item(), g_adv_term.item()
        return {"loss": g_loss.item(), "mse": mse.item(), "g_adv": g_adv.item(), "d_loss": d_hinge.item(),
                "r1": r1.item(), "d_hinge": d_hinge.item(), "d_r1_term": o.lambda_r1 * r1.item(), **health,
                "g_mse_term": mse_v, "g_adv_term": adv_v,
                "g_adv_share": abs(adv_v) / (abs(adv_v) + mse_v) if abs(adv_v) + mse_v > 0 else 0.0}
