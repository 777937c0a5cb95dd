"""Options of the built-in distillers (attrs classes; `-O key=value` on `movie distill`). No torch here."""

from __future__ import annotations

import attrs

from movie_core.recipe import FRAME_BLENDS

_ge0 = attrs.validators.ge(0)
_prob = attrs.validators.and_(attrs.validators.ge(0), attrs.validators.le(1))
_pos = attrs.validators.gt(0)

CFG3_STAGES = ("instruct-pix2pix", "mobile-pix2pix")
TEACHER_SAMPLERS = ("stage3", "student-init")
GUIDANCE_INJECT = ("resnet", "time")


def _float(**kw):
    return attrs.field(converter=float, **kw)


@attrs.frozen(kw_only=True)
class GuidanceRanges:
    """Ranges of the guidance scales sampled per example (paper Algorithm 1: s_I ~ U[1,3], s_T ~ U[2,14])."""

    image_guidance_min: float = _float(default=1.0, validator=_ge0)
    image_guidance_max: float = _float(default=3.0, validator=_ge0)
    text_guidance_min: float = _float(default=2.0, validator=_ge0)
    text_guidance_max: float = _float(default=14.0, validator=_ge0)

    def __attrs_post_init__(self) -> None:
        for what in ("image", "text"):
            lo, hi = getattr(self, f"{what}_guidance_min"), getattr(self, f"{what}_guidance_max")
            if lo > hi:
                raise ValueError(f"{what}_guidance_min ({lo}) is above {what}_guidance_max ({hi})")


@attrs.frozen(kw_only=True)
class Pix2PixFinetuneOptions:
    """InstructPix2Pix training (Brooks et al.): conditioning dropout 5% text, 5% image, 5% both.

    weighting: 'uniform' (InstructPix2Pix's, default): the plain mean squared error of the prediction; 'v' (a
    departure, ours): each example's squared error counted as the error in v it implies, which for an epsilon model
    is its epsilon error over alpha_bar_t (a v model's loss is that already: unchanged), as a weighted mean over
    the batch. Under SD's schedule an epsilon model's x0 at t near 999 is its epsilon error divided by
    sqrt(alpha_bar_t), about 0.07, so the plain loss barely counts the examples that set an edit's colours when
    sampling starts from pure noise (docs/paper_fidelity.md measures it at nano scale)."""

    stage: str | None = attrs.field(default=None,
                                    validator=attrs.validators.optional(attrs.validators.in_(CFG3_STAGES)))
    drop_text: float = _float(default=0.05, validator=_prob)
    drop_image: float = _float(default=0.05, validator=_prob)
    drop_both: float = _float(default=0.05, validator=_prob)
    weighting: str = attrs.field(default="uniform", validator=attrs.validators.in_(("uniform", "v")))

    def __attrs_post_init__(self) -> None:
        total = self.drop_text + self.drop_image + self.drop_both
        if total > 1:
            raise ValueError(f"drop_text + drop_image + drop_both must be <= 1, got {total:g}")


@attrs.frozen(kw_only=True)
class MMGOptions(GuidanceRanges):
    """Algorithm 1: multimodal guidance distillation.

    loss = loss_weight * ||student(x_t, c_I, c_T, s_I, s_T) - CFG_teacher(x_t, c_I, c_T; s_I, s_T)||^2

    guidance_inject: 'resnet' (paper Sec. 3.3, default): each ResNet block takes the scales' sinusoids through its
    own linear layer (zero-initialised); 'time' (ours, the shipped nano family): one projection of them added to
    the shared time embedding.

    weighting: 'uniform' (Algorithm 1's plain squared error, default); 'v' (a departure, ours, as pix2pix-finetune's):
    each example's epsilon error counted as the v error it implies (over alpha_bar_t), so the student also matches
    its teacher where sampling starts, at t near 999, which the plain loss barely counts. Measured on the nano family
    (1500 steps from a 'v'-weighted base, docs/paper_fidelity.md): 16.95 dB at 10 steps with 'uniform', 16.65 with
    'v', and a closer match to the teacher's guidance with 'uniform': the teacher's start carries over without it.
    """

    loss_weight: float = _float(default=1.0, validator=_pos)
    guidance_inject: str = attrs.field(default="resnet", validator=attrs.validators.in_(GUIDANCE_INJECT))
    weighting: str = attrs.field(default="uniform", validator=attrs.validators.in_(("uniform", "v")))


