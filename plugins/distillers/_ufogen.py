"""`ufogen`: UFOGen one-step diffusion-GAN fine-tuning, as MobileDiffusion studies it (Sec. 4, Eq. 1-3, Table 5).

Models. The generator G starts as a copy of the teacher's denoiser (any built-in one: the Pix2Pix stages, the
MobileDiffusion editing stages, the text-to-image `stable-diffusion` / `mobile-diffusion`), keeps its stage, guidance
mode (cfg2 / cfg3 passes or MoViE's embedded s_I, s_T) and prediction type, and samples 1 step with LCM (at t = 999
LCM's update is exactly the model's x0 estimate). The discriminator D is initialised from the diffusion model too
(Sec. 4.1: "the generator and discriminator both have the same structure and [are] initialized by the pre-trained
diffusion model"): a trainable copy of the teacher's `unet` network run on the denoiser's own `graph_inputs`
(so it sees x_{t-1} with the timestep, the prompt and, for editing models, the source latents and the guidance
scales), its output map reduced by a small conv head to one logit per position; D(x) is the logits' spatial mean
("aggregates logits across output locations"). The teacher is frozen.

One training step (Eq. 1):
  0. the scales: per example from the ranges, or 1 (`scales=conditional`; `auto` picks it when the real x0 is the
     data and the teacher has 2- or 3-pass CFG: data carry no guidance, so the generator is the conditional model,
     sampled at s = 1 as UFOGen's one-step model is; the exported recipe records the scales trained at).
  1. real x0: the dataset's target latents (`real=data`), or the teacher's `teacher_steps`-step sample at the
     sampled scales (`real=teacher`; `auto` picks it for guidance-embedded teachers so s_I, s_T keep steering);
     s_I ~ U[1, 3], s_T ~ U[2, 14] per example (the options' ranges); or (`real=pairs`) the teacher's sample from a
     noise fixed per training example, cached, whose noise is the generator's x_t at t = 999; or (`real=noise-pairs`)
     the teacher's sample at the sampled scales from the generator's own x_t at t = 999, fresh each step.
  2. t from the generator's grid {999 k / K} (K = `timesteps`), t-1 the next lower grid point (0 below the lowest);
     x_t = alpha_t x0 + sigma_t eps (at t = 999 with `terminal=noise` x_t = eps, the one-step sampler's input);
     x0' = G(x_t, t) = the x0 estimate of the student's guided output.
  3. Both re-noised with the same fresh noise: x_{t-1} = alpha_{t-1} x0 + sigma_{t-1} eps',
     x'_{t-1} = alpha_{t-1} x0' + sigma_{t-1} eps'.
  4. D step: L_D = softplus(-D(x_{t-1}, t)) + softplus(D(x'_{t-1}, t)) (the log-loss of Eq. 1), x0' detached.
  5. G step (D frozen): L_G = lambda_adv softplus(-D(x'_{t-1}, t)) + lambda_recon L_rec with L_rec
     'diffusion' ||x0 - x0'||^2 (Eq. 1, gamma_t = 1), 'distill' ||sg(G_teacher(x_t, t)) - x0'||^2 (Eq. 2, the
     teacher's one-pass x0 estimate at the same scales), 'ema' ||sg(G_EMA(x_t, t)) - x0'||^2 (Eq. 3; the EMA
     generator is updated after every G step and checkpointed with the run).
`lora=RANK` (Sec. 4.3): peft LoRA adapters (rank RANK, alpha `lora_alpha` or RANK) on every linear and non-grouped
convolution of the generator's UNet, B initialised to zero (the generator starts as the teacher); only they train and
they are merged into the weights on export, so the model folder is a plain one-step model.
"""

from __future__ import annotations

import copy
from pathlib import Path
from typing import Any, ClassVar

import torch
import torch.nn.functional as F
from torch import nn

from movie_core.errors import UsageError
from movie_core.training.distiller import unwrap
from movie_plugins.distillers._common import BuiltinDistiller, sample_guidance, vp_coefficients, x0_from_output
from movie_plugins.distillers._options import UFOGenOptions

PREDICTIONS = ("epsilon", "v_prediction", "sample")


def timestep_grid(k: int, device: torch.device) -> torch.Tensor:
    """[0, 999/K, ..., 999] rounded: grid[i] is t for i >= 1 and grid[i - 1] its t-1."""
    return torch.round(torch.arange(k + 1, device=device, dtype=torch.float32) * 999 / k).long()


def guided_x0(den: Any, x_t: torch.Tensor, t: torch.Tensor, src: torch.Tensor, emb: torch.Tensor, s_i: torch.Tensor,
              s_t: torch.Tensor, null_emb: torch.Tensor, alpha: torch.Tensor, sigma: torch.Tensor,
              conditional: bool = False) -> torch.Tensor:
    """The x0 estimate of a denoiser's guided one-step output at x_t (its own guidance: cfg2, cfg3 or embedded).
    conditional: the scales are 1, and a 2-pass CFG model runs its prompt's pass alone (the same output)."""
    n = x_t.shape[0]
    if conditional and den.guidance == "cfg2":
        out = den.unet_forward(x_t, t, emb.expand(n, -1, -1))
        return x0_from_output(den.prediction_type, out, x_t, alpha, sigma)
    out = den.predict(x_t, t, src, emb.expand(n, -1, -1), s_I=s_i.view(-1, 1, 1, 1), s_T=s_t.view(-1, 1, 1, 1),
                      null_emb=null_emb)
    return x0_from_output(den.prediction_type, out, x_t, alpha, sigma)


class UNetDiscriminator(nn.Module):
    """A trainable copy of the diffusion model's `unet` network + a conv head: (x, t, conditioning) -> logit map."""

    def __init__(self, den: Any, hidden: int) -> None:
        super().__init__()
        den = copy.deepcopy(den)
        den.requires_grad_(False)
        self.unet = den.unet  # the trainable part; the text tower stays frozen outside this module's parameters
        self.unet.requires_grad_(True)
        self.__dict__["den"] = den  # not a submodule: its text encoder is not D's
        channels = int(getattr(den, "latent_channels", 4))
        self.head = nn.Sequential(nn.Conv2d(channels, hidden, 3, padding=1), nn.SiLU(), nn.Conv2d(hidden, 1, 1))

    def forward(self, x: torch.Tensor, t: torch.Tensor, src: torch.Tensor, emb: torch.Tensor, s_i: torch.Tensor,
                s_t: torch.Tensor) -> torch.Tensor:
        den = self.__dict__["den"]
        net = den.networks()["unet"].module
        inputs = den.graph_inputs(x, t, src, emb.expand(x.shape[0], -1, -1), s_i, s_t)
        active = getattr(net, "active", None)
        if active is None:
            return self.head(net(*inputs))
        with active():
            return self.head(net(*inputs))


def d_loss(real: torch.Tensor, fake: torch.Tensor) -> torch.Tensor:
    """-log D(real) - log(1 - D(fake)) on logits, per position: Eq. 1's discriminator term."""
    return F.softplus(-real).mean() + F.softplus(fake).mean()


def g_loss(fake: torch.Tensor) -> torch.Tensor:
    """-log D(fake): the non-saturating form of Eq. 1's generator term."""
    return F.softplus(-fake).mean()


def lora_targets(unet: nn.Module) -> list[str]:
    """Every linear layer and every non-grouped convolution (peft's LoRA has no grouped/depthwise conv)."""
    return [name for name, m in unet.named_modules()
            if isinstance(m, nn.Linear) or (isinstance(m, nn.Conv2d) and m.groups == 1)]


def add_lora(unet: nn.Module, rank: int, alpha: float | None) -> nn.Module:
    """Inject peft LoRA adapters in place (the module keeps its class); B starts at zero: no effect yet."""
    try:
        from peft import LoraConfig, inject_adapter_in_model
    except ImportError:
        raise UsageError("ufogen's lora option needs peft: pip install 'movie[train]'") from None
    config = LoraConfig(r=rank, lora_alpha=alpha or rank, target_modules=lora_targets(unet), lora_dropout=0.0,
                        init_lora_weights=True)
    return inject_adapter_in_model(config, unet)


def merge_lora(unet: nn.Module) -> nn.Module:
    """Fold every LoRA adapter into its base layer and put the base layer back (a plain module, plain state dict)."""
    from peft.tuners.lora import LoraLayer

    layers = [(name, m) for name, m in unet.named_modules() if isinstance(m, LoraLayer)]
    for name, layer in layers:
        layer.merge()
        parent_name, _, attr = name.rpartition(".")
        setattr(unet.get_submodule(parent_name) if parent_name else unet, attr, layer.get_base_layer())
    return unet