@attrs.frozen(kw_only=True)
class VPredOptions(GuidanceRanges):
    """v-prediction finetune: the student matches v derived from the epsilon teacher (Salimans & Ho).

    weighting: how examples at different t count. 'uniform' (default) = the plain mean squared error in v (a
    constant lambda; the paper writes lambda without giving it); 'relative' = each example's squared error over
    its target's squared norm, so every t counts by its relative error. Near t = 999 the teacher-derived
    v = (eps_hat - sigma x_t) / alpha_t magnifies the teacher's own epsilon error up to ~15x and those targets
    dominate 'uniform'. Measured on the nano family (400 steps, batch 16): 'relative' lowers the relative error
    at t < 400 (0.17 -> 0.09) but raises it above t = 400 (0.09 -> 0.10 at 400-600, 0.47 -> 0.57 near 999)."""

    loss_weight: float = _float(default=1.0, validator=_pos)
    weighting: str = attrs.field(default="uniform", validator=attrs.validators.in_(("uniform", "relative")))
    default_steps: int = attrs.field(default=10, converter=int, validator=attrs.validators.ge(1))


@attrs.frozen(kw_only=True)
class AdversarialOptions(GuidanceRanges):
    """Algorithm 2 (after LADD). The paper gives lr 1e-5 and the noise (-1, 1); the loss weights are ours.

    data_weight (ours, 0 = the paper): the real samples become x0 + w (z_edit - x0_ref), x0_ref the teacher's
    sample at (data_image_guidance, data_text_guidance) from the same noise, z_edit the ground-truth edit; the
    student keeps the teacher's response to s_I and s_T and learns the ground truth at the anchor. Measured on
    the nano family (1000 steps, held-out PSNR of the 1-step model): 15.96 dB at w = 0, 17.46 at 0.5, 17.31 at 1
    (its teacher, the v-prediction model at 5 LCM steps, 14.27).

    teacher_sampler: 'stage3' (default, Appendix B "Teacher": the Stage-3 checkpoint, sampled 5 steps with LCM,
    also the discriminator's frozen encoder) needs teacher_sampler_model; 'student-init' takes the --teacher
    (v-prediction) model for both, as the shipped nano family was trained (docs/paper_fidelity.md)."""

    def __attrs_post_init__(self) -> None:
        super().__attrs_post_init__()
        if self.teacher_sampler == "student-init" and self.teacher_sampler_model:
            raise ValueError("teacher_sampler=student-init samples with the --teacher model; "
                             "drop teacher_sampler_model (or use teacher_sampler=stage3)")

    # the multi-step teacher M (real samples) and the discriminator's frozen backbone: 'stage3' (Appendix B) is the
    # Stage-3 model (guidance-distilled, epsilon) named by teacher_sampler_model; 'student-init' (ours, a named
    # departure: the shipped nano family ran this way) is the --teacher folder, the v-prediction model
    teacher_sampler: str = attrs.field(default="stage3", validator=attrs.validators.in_(TEACHER_SAMPLERS))
    teacher_sampler_model: str | None = None  # the Stage-3 model folder (or nano:mobile-pix2pix-mmg)
    teacher_steps: int = attrs.field(default=5, converter=int, validator=attrs.validators.ge(1))
    teacher_scheduler: str = attrs.field(default="lcm",
                                         validator=attrs.validators.in_(("lcm", "euler", "euler-ancestral", "ddim")))
    # the Euler timesteps the student trains at, 999 down to 0 (1: at 999 only, where the 1-step sampler runs)
    student_timesteps: int = attrs.field(default=8, converter=int, validator=attrs.validators.ge(1))
    lambda_mse: float = _float(default=1.0, validator=_ge0)
    lambda_gen: float = _float(default=0.1, validator=_ge0)
    lambda_r1: float = _float(default=1e-3, validator=_ge0)
    lr_d: float = _float(default=1e-5, validator=_pos)
    disc_noise_mean: float = _float(default=-1.0)
    disc_noise_std: float = _float(default=1.0, validator=_pos)
    head_channels: int = attrs.field(default=128, converter=int, validator=attrs.validators.ge(1))
    # ground-truth anchoring: see the class docstring
    data_weight: float = _float(default=0.0, validator=_prob)
    data_image_guidance: float = _float(default=1.5, validator=_ge0)
    data_text_guidance: float = _float(default=7.5, validator=_ge0)