class UFOGenDistiller(BuiltinDistiller):
    name = "ufogen"
    produces = ""  # the teacher's own stage (set by make_student), sampled 1 step with LCM
    options_class = UFOGenOptions
    options: UFOGenOptions
    defaults: ClassVar[dict[str, float]] = {"lr": 1e-5}
    note = "UFOGen one-step model (LCM, 1 step); the teacher's guidance inputs are kept"

    # --- models ------------------------------------------------------------------------------------------------

    def make_student(self, teacher) -> torch.nn.Module:
        den = teacher.denoiser
        if not hasattr(den, "predict") or not isinstance(getattr(den, "unet", None), nn.Module):
            raise UsageError(f"distiller 'ufogen' trains the built-in denoisers; the teacher's denoiser is "
                             f"'{getattr(den, 'stage', type(den).__name__)}'")
        if den.prediction_type not in PREDICTIONS:
            raise UsageError(f"ufogen: the teacher predicts '{den.prediction_type}'; it needs one of "
                             f"{', '.join(PREDICTIONS)}")
        student = copy.deepcopy(den)
        student.default_steps = 1
        student.scheduler_name = "lcm"
        student.folder_scheduler = None  # its prediction type stays; LCM 1 step from t = 999 returns the x0 estimate
        if hasattr(student, "strength"):
            student.strength = None
        if self.options.lora:
            add_lora(student.unet, self.options.lora, self.options.lora_alpha)
        self.produces = teacher.recipe.denoiser
        return student

    def trainable_parameters(self) -> list[torch.nn.Parameter]:
        unet = self.student.unet
        if self.options.lora:  # the base weights stay frozen: only the adapters train (setup unfroze everything)
            for name, p in unet.named_parameters():
                p.requires_grad_("lora_" in name)
        return [p for p in unet.parameters() if p.requires_grad]

    @property
    def trainable_modules(self) -> list[torch.nn.Module]:
        return [self.student.unet, self.disc]

    def setup_extra(self, accelerator, cfg) -> None:
        super().setup_extra(accelerator, cfg)
        o = self.options
        teacher = self.teacher.denoiser
        self.real = o.real if o.real != "auto" else ("teacher" if teacher.guidance == "embedded" else "data")
        self.grid = timestep_grid(o.timesteps, accelerator.device)
        self.conditional = o.scales == "conditional" or (
            o.scales == "auto" and self.real in ("data", "pairs", "noise-pairs")
            and teacher.guidance in ("cfg2", "cfg3"))
        self.pair_cache: dict[Any, tuple[torch.Tensor, torch.Tensor]] = {}
        self.sampler = teacher
        if o.teacher_sampler_model and self.real == "data":
            raise UsageError(f"ufogen: teacher_sampler_model draws the real x0 of real=teacher, pairs or noise-pairs; "
                             f"this run's real x0 is the data (real={o.real})")
        if o.teacher_sampler_model:
            self.sampler = self.load_sampler(Path(o.teacher_sampler_model), accelerator.device)
        disc = UNetDiscriminator(teacher, o.head_channels).to(accelerator.device)
        disc.train()
        opt_d = torch.optim.AdamW([p for p in disc.parameters() if p.requires_grad], lr=o.lr_d, weight_decay=0.0)
        self.disc, opt_d = accelerator.prepare(disc, opt_d)
        self.optimizers.append(opt_d)  # after the student's: the loop's LR schedules follow this order
        self.ema_student = None
        if o.recon == "ema":
            wrapped = self.student.unet
            self.student._modules["unet"] = unwrap(wrapped)  # copy the bare UNet, not a DDP wrapper
            try:
                ema = copy.deepcopy(self.student)
            finally:
                self.student._modules["unet"] = wrapped
            ema.requires_grad_(False).eval()
            self.ema_student = ema
            accelerator.register_for_checkpointing(ema.unet)  # resumed with the run

    def load_sampler(self, folder: Path, device: torch.device) -> Any:
        """teacher_sampler_model's denoiser, if it can sample for this teacher: the same kind of model (an editing
        or a text-to-image denoiser, as the teacher), the same latents and the same prompt embeddings."""
        teacher = self.teacher.denoiser
        pipe = self.load_teacher(folder, device)
        sampler = pipe.denoiser
        where = f"ufogen: teacher_sampler_model {folder}"
        if sampler.prediction_type not in ("epsilon", "v_prediction"):
            raise UsageError(f"{where} predicts '{sampler.prediction_type}'; it needs epsilon or v_prediction")

        def kind(den: Any) -> str:
            return "an instruction-editing" if hasattr(den, "stage_info") else "a text-to-image"

        if kind(sampler) != kind(teacher):
            raise UsageError(f"{where} is {kind(sampler)} model, the teacher {kind(teacher)} one; the sampler "
                             "must be of the teacher's kind")
        mine, theirs = (pipe.composition.denoiser_latent_space(),
                        self.teacher.composition.denoiser_latent_space())
        if mine != theirs:
            raise UsageError(f"{where} works in the '{mine}' latent space, the teacher in '{theirs}'")
        null = sampler.encode_prompt([""])
        if null.shape != self.null_emb.shape or not torch.allclose(null.to(self.null_emb), self.null_emb, atol=1e-4):
            raise UsageError(f"{where} has another text tower than the teacher (its prompt embeddings differ); "
                             "the sampler is given the teacher's")
        return sampler

    def _disc_module(self) -> UNetDiscriminator:
        return getattr(self.disc, "module", self.disc)

    @torch.no_grad()
    def update_ema(self) -> None:
        assert self.ema_student is not None
        decay = self.options.recon_ema_decay
        ema = dict(self.ema_student.unet.named_parameters())
        for name, p in unwrap(self.student.unet).named_parameters():
            if p.requires_grad:
                ema[name].lerp_(p.detach(), 1 - decay)

    # --- one step ----------------------------------------------------------------------------------------------

    def real_x0(self, src, tgt, emb, s_i, s_t) -> torch.Tensor:
        if self.real == "data":
            return tgt
        with torch.no_grad():
            return self.teacher_sample(src, emb, s_i, s_t)

    def teacher_sample(self, src, emb, s_i, s_t, latents: torch.Tensor | None = None) -> torch.Tensor:
        return self.sampler.sample(src, emb, steps=self.options.teacher_steps, s_T=s_t.view(-1, 1, 1, 1),
                                   s_I=s_i.view(-1, 1, 1, 1), null_emb=self.null_emb, latents=latents)

    @torch.no_grad()
    def pairs(self, index: list[Any], src, emb) -> tuple[torch.Tensor, torch.Tensor]:
        """real=pairs: (noise, the teacher's sample from it) per example, both fixed by the example's index (noise and
        scales from a generator seeded by it, the teacher's sampler deterministic), each computed once and cached."""
        cache = self.pair_cache
        missing = [j for j, i in enumerate(index) if i not in cache]
        if missing:
            shape = src.shape[1:]
            gens = [torch.Generator().manual_seed(hash(index[j]) & 0x7FFFFFFF) for j in missing]
            noise = torch.stack([torch.randn(shape, generator=g) for g in gens]).to(src)
            u = torch.stack([torch.rand(2, generator=g) for g in gens]).to(src)
            o = self.options
            s_i = o.image_guidance_min + (o.image_guidance_max - o.image_guidance_min) * u[:, 0]
            s_t = o.text_guidance_min + (o.text_guidance_max - o.text_guidance_min) * u[:, 1]
            rows = torch.tensor(missing, device=src.device)
            x0 = self.teacher_sample(src[rows], emb.expand(src.shape[0], -1, -1)[rows], s_i, s_t, latents=noise)
            for k, j in enumerate(missing):
                cache[index[j]] = (noise[k], x0[k])
        return torch.stack([cache[i][0] for i in index]), torch.stack([cache[i][1] for i in index])

    def generator_input(self, x0: torch.Tensor, k: int) -> torch.Tensor:
        """x_t at grid point k: the forward process, or at the top (t = 999) with terminal=noise pure noise, what the
        one-step sampler gives the model (LCM from t = 999 starts at N(0, I))."""
        noise = torch.randn_like(x0)
        if k == self.options.timesteps and self.options.terminal == "noise":
            return noise
        alpha, sigma = vp_coefficients(self.acp, self.grid[k].view(1))
        return alpha * x0 + sigma * noise

    def sampling_scales(self) -> tuple[float, float]:
        """(s_I, s_T) of the exported recipe: 1 for a conditional generator, else the teacher's clamped into the
        trained ranges (a one-step model sampled at scales it never trained at is off its training)."""
        if self.conditional:
            return 1.0, 1.0
        o, r = self.options, self.teacher.recipe
        return (min(max(r.image_guidance, o.image_guidance_min), o.image_guidance_max),
                min(max(r.text_guidance, o.text_guidance_min), o.text_guidance_max))

    def train_step(self, batch: dict[str, Any], step: int) -> dict[str, float]:
        o = self.options
        src, tgt, emb = self.encode_batch(batch)
        n, dev = src.shape[0], src.device
        s_i, s_t = sample_guidance(o, n, dev)  # the teacher's scales for real=teacher
        k = int(torch.randint(1, o.timesteps + 1, (1,)).item())
        top = k == o.timesteps and o.terminal == "noise"
        if self.real == "pairs":
            start, x0 = self.pairs(batch["index"], src, emb)
        elif self.real == "noise-pairs" and top:  # the teacher from the generator's own noise, fresh each step
            # (below t = 999 x_t is made from x0, so noise-pairs samples the teacher from other noise, as 'teacher')
            start = torch.randn_like(src)  # the latents' shape (as pairs' noise)
            with torch.no_grad():
                x0 = self.teacher_sample(src, emb, s_i, s_t, latents=start)
        else:
            start, x0 = None, self.real_x0(src, tgt, emb, s_i, s_t)
        if self.conditional:  # the generator (and a distill/ema target) at s = 1
            s_i, s_t = torch.ones_like(s_i), torch.ones_like(s_t)
        t, t_prev = self.grid[k], self.grid[k - 1]
        alpha, sigma = vp_coefficients(self.acp, t.view(1))
        alpha_p, sigma_p = vp_coefficients(self.acp, t_prev.view(1))
        x_t = start if start is not None and top else self.generator_input(x0, k)
        x0_gen = guided_x0(self.student, x_t, t, src, emb, s_i, s_t, self.null_emb, alpha, sigma, self.conditional)
        noise = torch.randn_like(x0)
        real_prev = alpha_p * x0 + sigma_p * noise
        fake_prev = alpha_p * x0_gen + sigma_p * noise

        # discriminator: real and fake x_{t-1} in one pass, judged at t
        logits = self.disc(torch.cat([real_prev, fake_prev.detach()]), t, torch.cat([src, src]),
                           torch.cat([emb.expand(n, -1, -1)] * 2), torch.cat([s_i, s_i]), torch.cat([s_t, s_t]))
        loss_d = d_loss(logits[:n], logits[n:])
        self.step_optimizer(loss_d, self.optimizers[1], self.disc)

        # generator: D frozen (the unwrapped module: no DDP reduction for D)
        disc = self._disc_module()
        trainable = [p for p in disc.parameters() if p.requires_grad]
        for p in trainable:
            p.requires_grad_(False)
        try:
            adv = g_loss(disc(fake_prev, t, src, emb, s_i, s_t))
        finally:
            for p in trainable:
                p.requires_grad_(True)
        with torch.no_grad():
            if o.recon == "diffusion":
                target = x0
            elif o.recon == "distill":
                target = guided_x0(self.teacher.denoiser, x_t, t, src, emb, s_i, s_t, self.null_emb, alpha, sigma,
                                   self.conditional)
            else:
                target = guided_x0(self.ema_student, x_t, t, src, emb, s_i, s_t, self.null_emb, alpha, sigma,
                                   self.conditional)
        recon = F.mse_loss(x0_gen.float(), target.float())
        loss_g = o.lambda_recon * recon + o.lambda_adv * adv
        self.step_optimizer(loss_g, self.optimizers[0], self.student.unet)
        if self.ema_student is not None:
            self.update_ema()
        return {"loss": loss_g.item(), "recon": recon.item(), "g_adv": adv.item(), "d_loss": loss_d.item()}

    # --- export ------------------------------------------------------------------------------------------------

    def export_denoiser(self) -> torch.nn.Module:
        student = copy.copy(self.student)
        unet = unwrap(self.student.unet)
        if self.options.lora:
            unet = merge_lora(copy.deepcopy(unet))
        student.__dict__["_modules"] = dict(student._modules)  # copy.copy shares it: swap the unet in the copy only
        student.unet = unet
        return student

    def export(self, out: Path, extra: dict[str, Any], overwrite: bool = False) -> Path:
        """The student as its teacher's stage, sampled 1 step with LCM (the recipe's scheduler and steps say so)."""
        from movie_core.composer import compose
        from movie_core.pipeline import Pipeline

        student = self.export_denoiser().eval()
        s_i, s_t = self.sampling_scales()
        recipe = self.teacher.recipe.replace(denoiser=self.produces, steps=1, scheduler="lcm", image_guidance=s_i,
                                             text_guidance=s_t)
        pipe = Pipeline(compose(recipe), self.teacher.encoder, self.teacher.decoder, student,
                        device=self.teacher.device, dtype=self.teacher.dtype)
        return pipe.save_pretrained(out, extra=extra | self.manifest_fields())