@attrs.frozen(kw_only=True)
class ClockworkOptions:
    """Clockwork adaptor distillation (model-step distillation, Clockwork Sec. 4; the frame clock is ours).

    kind 'step': trajectories the frozen teacher unrolls from noise with its own sampler and `steps` (default: the
    teacher recipe's) on the dataset's images and instructions; the adaptor learns r_out at the steps the clock
    skips from r_in there and r_out at the last full step. kind 'frame': consecutive frames of procedural videos
    (movie_core.data.procedural, rendered per step from the run's seed; the dataset is not read), every clock-th
    frame full, the others learn their r_out from their r_in and the last full frame's r_out at the same step.
    `hidden`: the adaptor's width (default movie_core.clockwork.default_hidden: 1.3 x the channels entering the core,
    416 and the paper's ~14M parameters at SD size). `use_r_out` false: the paper's ablation of an adaptor fed r_in,
    time and text only (no last full evaluation's r_out; Clockwork Table 3, FID 40.7 against 23.2). `blend` (kind
    'frame'): the r_out the adaptor starts from, as the recipe's `frame_blend` it will run with: 'linear' trains
    the frames between two full frames on their distance-weighted blend and on the earlier one alone (a batch's
    trailing frames), 'previous' on the earlier one alone."""

    kind: str = attrs.field(default="step", validator=attrs.validators.in_(("step", "frame")))
    clock: int = attrs.field(default=2, converter=int, validator=attrs.validators.ge(2))
    steps: int | None = attrs.field(default=None, converter=attrs.converters.optional(int),
                                    validator=attrs.validators.optional(attrs.validators.ge(1)))
    prediction: str | None = attrs.field(
        default=None, validator=attrs.validators.optional(attrs.validators.in_(("epsilon", "v_prediction"))))
    hidden: int | None = attrs.field(default=None, converter=attrs.converters.optional(int),
                                     validator=attrs.validators.optional(attrs.validators.ge(1)))
    use_r_out: bool = attrs.field(default=True, validator=attrs.validators.instance_of(bool))
    # kind 'frame': what the adaptor starts from, as the recipe's frame_blend (movie_core.clockwork.frame_blend)
    blend: str = attrs.field(default=FRAME_BLENDS[0], validator=attrs.validators.in_(FRAME_BLENDS))


def _lora_rank(instance, attribute, value) -> None:
    if value is not None and value < 1:
        raise ValueError(f"lora must be a rank >= 1, got {value}")


@attrs.frozen(kw_only=True)
class UFOGenOptions(GuidanceRanges):
    """UFOGen one-step diffusion-GAN fine-tuning as MobileDiffusion studies it (Sec. 4, Eq. 1-3).

    recon: the reconstruction term beside the adversarial one. 'diffusion' (Eq. 1, the paper's final choice):
    ||x0 - G(x_t, t)||^2 to the real sample; 'distill' (Eq. 2): to the teacher's one-pass x0 prediction at x_t;
    'ema' (Eq. 3): to an EMA of the generator (decay `recon_ema_decay`). lora: train LoRA adapters of this rank on
    the generator (peft; every linear and non-grouped conv layer, initialised to no effect) instead of all weights.
    real: where the real x0 comes from: 'data' (the dataset's target image; UFOGen's setting), 'teacher' (the frozen
    teacher sampled `teacher_steps` steps with its own sampler at the sampled guidance scales, as MoViE's Algorithm
    2 does, so the one-step model keeps responding to s_I and s_T), 'pairs' (the teacher's sample, at scales drawn
    once per example, from a noise fixed per training example, both seeded by its index and computed once, and at
    t = 999 the generator's input is that noise: the generator learns the teacher's noise-to-image map, where the
    data or a teacher sample from other noise teach it at pure noise only the mean over all the prompt allows, a
    blur of every position), 'noise-pairs' (as 'teacher', but at t = 999 the teacher samples from the generator's
    own input noise, drawn fresh each step with fresh scales: the generator learns the teacher's noise-to-image map
    at every scale, so a scale's effect on that map is not lost in the spread of samples from other noises), 'auto'
    (teacher for guidance-embedded teachers, else data). timesteps: the generator
    trains at t in {999 k / timesteps, k = 1..timesteps} (t = 999 is the one step at inference) and t-1 is the next
    lower one (0 below the lowest). The loss weights are ours; the paper's gamma_t is taken as 1.
    scales: the guidance scales the generator's output is taken at. 'sampled': s_I, s_T per example from the ranges
    (the guided output is what is trained and what the exported recipe's scales, clamped into the ranges, sample);
    'conditional': s_I = s_T = 1, the prompt's (and source's) pass alone, and the exported recipe samples at 1
    (UFOGen's one-step text-to-image model has no classifier-free guidance; with real=teacher or pairs the teacher
    still samples at the ranges' scales); 'auto': conditional when the real x0 is the data or (noise-)pairs and the
    teacher's guidance is 2- or 3-pass CFG (data carry no guidance: one guided output can not match them at every
    scale, and the unconditional pass does not see the prompt), else sampled.
    terminal: the generator's input at t = 999. 'noise': pure noise, what the one-step sampler starts from (SD's
    schedule keeps alpha_999 = 0.068 of x0 there, enough for a generator trained on it to read an image's mean
    colour from x_t, which inference never gives it); 'schedule': alpha_999 x0 + sigma_999 eps.
    teacher_sampler_model: a model folder whose denoiser draws the real x0 of real=teacher, pairs and noise-pairs
    in place of the --teacher (which still starts the generator and the discriminator): MoViE's Appendix B samples
    its adversarial teacher from the Stage-3 (guidance-distilled) model, so `nano:mobile-pix2pix-mmg` with a
    v-prediction --teacher gives ufogen the teacher `adversarial` has by default. Its text tower must match the
    teacher's (the prompt embeddings are the teacher's; checked on the empty prompt). Refused when the real x0 is
    the data."""

    recon: str = attrs.field(default="diffusion", validator=attrs.validators.in_(("diffusion", "distill", "ema")))
    lora: int | None = attrs.field(default=None, converter=attrs.converters.optional(int), validator=_lora_rank)
    lora_alpha: float | None = attrs.field(default=None, converter=attrs.converters.optional(float),
                                           validator=attrs.validators.optional(_pos))
    recon_ema_decay: float = _float(default=0.999, validator=_prob)
    real: str = attrs.field(default="auto", validator=attrs.validators.in_(
        ("auto", "data", "teacher", "pairs", "noise-pairs")))
    teacher_steps: int = attrs.field(default=5, converter=int, validator=attrs.validators.ge(1))
    timesteps: int = attrs.field(default=4, converter=int, validator=attrs.validators.ge(1))
    lambda_recon: float = _float(default=1.0, validator=_ge0)
    lambda_adv: float = _float(default=0.1, validator=_ge0)
    lr_d: float = _float(default=1e-5, validator=_pos)
    head_channels: int = attrs.field(default=32, converter=int, validator=attrs.validators.ge(1))
    scales: str = attrs.field(default="auto", validator=attrs.validators.in_(("auto", "sampled", "conditional")))
    terminal: str = attrs.field(default="noise", validator=attrs.validators.in_(("noise", "schedule")))
    teacher_sampler_model: str | None = None


T2I_INIT = ("auto", "model", "random")


@attrs.frozen(kw_only=True)
class T2ITrainOptions:
    """Text-to-image training (teacher-less): the standard diffusion loss on (image, caption) pairs.

    init: where the trained model starts. 'model' continues the --teacher folder's text-to-image denoiser; 'random'
    builds a new `denoiser` (a registered text-to-image one, random UNet at the folder's size) and keeps the
    folder's text tower, tokenizer and autoencoders, so any model folder (`nano:instruct-pix2pix`, the shipped nano
    family's) can seed a text-to-image model from scratch; 'auto' continues a text-to-image folder and starts a
    random one otherwise. The --teacher folder is never a teacher: nothing is distilled from it.
    caption_dropout: the share of examples trained on the empty caption, so that classifier-free guidance (the
    denoiser's 2 passes) works. train_text: the text tower trains with the UNet (the nano family's BPE tokenizer
    splits unknown words into characters; its frozen tower has not learnt to read them). snr_gamma: Min-SNR loss
    weighting (Hang et al. 2023: each t's loss times min(SNR_t, gamma) / SNR_t for epsilon, min(SNR_t, gamma) /
    (SNR_t + 1) for v); None: the plain MSE. offset_noise: a per-channel constant of this scale added to the noise
    (Guttenberg 2023), so the model learns to change an image's mean colour, which SD's schedule barely noises
    away. prediction: what the trained UNet predicts, 'epsilon' or 'v_prediction' (Salimans & Ho: v ~ -x0 at high
    noise, so a young model gets an image's layout and colours right before its details); None: the start's own
    (a random start: the denoiser's, epsilon for the built-in ones). A model continued from its folder keeps its
    own unless asked. steps: the sampling steps the exported model's recipe records (None: the denoiser's own,
    DDIM 25)."""

    init: str = attrs.field(default="auto", validator=attrs.validators.in_(T2I_INIT))
    denoiser: str = "mobile-diffusion"
    caption_dropout: float = _float(default=0.1, validator=_prob)
    train_text: bool = attrs.field(default=True, validator=attrs.validators.instance_of(bool))
    snr_gamma: float | None = attrs.field(default=None, converter=attrs.converters.optional(float),
                                          validator=attrs.validators.optional(_pos))
    offset_noise: float = _float(default=0.0, validator=_ge0)
    steps: int | None = attrs.field(default=None, converter=attrs.converters.optional(int),
                                    validator=attrs.validators.optional(attrs.validators.ge(1)))
    prediction: str | None = attrs.field(
        default=None, validator=attrs.validators.optional(attrs.validators.in_(("epsilon", "v_prediction"))))
