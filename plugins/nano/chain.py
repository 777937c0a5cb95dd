"""The nano model family's training chain (run by `movie nano-train`): every stage of the MoViE recipe in order.

data -> autoencoders (nano SD VAE, TAESD distilled into its latent space) -> taesd-decoder (robust to
off-manifold latents) -> taesd-decoder-colour (the colours of the TAESD encoder's latents, grey included)
-> taesd-decoder-grey (the same at 128 px, grey-heavy: grey stays grey, also from latents off the manifold)
-> text (BPE tokenizer + nano CLIP text tower) -> instruct-pix2pix (pix2pix-finetune from random init)
-> mobile-pix2pix (top attention dropped, TAESD swapped in, finetuned) -> mobile-pix2pix-mmg (Algorithm 1)
-> vpred -> mobile-pix2pix-1step (Algorithm 2) -> ship (the four stage folders plus the shared autoencoders,
laid out as the package's built-in models). Each denoiser stage is `movie distill` from the previous stage's folder.

Where mobile-pix2pix starts is the budget's `stage_order`. 'ip2p' (the default; how the shipped family was trained):
from the trained instruct-pix2pix above, its top attention dropped. 'paper' (Sec. 4's order): a text-to-image model
first -- captions (`movie data captions`, written once) -> text-to-image (`t2i-train` of a random nano
`stable-diffusion` UNet with the chain's autoencoders and frozen text tower) -> text-to-image-noattn (`movie convert
--drop-top-attention`: Stage 1's block removal) -> text-to-image-finetuned (`t2i-train -O init=model` of that on the
captions for `t2i_mobile_steps`: Stage 1's finetune) -> text-to-image-mobile (`movie convert --to mobile-pix2pix`: 4
zero-initialised image-latent channels added, TAESD swapped in) -> mobile-pix2pix (pix2pix-finetune of that on the
editing data, Stage 2). `t2i_mobile_steps` 0 skips Stage 1's finetune: both structural changes come at once, as the
first paper-order chains ran. With `editing_unet` mobile-diffusion (issue 23) the text-to-image model and the
mobile line are MobileDiffusion UNets (`_md_line`; no SD top attention to drop). instruct-pix2pix still trains (the
ladder's base model) but the mobile line does not start from it. Every denoiser stage's manifest records its `chain`
provenance (the order and the folders it descends from, `lineage`); chain.json records the order and every stage's
lineage.

Resumable: a finished stage (its output folder exists) is skipped; an interrupted distiller stage resumes
from its last checkpoint. Per-stage wall times go to <out>/chain.json.
"""

from __future__ import annotations

import json
import shutil
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import attrs

from movie_core.data import procedural
from movie_core.errors import UsageError
from movie_core.weights import replace_folder

FIRST_BASE = "instruct-pix2pix-uniform"  # the base's first run (ChainBudget.ip2p_uniform_steps), not shipped
SHIPPED_STAGES = ("instruct-pix2pix", "mobile-pix2pix", "mobile-pix2pix-mmg", "vpred", "mobile-pix2pix-1step")
SHARED_AUTOENCODERS = ("vae", "taesd")
TAESD_LITE, TAESD_LITE_METRICS = "taesd-lite", "taesd_lite.json"  # the taesd-lite stage's folder and record
SHARED_TEXT = ("text_encoder", "tokenizer")  # frozen in every stage: one copy, where all stages have the same
STAGE_ORDERS = ("ip2p", "paper")  # ChainBudget.stage_order
# budget counts only the 'paper' order uses
PAPER_ORDER_KEYS = ("captions", "t2i_steps", "t2i_mobile_steps", "md_edit_steps")
EDITING_UNETS = ("stable-diffusion", "mobile-diffusion")  # ChainBudget.editing_unet


@attrs.frozen(kw_only=True)
class ChainBudget:
    """Sizes and lengths of every stage: the budget the shipped family was trained with (its stage times are in
    plugins/nano/chain.json; `--preset shipped` repeats it), except choices that now follow the paper: the
    adversarial stage's teacher sampler and discriminator backbone are the Stage-3 model (Appendix B), the mmg stage
    gives each ResNet block its own guidance projection (Sec. 3.3), and the 1-step stage trains at Appendix B's 8
    timesteps with its GAN term on the chain's own data; and one that departs from it further: the epsilon stages'
    loss weights each example's error as an error in v (`pix2pix_weighting`). About a quarter of it goes to the
    autoencoders because they cap every later stage: what they cannot reconstruct (a whole frame, a colour, grey) no
    denoiser stage can edit. The measurements behind the numbers are in docs/results/."""

    count: int = 8000
    videos: int = 24
    # what the denoiser stages' dataset and the autoencoders' image pool show (`movie data nano --source`;
    # nano_train.POOL_PHOTO_SHARE): procedural scenes (what the shipped family was trained on), photos (crops of and
    # camera moves over packaged photographs, photographic scenes) or mixed
    data_source: str = attrs.field(default="procedural",
                                   validator=attrs.validators.in_(("procedural", "photos", "mixed")))
    resolution: int = 64
    batch_size: int = 32
    ae_pool: int = 4096
    ae_crop: int = 32  # the autoencoders train on crops of the pool's images: 4x cheaper steps on a CPU
    ae_batch_size: int = 64
    # every 4th VAE step sees whole images (16 at 64 px, the pixels of 64 crops): a VAE trained on crops alone
    # reconstructs crops well and whole frames badly
    ae_whole_every: int = 4
    vae_steps: int = 3000
    taesd_steps: int = 3000
    taesd_decoder_steps: int = 600
    # the TAESD decoder again at this size, grey-heavy (nano_train.finetune_taesd_decoder_grey): without it grey
    # comes back tinted at 128 px, and a grayscale edit cannot be grey
    taesd_grey_steps: int = 600
    taesd_grey_resolution: int = 128
    # MobileDiffusion's md-vae (8 latent channels) on the same pool and batches: stage 1 (encoder + full decoder) for
    # this many steps, stage 2 (the light decoder, encoder frozen) for half as many; 0: no md-vae stage. Not
    # shipped (the nano family's weights are at the size limit); the md8 denoisers need it (issue 23)
    md_vae_steps: int = 0
    # the default recipe's autoencoder, taesd-lite (TAESD without its full-resolution blocks, ~1/3 of its CPU time),
    # distilled from the finished TAESD for this many steps (movie_plugins.nano.taesd_lite); 0: none
    taesd_lite_steps: int = 2500
    text_steps: int = 600
    ip2p_steps: int = 6000
    ip2p_lr: float = 5e-4
    # the base in two runs (0: one): first this many steps with InstructPix2Pix's plain loss ('uniform', in
    # work/instruct-pix2pix-uniform), then a fresh run of ip2p_steps (new optimizer and warmup) from its weights with
    # pix2pix_weighting. A base that learned the plain loss first and 'v' after edits above identity in few
    # steps (docs/paper_fidelity.md), and the first run is the shipped base of 2026-12-06 (--reuse-from nano copies it)
    ip2p_uniform_steps: int = 0
    mobile_steps: int = 2000
    mobile_lr: float = 2e-4
    # pix2pix-finetune's weighting over t in the epsilon stages (instruct-pix2pix, mobile-pix2pix of the SD line):
    # 'uniform' (InstructPix2Pix's plain loss, the shipped family's) or 'v' (each example's error in v): with the plain
    # loss the nano models' multi-step edits get their colours wrong at t near 999; 2000 more steps of the shipped
    # base with 'v' edit at 16.12 dB (20 steps) against 13.59 with 'uniform' (docs/paper_fidelity.md)
    pix2pix_weighting: str = attrs.field(default="v", validator=attrs.validators.in_(("uniform", "v")))
    # mobile-pix2pix's own weighting over t (SD line): 'same' (pix2pix_weighting, as every chain before the key ran),
    # 'uniform' or 'v'. From a two-run base (ip2p_uniform_steps), Mobile-Pix2Pix with 'uniform' edits 16.17 dB on the
    # held-out set against 15.59 with 'v' (docs/results/nano.md section 8)
    mobile_weighting: str = attrs.field(default="same", validator=attrs.validators.in_(("same", "uniform", "v")))
    mmg_steps: int = 4000  # enough to halve the held-out distance to the 3-pass teacher (the paper's bar)
    mmg_lr: float = 3e-4
    # the mmg stage's weighting over t (`-O weighting`, SD line): 'uniform' (Algorithm 1's plain error) or 'v' (each
    # example's error in v, as pix2pix_weighting): 'v' measured 0.3 dB below 'uniform' from a 'v'-weighted teacher
    # (docs/paper_fidelity.md), so the plain loss stays
    mmg_weighting: str = attrs.field(default="uniform", validator=attrs.validators.in_(("uniform", "v")))
    vpred_steps: int = 3500
    vpred_lr: float = 2e-4
    # 'relative' (each example's error over its target's norm) keeps the large errors near t = 999 from
    # dominating: at these steps it meets the held-out bar (relative v error under 0.1 at t < 600); 'uniform' does not
    vpred_weighting: str = attrs.field(default="relative", validator=attrs.validators.in_(("uniform", "relative")))
    adversarial_steps: int = 1000
    adversarial_lr: float = 1e-4  # a smaller rate leaves the 1-step model below mmg in this many steps
    # ground-truth anchoring of the real samples (adversarial `-O data_weight`; 0 = the paper's Algorithm 2):
    # without it the 1-step model scores over 1 dB lower on held-out data at this many steps
    adversarial_data_weight: float = 1.0
    # every other 1-step step at this size (0: none), a quarter of the batch: a 1-step model trained at 64 px only
    # edits 128-px frames clearly worse, grayscale most of all
    adversarial_extra_resolution: int = 128
    # the Euler timesteps the 1-step student trains at (adversarial `-O student_timesteps`): 8 (Appendix B, 999 down
    # to 0, so it also samples in a few steps) or 1 (only 999, where the 1-step sampler runs; docs/results/nano.md
    # section 8)
    adversarial_timesteps: int = attrs.field(default=8, validator=attrs.validators.ge(1))
    # the generator's GAN term weight (adversarial `-O lambda_gen`; 0 = the MSE to the anchored real samples alone):
    # at one timestep, 0 kept grey greyer on the photographs, procedural or mixed data (docs/results/nano.md section 8)
    adversarial_gan_weight: float = attrs.field(default=0.1, validator=attrs.validators.ge(0))
    # the guidance scales the 1-step student trains at: 'ranges' (Algorithm 2's, s_I ~ U[1, 3], s_T ~ U[2, 14]) or
    # 'anchor' (only the anchor the default runs at, 1.5 and 7.5: with adversarial_data_weight 1 and no GAN term the
    # real samples are then the ground truth and the teacher is not run, about 2.3 times faster a step; the student
    # no longer learns the scales' effect). docs/results/nano.md section 8
    adversarial_guidance: str = attrs.field(default="ranges", validator=attrs.validators.in_(("ranges", "anchor")))
    # what the 1-step stage's dataset shows ('same': the chain's data_source; else a second dataset of the same size
    # and seed from that source, in work/data-<source>): the earlier stages and every stage's held-out measure keep
    # the chain's data. From the shipped vpred, 'mixed' at one timestep with no GAN term passes the most photo bars
    # (docs/results/nano.md section 8)
    adversarial_data_source: str = attrs.field(
        default="same", validator=attrs.validators.in_(("same", "procedural", "photos", "mixed")))
    # Appendix B: 'stage3' = the mmg stage's model samples the real examples and is the discriminator's backbone;
    # 'student-init' = the vpred model (the adversarial stage's own start), as the shipped family was trained
    adversarial_teacher: str = attrs.field(default="stage3",
                                           validator=attrs.validators.in_(("stage3", "student-init")))
    # Sec. 3.3: 'resnet' = each ResNet block's own guidance projection; 'time' = one added to the time embedding
    guidance_inject: str = attrs.field(default="resnet", validator=attrs.validators.in_(("resnet", "time")))
    # where mobile-pix2pix starts (module docstring): 'ip2p' = the trained instruct-pix2pix, its top attention
    # dropped (the shipped family); 'paper' = Sec. 4's order, a text-to-image model trained first (t2i_steps on
    # `captions` captioned scenes), its top attention dropped and zeroed image channels added
    stage_order: str = attrs.field(default="ip2p", validator=attrs.validators.in_(STAGE_ORDERS))
    # the UNet of the mobile line (mobile-pix2pix and after): SD-1.5's ('stable-diffusion', the shipped family) or
    # MobileDiffusion's ('mobile-diffusion', issue 23): a MobileDiffusion UNet starts from its own text-to-image
    # model (v-prediction, so the chain has no vpred stage) and needs the 'paper' order
    editing_unet: str = attrs.field(default="stable-diffusion", validator=attrs.validators.in_(EDITING_UNETS))
    md_edit_steps: int = 3000  # its Stage 2 (pix2pix-finetune from the converted text-to-image model)
    md_edit_lr: float = 5e-4
    captions: int = 8000  # captioned scenes of the text-to-image stage ('paper' order only)
    t2i_steps: int = 4000  # text-to-image training steps ('paper' order only)
    t2i_lr: float = 5e-4
    # Sec. 4 Stage 1's finetune of the text-to-image model once its top attention is dropped, before Stage 2 adds the
    # image channels (text-to-image steps at t2i_lr, 'paper' order, SD line only; 0: no finetune, both changes at once,
    # as paper-order chains ran before the key existed; `--preset paper` sets it)
    t2i_mobile_steps: int = 0
    ema_decay: float = 0.999
    seed: int = 0

    def __attrs_post_init__(self) -> None:
        if self.editing_unet == "mobile-diffusion" and self.stage_order != "paper":
            raise ValueError("'editing_unet' mobile-diffusion needs 'stage_order' paper: the MobileDiffusion UNet "
                             "starts from its own text-to-image model (no SD weights carry over)")

    @property
    def mobile_pix2pix_weighting(self) -> str:
        """The weighting mobile-pix2pix trains with (mobile_weighting, 'same' resolved)."""
        return self.pix2pix_weighting if self.mobile_weighting == "same" else self.mobile_weighting

    def scaled(self, factor: float) -> ChainBudget:
        """Every step count (and the dataset sizes) times `factor`, at least 2. The text-to-image stage's only in the
        'paper' order: it does not run otherwise, and a budget recorded before its keys existed (scaled or not)
        holds their defaults (LEGACY), so an ip2p budget keeps them."""
        paper_only = () if self.stage_order == "paper" else PAPER_ORDER_KEYS
        keys = [f.name for f in attrs.fields(ChainBudget)
                if (f.name.endswith("_steps") or f.name in ("count", "videos", "ae_pool", "captions"))
                and f.name not in paper_only]
        return attrs.evolve(self, **{k: max(2, round(getattr(self, k) * factor)) if getattr(self, k) else 0
                                     for k in keys})


# what a budget recorded before these keys existed (the shipped family's chain.json) ran with
LEGACY = {"adversarial_teacher": "student-init", "guidance_inject": "time", "data_source": "procedural",
          "md_vae_steps": 0, "taesd_lite_steps": 0, "stage_order": "ip2p", "captions": 8000, "t2i_steps": 4000,
          "t2i_lr": 5e-4, "t2i_mobile_steps": 0,
          "editing_unet": "stable-diffusion", "md_edit_steps": 3000, "md_edit_lr": 5e-4,
          "pix2pix_weighting": "uniform", "mmg_weighting": "uniform", "adversarial_timesteps": 8,
          "adversarial_gan_weight": 0.1, "adversarial_data_source": "same", "ip2p_uniform_steps": 0,
          "mobile_weighting": "same", "adversarial_guidance": "ranges"}

# named budgets of `movie nano-train --preset`: 'shipped' repeats the shipped family's training; 'paper' keeps its
# step counts and sizes and takes the paper's values everywhere else the budget allows (docs/paper_fidelity.md)
PRESETS: dict[str, dict[str, Any]] = {
    # its taesd-lite was distilled after the key existed; since 2026-12-07 its base is the two-run one (6000 steps on
    # the plain loss, 2000 with 'v'), Mobile-Pix2Pix on the plain loss, and its 1-step stage trains on mixed data, at
    # t = 999 only, at the anchor scales only, with no GAN term, 5000 steps at 2e-4, every other step at 256 px (the
    # default's working size) instead of 128 (docs/results/nano.md section 8)
    "shipped": LEGACY | {"taesd_lite_steps": 2500, "adversarial_data_source": "mixed", "adversarial_timesteps": 1,
                         "adversarial_gan_weight": 0.0, "ip2p_uniform_steps": 6000, "ip2p_steps": 2000,
                         "pix2pix_weighting": "v", "mobile_weighting": "uniform", "adversarial_steps": 5000,
                         "adversarial_lr": 2e-4, "adversarial_guidance": "anchor",
                         "adversarial_extra_resolution": 256},
    "paper": {
        "ip2p_lr": 1e-4, "mobile_lr": 1e-4,  # InstructPix2Pix's rate (the paper gives none for Stages 1-2)
        "mmg_lr": 1e-5, "vpred_lr": 1e-6, "adversarial_lr": 1e-5,  # Appendix B
        "vpred_weighting": "uniform",  # a constant lambda
        "pix2pix_weighting": "uniform", "mmg_weighting": "uniform",  # InstructPix2Pix's and Algorithm 1's plain losses
        "adversarial_data_weight": 0.0,  # Algorithm 2: the real samples are the teacher's
        "adversarial_extra_resolution": 0,  # one training resolution
        "adversarial_teacher": "stage3", "guidance_inject": "resnet",
        "stage_order": "paper",  # Sec. 4: mobile-pix2pix from a text-to-image model (adds the text-to-image stage)
        "t2i_mobile_steps": 1000,  # Sec. 4 Stage 1: finetuned once its top attention is dropped (half of Stage 2's)
    },
}


def recorded_budget(record: dict[str, Any]) -> dict[str, Any]:
    """A chain.json budget with the keys it predates filled in with the values it ran with (LEGACY)."""
    return LEGACY | record if record else record


def _train(strategy: str, teacher: Path, data: Path, out: Path, budget: ChainBudget, *, steps: int, lr: float,
           progress: bool, ema: bool = True, extra_resolutions: tuple[int, ...] = (), **options: Any) -> None:
    from movie_core.plugins import get_registry
    from movie_core.training.loop import TrainConfig, can_resume, run

    spec = get_registry().get("distiller", strategy)
    distiller = spec.load_factory()(spec.make_config(**options))
    cfg = TrainConfig(steps=steps, batch_size=budget.batch_size, lr=lr, warmup_steps=min(100, steps // 10),
                      resolution=budget.resolution, extra_resolutions=extra_resolutions, seed=budget.seed,
                      log_every=max(1, min(50, steps // 20)),
                      checkpoint_every=max(1, min(500, steps // 4)), ema_decay=budget.ema_decay if ema else None,
                      cache_latents=True)
    # a stage killed before its first checkpoint left nothing to resume: it starts over (`out` itself does not
    # exist here: a stage whose output exists is skipped)
    started = can_resume(out)
    run(distiller, teacher, data, out, cfg, resume=started, overwrite=not started, progress=progress)


def _one_step_guidance(b: ChainBudget) -> dict[str, float]:
    """The adversarial stage's guidance ranges: its defaults (Algorithm 2's) or collapsed onto the anchor."""
    if b.adversarial_guidance == "ranges":
        return {}
    from movie_plugins.distillers._options import AdversarialOptions

    anchor = AdversarialOptions()
    return {"image_guidance_min": anchor.data_image_guidance, "image_guidance_max": anchor.data_image_guidance,
            "text_guidance_min": anchor.data_text_guidance, "text_guidance_max": anchor.data_text_guidance}


OBJECTIVES = {  # chain stage -> (its distiller, the work folder of its teacher)
    "mobile-pix2pix-mmg": ("mmg", "mobile-pix2pix"),
    "vpred": ("vpred", "mobile-pix2pix-mmg"),
    "mobile-pix2pix-1step": ("adversarial", "vpred"),
}


def objective(stage: str, work: Path, data: Path, teacher: str | None = None) -> dict[str, float]:
    """The stage's own objective on held-out data, at its start and after training: its distiller's `objective`
    (`teacher`: the work folder of the model it is measured against, when not OBJECTIVES')."""
    from movie_core.plugins import get_registry

    strategy, default = OBJECTIVES[stage]
    distiller = get_registry().get("distiller", strategy).load_factory()
    return distiller.objective(work / stage, work / (teacher or default), data)


def _initial_model(work: Path, out: Path, seed: int) -> None:
    """A nano InstructPix2Pix with the trained autoencoders and text tower and a random UNet."""
    from transformers import CLIPTextModel, CLIPTokenizer

    from movie_core.components import BuildContext
    from movie_core.composer import compose
    from movie_core.loading import build
    from movie_core.plugins import get_registry
    from movie_core.recipe import preset

    pipe = build(compose(preset("base").replace(size="nano", seed=seed)))
    spec = get_registry().get("autoencoder", "sd-vae")
    pipe.encoder = pipe.decoder = spec.load_factory()(BuildContext(size="nano", weights=work / "autoencoders"),
                                                      spec.make_config())
    den = pipe.denoiser
    den.tokenizer = CLIPTokenizer.from_pretrained(work / "text" / "tokenizer")
    den.text_encoder = CLIPTextModel.from_pretrained(work / "text" / "text_encoder").eval().requires_grad_(False)
    pipe.save_pretrained(out)
    shutil.copytree(work / "autoencoders" / "taesd", out / "taesd")


def _with_taesd(src: Path, out: Path, keep: tuple[str, ...] = ()) -> None:
    """The same weights with TAESD as encoder and decoder (both share the VAE's latent space): Mobile-Pix2Pix's swap.
    keep: manifest entries of src carried over (the rest is the rebuilt model's own)."""
    from movie_core.composer import compose
    from movie_core.loading import build
    from movie_core.recipe import make_recipe
    from movie_core.weights import read_manifest

    manifest = read_manifest(src) or {}
    recipe = make_recipe(manifest["recipe"]).replace(encoder="taesd", decoder="taesd")
    build(compose(recipe), model=src).save_pretrained(out, extra={k: manifest[k] for k in keep if k in manifest})


T2I_DENOISER = "stable-diffusion"  # the text-to-image model of the 'paper' order (SD-1.5's UNet at nano size)


# the MobileDiffusion text-to-image stage as the nano text-to-image model was trained (issue 23, docs/
# mobilediffusion.md): v-prediction with offset noise
MD_T2I_OPTIONS = {"prediction": "v_prediction", "offset_noise": 0.1}


def _text_to_image(work: Path, captions: Path, b: ChainBudget, progress: bool) -> None:
    """Sec. 4's starting point: a text-to-image UNet (`stable-diffusion`, or `mobile-diffusion` for the
    MobileDiffusion line) trained from random init on captioned scenes, with the chain's autoencoders and its text
    tower, frozen as in every other stage (the init folder's)."""
    md = b.editing_unet == "mobile-diffusion"
    _train("t2i-train", work / "init", captions, work / "text-to-image", b, steps=b.t2i_steps, lr=b.t2i_lr,
           progress=progress, init="random", denoiser="mobile-diffusion" if md else T2I_DENOISER, train_text=False,
           **(MD_T2I_OPTIONS if md else {}))


def _t2i_drop_attention(work: Path, out: Path) -> None:
    """Stage 1's block removal (`movie convert --drop-top-attention`): the text-to-image model, its top level's
    self- and cross-attention removed, still a text-to-image model."""
    from movie_plugins.denoisers._convert import convert_folder

    convert_folder(work / "text-to-image", None, out, drop_top_attention=True)


def _t2i_finetune(work: Path, captions: Path, b: ChainBudget, progress: bool) -> None:
    """Stage 1's finetune: the attention-less text-to-image model trained on as text-to-image (frozen text tower)."""
    _train("t2i-train", work / "text-to-image-noattn", captions, work / "text-to-image-finetuned", b,
           steps=b.t2i_mobile_steps, lr=b.t2i_lr, progress=progress, init="model", train_text=False)


def _t2i_to_mobile(work: Path, out: Path, target: str = "mobile-pix2pix", source: str = "text-to-image") -> None:
    """The text-to-image model in the mobile-pix2pix architecture (`movie convert --to mobile-pix2pix`): top
    attention dropped, 4 zero-initialised image-latent input channels added (the output ignores the image until
    Stage 2 trains it), then TAESD swapped in as for the ip2p order's mobile-pix2pix."""
    from movie_plugins.denoisers._convert import convert_folder

    tmp = out.with_name(f".{out.name}.sd-vae")
    shutil.rmtree(tmp, ignore_errors=True)
    try:
        convert_folder(work / source, target, tmp)
        shutil.copytree(work / "autoencoders" / "taesd", tmp / "taesd")
        _with_taesd(tmp, out, keep=("converted_from",))
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def lineage(folder: Path) -> list[str]:
    """The work folders a model folder descends from, itself last: its manifest's chain provenance, or [its name]."""
    from movie_core.weights import read_manifest

    chain = (read_manifest(folder) or {}).get("chain") or {}
    return list(chain.get("lineage") or [folder.name])


def _record_start(folder: Path, start: Path, order: str) -> list[str]:
    """Write the chain provenance into folder's manifest (idempotent): the stage order and the folders it descends
    from, `start` (the model it was trained or converted from) last before itself. Returns the lineage."""
    from movie_core.weights import read_manifest, write_manifest

    manifest = read_manifest(folder) or {}
    chain = {"stage_order": order, "start": start.name, "lineage": [*lineage(start), folder.name]}
    if manifest.get("chain") != chain:
        write_manifest(folder, manifest | {"chain": chain})
    return chain["lineage"]


# config entries that name the library version or the folder a model was saved from, not the model
_PROVENANCE_KEYS = ("transformers_version", "_diffusers_version", "_name_or_path")


def _same_file(a: Path, b: Path) -> bool:
    if a.read_bytes() == b.read_bytes():
        return True
    if a.suffix != ".json":
        return False
    try:
        x, y = json.loads(a.read_text()), json.loads(b.read_text())
    except ValueError:
        return False
    if not (isinstance(x, dict) and isinstance(y, dict)):
        return False
    return {k: v for k, v in x.items() if k not in _PROVENANCE_KEYS} == {
        k: v for k, v in y.items() if k not in _PROVENANCE_KEYS}


def _same_folder(a: Path, b: Path) -> bool:
    """The same files with the same contents (a JSON config's library version and source path aside: a stage saved
    by a newer transformers holds the same text tower)."""
    files = sorted(p.relative_to(a) for p in a.rglob("*") if p.is_file())
    return files == sorted(p.relative_to(b) for p in b.rglob("*") if p.is_file()) and all(
        _same_file(a / f, b / f) for f in files)


def _carry_extras(old: Path, new: Path) -> tuple[list[str], list[str]]:
    """What a shipped stage folder holds that the chain does not lay out (a Clockwork step adaptor trained for its
    UNet afterwards): copied into the new folder when its UNet folder is the same (_same_folder), else left behind.
    Returns (kept, dropped) entry names. The chain's own entries (a stage's text tower or autoencoders, which a later
    ship may share instead) are never carried."""
    if not old.is_dir():
        return [], []
    ours = {*SHARED_AUTOENCODERS, TAESD_LITE, *SHARED_TEXT}
    extras = sorted(p.name for p in old.iterdir() if p.name not in ours and not (new / p.name).exists())
    if not extras:
        return [], []
    if not _same_folder(old / "unet", new / "unet"):
        return [], extras
    for name in extras:
        (shutil.copytree if (old / name).is_dir() else shutil.copy2)(old / name, new / name)
    return extras, []


def ship(work: Path, dest: Path, log: Callable[[str], None] | None = None) -> None:
    """Lay the trained family out as built-in models: dest/autoencoders/{vae,taesd}, dest/text/{text_encoder,
    tokenizer} and dest/<stage>/ (the UNet and manifest; the manifest's "components" map points to the shared
    folders). The vpred stage ships too: it is the adversarial stage's teacher and start (`nano:vpred`).
    What an already shipped stage holds beyond that (a step adaptor) stays if its UNet is unchanged; otherwise it
    was trained for the old UNet and goes, and `log` says so."""
    tmp = dest.with_name(f".{dest.name}.movie-tmp")
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    autoencoders = [n for n in (*SHARED_AUTOENCODERS, TAESD_LITE) if (work / "autoencoders" / n).is_dir()]
    for name in autoencoders:
        shutil.copytree(work / "autoencoders" / name, tmp / "autoencoders" / name)
    if (work / "autoencoders" / TAESD_LITE_METRICS).is_file():
        shutil.copy2(work / "autoencoders" / TAESD_LITE_METRICS, tmp / "autoencoders" / TAESD_LITE_METRICS)
    for name in SHARED_TEXT:
        shutil.copytree(work / SHIPPED_STAGES[0] / name, tmp / "text" / name)
    chain = json.loads((work / "chain.json").read_text()) if (work / "chain.json").is_file() else {}
    for stage in SHIPPED_STAGES:
        shared = [n for n in SHARED_TEXT if _same_folder(work / stage / n, tmp / "text" / n)]
        shutil.copytree(work / stage, tmp / stage,
                        ignore=shutil.ignore_patterns(*SHARED_AUTOENCODERS, *shared, "*.train"))
        manifest_path = tmp / stage / "movie.json"
        manifest = json.loads(manifest_path.read_text())
        manifest["components"] = {**{name: f"../autoencoders/{name}" for name in autoencoders},
                                  **{name: f"../text/{name}" for name in shared}}
        manifest["builtin"] = {"family": "nano", "chain": chain.get("budget"), "device": chain.get("device")}
        # what the model knows (movie list --edits; movie edit warns on an instruction far from all of them)
        manifest["edits"] = {name: list(procedural.phrasings(name, "train")) for name in procedural.EDIT_NAMES}
        manifest_path.write_text(json.dumps(manifest, indent=2, sort_keys=True) + "\n")
        kept, dropped = _carry_extras(dest / stage, tmp / stage)
        if log is not None and (kept or dropped):
            log(f"[ship] {stage}: " + (f"kept {', '.join(kept)} (same UNet)" if kept else
                                        f"dropped {', '.join(dropped)} (trained for the UNet this ship replaces)"))
    (tmp / "chain.json").write_text(json.dumps(chain, indent=2) + "\n")
    _swap_family(tmp, dest)


def _swap_family(tmp: Path, dest: Path) -> None:
    """Replace the family in dest by the one laid out in tmp. The package's folder (plugins/nano) also holds this
    code, so only the family's own entries are replaced: those in tmp, and any older shipped stage (a folder with
    a movie.json); everything else in dest stays."""
    dest.mkdir(parents=True, exist_ok=True)
    for old in dest.iterdir():
        if old.is_dir() and (old / "movie.json").is_file() and not (tmp / old.name).exists():
            shutil.rmtree(old)
    for new in sorted(tmp.iterdir()):
        if new.is_dir():
            replace_folder(new, dest / new.name)
        else:
            new.replace(dest / new.name)
    tmp.rmdir()


def _taesd_lite(*args: Any, **kw: Any) -> dict[str, Any]:
    from movie_plugins.nano.taesd_lite import distill_taesd_lite

    return distill_taesd_lite(*args, **kw)


TAESD_DECODER_DONE = "taesd_decoder.json"


def _taesd_decoder(work: Path, b: ChainBudget, device: str, log: Callable[[str], None]) -> dict[str, Any]:
    """Robustness finetune of the TAESD decoder on off-manifold latents (see nano_train.finetune_taesd_decoder)."""
    from movie_plugins.nano import train as nano_train

    metrics = nano_train.finetune_taesd_decoder(work / "autoencoders", steps=b.taesd_decoder_steps,
                                                batch_size=b.batch_size, resolution=b.resolution, device=device,
                                                pool_size=max(2, b.ae_pool // 4),  # fresh images, a quarter as many
                                                seed=b.seed, log=log, source=b.data_source)
    _drop_stale_lite(work)
    (work / "autoencoders" / TAESD_DECODER_DONE).write_text(json.dumps(metrics, indent=2) + "\n")
    return metrics


TAESD_COLOUR_DONE = "taesd_decoder_colour.json"
TAESD_GREY_DONE = "taesd_decoder_grey.json"


def _taesd_decoder_colour(work: Path, b: ChainBudget, device: str, log: Callable[[str], None]) -> dict[str, Any]:
    """The TAESD decoder learns the colours of the TAESD encoder's latents.

    See nano_train.finetune_taesd_decoder_colour.
    """
    from movie_plugins.nano import train as nano_train

    metrics = nano_train.finetune_taesd_decoder_colour(work / "autoencoders", steps=b.taesd_decoder_steps,
                                                       batch_size=b.batch_size, resolution=b.resolution,
                                                       device=device, pool_size=max(2, b.ae_pool // 4),
                                                       seed=b.seed, log=log, source=b.data_source)
    return _new_decoder_everywhere(work, metrics, TAESD_COLOUR_DONE)


def _taesd_decoder_grey(work: Path, b: ChainBudget, device: str, log: Callable[[str], None]) -> dict[str, Any]:
    """The grey-heavy pass at b.taesd_grey_resolution (nano_train.finetune_taesd_decoder_grey), with the same pixels
    per batch as the 64-px stages."""
    from movie_plugins.nano import train as nano_train

    scale = (b.resolution / b.taesd_grey_resolution) ** 2
    metrics = nano_train.finetune_taesd_decoder_grey(
        work / "autoencoders", steps=b.taesd_grey_steps, batch_size=max(1, round(b.batch_size * scale)),
        resolution=b.taesd_grey_resolution, device=device, pool_size=max(2, b.ae_pool // 4), seed=b.seed, log=log,
        source=b.data_source)
    return _new_decoder_everywhere(work, metrics, TAESD_GREY_DONE)


def _drop_stale_lite(work: Path) -> None:
    """A taesd-lite distilled from the TAESD before a decoder stage changed it is stale: removed, so its stage (which
    comes after every decoder stage) runs again."""
    shutil.rmtree(work / "autoencoders" / TAESD_LITE, ignore_errors=True)
    (work / "autoencoders" / TAESD_LITE_METRICS).unlink(missing_ok=True)


def _new_decoder_everywhere(work: Path, metrics: dict[str, Any], done: str) -> dict[str, Any]:
    """Copy the finetuned work/autoencoders/taesd over every stage folder's copy, then mark the stage `done`.

    Encoders untouched: the denoisers' training is unaffected, so a work folder whose denoiser stages were
    trained before a decoder stage existed stays valid; their copies of the decoder are replaced by the new one."""
    new = work / "autoencoders" / "taesd"
    _drop_stale_lite(work)
    for old in sorted(work.glob("*/taesd")):
        if old != new and (old.parent / "movie.json").is_file():
            tmp = old.with_name(".taesd.tmp")
            shutil.rmtree(tmp, ignore_errors=True)
            shutil.copytree(new, tmp)
            replace_folder(tmp, old)
            metrics.setdefault("replaced_in", []).append(old.parent.name)
    (work / "autoencoders" / done).write_text(json.dumps(metrics, indent=2) + "\n")
    return metrics


# the budget entries each stage reads (train_chain's stage(keys=...); --reuse-from compares them)
DATA_KEYS = ("count", "videos", "resolution", "seed", "data_source")
AE_KEYS = ("resolution", "seed", "data_source", "batch_size", "ae_pool", "ae_crop", "ae_batch_size", "ae_whole_every",
           "vae_steps", "taesd_steps", "taesd_decoder_steps", "taesd_grey_steps", "taesd_grey_resolution",
           "md_vae_steps")  # one group: every autoencoder stage writes into work/autoencoders
AE_STAGES = ("autoencoders", "md-vae", "taesd-decoder", "taesd-decoder-colour", "taesd-decoder-grey")
TEXT_KEYS = ("text_steps", "seed")
TRAIN_KEYS = ("batch_size", "resolution", "seed", "ema_decay")  # every distiller stage (_train)
ADVERSARIAL_KEYS = ("adversarial_steps", "adversarial_lr", "adversarial_data_weight", "adversarial_extra_resolution",
                    "adversarial_timesteps", "adversarial_gan_weight", "adversarial_data_source",
                    "adversarial_guidance")
ADVERSARIAL_DATA_KEYS = ("count", "videos", "resolution", "seed", "adversarial_data_source")


@attrs.define
class _ReuseSource:
    """Finished stages of another chain (train_chain's reuse_from): a work folder, or a shipped family (its
    autoencoders, text tower and denoiser stages; the stage folders there share the first two by reference, which
    a copy of one undoes)."""

    root: Path
    work: Path
    budget: dict[str, Any] = attrs.field(init=False)
    record: dict[str, Any] = attrs.field(init=False)
    shipped: bool = attrs.field(init=False)
    ae_copied: bool = False  # work/autoencoders came from here (all autoencoder stages at once)

    def __attrs_post_init__(self) -> None:
        chain = self.root / "chain.json"
        if not chain.is_file():
            raise UsageError(f"--reuse-from {self.root}: no chain.json there (not a chain's work folder or a "
                             "shipped family)")
        self.record = json.loads(chain.read_text())
        self.budget = recorded_budget(self.record.get("budget") or {})
        self.shipped = not (self.root / "init").is_dir() and (self.root / "autoencoders" / "vae").is_dir()
        if self.root.resolve() == self.work.resolve():
            raise UsageError("--reuse-from names the work folder itself")

    def made(self, name: str) -> bool:
        """Whether stage name's output exists because this source's copy made it (the autoencoder group)."""
        return name in AE_STAGES and self.ae_copied

    def _match(self, name: str, keys: set[str], budget: ChainBudget) -> str | None:
        """The source's stage that stands for our stage `name` when it finished there with every key in `keys`
        equal to ours, else None. A source whose base is one plain-loss run (no ip2p_uniform_steps) holds our base's
        first run (FIRST_BASE) in its base, its ip2p_steps compared with our ip2p_uniform_steps."""
        theirs, their_budget = name, self.budget
        if (name == FIRST_BASE and not self.budget.get("ip2p_uniform_steps")
                and self.budget.get("pix2pix_weighting") == "uniform" and "ip2p_steps" in self.budget):
            theirs, their_budget = "instruct-pix2pix", self.budget | {"ip2p_uniform_steps": self.budget["ip2p_steps"]}
        ours = attrs.asdict(budget)
        if (keys and all(k in their_budget and their_budget[k] == ours[k] for k in keys)
                and self.record.get("seconds", {}).get(theirs) is not None):
            return theirs
        return None

    def can_copy(self, name: str, keys: set[str], budget: ChainBudget) -> bool:
        """Whether stage `name` finished in the source with every key in `keys` equal to ours."""
        return self._match(name, keys, budget) is not None

    def copy(self, name: str, done: Path, keys: set[str], budget: ChainBudget,
             log: Callable[[str], None]) -> dict[str, Any] | None:
        """Copy stage `name`'s output (done's folder) from the source when it finished there and every key in
        `keys` is equal; returns what chain.json records for it, or None."""
        theirs = self._match(name, keys, budget)
        if theirs is None:
            return None
        seconds = self.record["seconds"][theirs]
        if name in AE_STAGES:
            if not self.ae_copied and not self._copy_autoencoders() or not done.exists():
                return None  # (a shipped family has no md_vae: the md-vae stage trains here)
        elif name == "text":
            src = self.root / "text"
            if not (src / "text_encoder").is_dir():
                return None
            _copy_folder(src, self.work / "text")
        elif self.shipped and theirs in SHIPPED_STAGES:
            if not (self.root / theirs / "movie.json").is_file():
                return None
            self._unship(theirs, done)
        else:
            if self.shipped and name != "taesd-lite" or name == "init":
                return None
            rel = done.relative_to(self.work) if theirs == name else Path(theirs)
            if not (self.root / rel).exists():
                return None
            if name == "taesd-lite" and (self.root / "autoencoders" / TAESD_LITE_METRICS).is_file():
                shutil.copy2(self.root / "autoencoders" / TAESD_LITE_METRICS, done.parent / TAESD_LITE_METRICS)
            _copy_folder(self.root / rel, done)
        src = self.root if theirs == name else self.root / theirs  # (our base's first run: the source's base)
        log(f"[{name}] reused from {src} ({len(keys)} budget entries equal)")
        return {"from": str(src), "seconds": seconds, "metrics": self.record.get("metrics", {}).get(theirs)}

    def _unship(self, name: str, done: Path) -> None:
        """A shipped stage folder back in a work folder's layout (what ship() laid out, undone): the shared
        autoencoders and text tower its manifest's "components" map names are copied into it, and the family's
        entries (components, builtin, edits) leave its manifest, which ship() writes anew."""
        src = self.root / name
        manifest = json.loads((src / "movie.json").read_text())
        tmp = done.with_name(f".{done.name}.reuse")
        shutil.rmtree(tmp, ignore_errors=True)
        shutil.copytree(src, tmp)
        for component, rel in (manifest.pop("components", None) or {}).items():
            if component in (*SHARED_AUTOENCODERS, *SHARED_TEXT) and not (tmp / component).exists():
                shutil.copytree((src / rel).resolve(), tmp / component)
        for key in ("builtin", "edits"):
            manifest.pop(key, None)
        (tmp / "movie.json").write_text(json.dumps(manifest, indent=2, sort_keys=True) + "\n")
        tmp.replace(done)

    def _copy_autoencoders(self) -> bool:
        dest = self.work / "autoencoders"
        if dest.exists():  # copied already for an earlier autoencoder stage (or made here: not reused)
            return False
        src = self.root / "autoencoders"
        if not self.shipped:
            # taesd-lite is a stage of its own (its own budget key): it is copied, or not, by its own stage
            _copy_folder(src, dest, ignore=shutil.ignore_patterns(".*", TAESD_LITE, TAESD_LITE_METRICS))
            self.ae_copied = True
            return True
        if not all((src / n).is_dir() for n in SHARED_AUTOENCODERS):
            return False
        tmp = dest.with_name(".autoencoders.reuse")
        shutil.rmtree(tmp, ignore_errors=True)
        for n in SHARED_AUTOENCODERS:
            shutil.copytree(src / n, tmp / n)
        metrics = self.record.get("metrics", {})  # the finished decoder stages' markers, from their records
        for stage, marker in (("taesd-decoder", TAESD_DECODER_DONE), ("taesd-decoder-colour", TAESD_COLOUR_DONE),
                              ("taesd-decoder-grey", TAESD_GREY_DONE)):
            if stage in self.record.get("seconds", {}):
                (tmp / marker).write_text(json.dumps(metrics.get(stage, {}) | {"reused_from": str(self.root)},
                                                     indent=2) + "\n")
        tmp.replace(dest)
        self.ae_copied = True
        return True


def _copy_folder(src: Path, dest: Path, ignore: Callable[..., Any] | None = None) -> None:
    """src copied to dest whole or not at all (a stage's output existing means the stage is done)."""
    tmp = dest.with_name(f".{dest.name}.reuse")
    shutil.rmtree(tmp, ignore_errors=True)
    shutil.copytree(src, tmp, ignore=ignore)
    tmp.replace(dest)


CLOCK_BEAT = 30.0  # seconds between writes of a running stage's clock


def _timed(work: Path, name: str, fn: Callable[[], Any]) -> tuple[Any, float, float]:
    """fn(), and the stage's wall time summed over every invocation that worked on it: (result, total, earlier).

    A run that is killed mid-stage cannot write chain.json; its time so far survives in work/.<name>.seconds,
    rewritten every CLOCK_BEAT seconds (and when fn raises), and the run that finishes the stage adds it in."""
    import threading

    clock = work / f".{name}.seconds"
    earlier = float(clock.read_text()) if clock.is_file() else 0.0
    start = time.perf_counter()
    stop = threading.Event()

    def write() -> None:
        tmp = clock.with_suffix(".tmp")
        tmp.write_text(f"{earlier + time.perf_counter() - start:.1f}\n")
        tmp.replace(clock)

    def beat() -> None:
        while not stop.wait(CLOCK_BEAT):
            write()

    thread = threading.Thread(target=beat, daemon=True)
    thread.start()
    try:
        result = fn()
    except BaseException:
        write()
        raise
    finally:
        stop.set()
        thread.join()
    total = earlier + time.perf_counter() - start
    clock.unlink(missing_ok=True)
    return result, total, earlier


def _then_measure(stage: str, work: Path, data: Path, train: Callable[[], Any],
                  teacher: str | None = None) -> dict[str, float]:
    train()
    return objective(stage, work, data, teacher)


# the stages `movie nano-train --retrain` trains again instead of copying them (each writes a folder of its own)
RETRAINABLE = (*SHIPPED_STAGES, "instruct-pix2pix-uniform", "text-to-image", "t2i-finetune")


def train_chain(work: Path, budget: ChainBudget, *, device: str = "auto", ship_to: Path | None = None,
                progress: bool = True, log: Callable[[str], None] = print,
                reuse_from: Path | None = None, retrain: tuple[str, ...] = ()) -> dict[str, Any]:
    """Run (or resume) every stage into `work`; returns the per-stage record also saved as work/chain.json.

    reuse_from: another chain's work folder, or a shipped family (plugins/nano): a stage not done here is copied
    from there when every budget key it depends on, its upstream stages' included (`keys`/`needs` below), has the
    same value in both budgets, so an ablation that changes one key retrains only the stages downstream of it. A
    shipped family holds every stage but the data, init and taesd-swap (cheap: they run here). retrain: stages
    (RETRAINABLE) trained here even where they could be copied, and with them every stage that reads their output."""
    import torch

    from movie_core.components import resolve_device
    from movie_core.data.captions import write_captions
    from movie_core.data.writer import write_nano
    from movie_plugins.nano import md_vae_train
    from movie_plugins.nano import train as nano_train

    if ship_to is not None and budget.editing_unet != "stable-diffusion":
        raise UsageError("only the SD-UNet line ships as the built-in family; train the MobileDiffusion line "
                         "without --ship and use its stage folders with --model")
    if retrain and reuse_from is None:
        raise UsageError("--retrain names stages not to copy: it needs --reuse-from")
    if unknown := sorted(set(retrain) - set(RETRAINABLE)):
        raise UsageError(f"--retrain: no such training stage {', '.join(unknown)} (one of {', '.join(RETRAINABLE)})")
    source = _ReuseSource(reuse_from, work) if reuse_from is not None else None  # checked before work is made
    work.mkdir(parents=True, exist_ok=True)
    record_path = work / "chain.json"
    record = json.loads(record_path.read_text()) if record_path.is_file() else {}
    if record.get("budget") and recorded_budget(record["budget"]) != attrs.asdict(budget):
        raise UsageError(f"{work} was started with another budget; use a new folder or the same options")
    dev = resolve_device(device)
    record.update(budget=attrs.asdict(budget), device=dev if dev == "cpu" else torch.cuda.get_device_name(0),
                  threads=torch.get_num_threads())
    record.setdefault("seconds", {})
    data = work / "data"

    record["stage_order"] = budget.stage_order
    depends: dict[str, set[str]] = {}
    fresh: set[str] = set()  # stages trained here rather than copied (retrain, and what reads their output)

    def stage(name: str, done: Path, fn: Callable[[], Any], start: Path | None = None, *,
              keys: tuple[str, ...] = (), needs: tuple[str, ...] = ()) -> None:
        """Run stage `name` unless `done` exists; `start`: the model folder the stage's model (the folder `done`)
        starts from, recorded in its manifest and in chain.json's lineage. keys: the budget entries the stage reads,
        needs: the stages whose output it reads (their keys count as its own for --reuse-from)."""
        depends[name] = set(keys).union(*(depends[n] for n in needs))
        if name in retrain or fresh.intersection(needs):
            fresh.add(name)
        if (source is not None and name not in fresh and name not in record["seconds"]
                and (not done.exists() or source.made(name))):
            reused = source.copy(name, done, depends[name], budget, log)
            if reused is not None:
                record["seconds"][name] = reused["seconds"]
                record.setdefault("reused", {})[name] = reused
                if reused.get("metrics") is not None:
                    record.setdefault("metrics", {})[name] = reused["metrics"]
                record_path.write_text(json.dumps(record, indent=2) + "\n")
        if done.exists():
            log(f"[{name}] done ({record['seconds'].get(name, '?')} s), skipped")
            if start is not None:
                record.setdefault("lineage", {})[done.name] = _record_start(done, start, budget.stage_order)
            return
        log(f"[{name}] ...")
        result, seconds, earlier = _timed(work, name, fn)
        record["seconds"][name] = round(seconds, 1)
        if earlier:
            record.setdefault("resumed", {})[name] = round(earlier, 1)  # of which: runs interrupted in this stage
        if isinstance(result, dict):
            record.setdefault("metrics", {})[name] = result
        if start is not None:
            record.setdefault("lineage", {})[done.name] = _record_start(done, start, budget.stage_order)
        record_path.write_text(json.dumps(record, indent=2) + "\n")
        log(f"[{name}] {record['seconds'][name]} s")

    b = budget
    stage("data", data, lambda: write_nano(data, count=b.count, videos=b.videos, size=b.resolution, seed=b.seed,
                                           test_fraction=0.1, source=b.data_source), keys=DATA_KEYS)
    one_step_data, one_step_needs = data, ("data",)
    if b.adversarial_data_source not in ("same", b.data_source):  # the 1-step stage's own dataset
        one_step_data, one_step_needs = work / f"data-{b.adversarial_data_source}", ("adversarial-data",)
        stage("adversarial-data", one_step_data, lambda: write_nano(
            one_step_data, count=b.count, videos=b.videos, size=b.resolution, seed=b.seed, test_fraction=0.1,
            source=b.adversarial_data_source), keys=ADVERSARIAL_DATA_KEYS)
    stage("autoencoders", work / "autoencoders" / "taesd", lambda: nano_train.train_autoencoders(
        work / "autoencoders", vae_steps=b.vae_steps, taesd_steps=b.taesd_steps, batch_size=b.ae_batch_size,
        resolution=b.resolution, crop=min(b.ae_crop, b.resolution), whole_every=b.ae_whole_every, pool_size=b.ae_pool,
        device=dev, seed=b.seed, log=log, source=b.data_source), keys=AE_KEYS)
    if b.md_vae_steps:
        stage("md-vae", work / "autoencoders" / "md_vae", lambda: md_vae_train.train_nano(
            work / "autoencoders", steps=b.md_vae_steps, decoder_steps=max(1, b.md_vae_steps // 2),
            batch_size=b.ae_batch_size, resolution=b.resolution, crop=min(b.ae_crop, b.resolution),
            whole_every=b.ae_whole_every, pool_size=b.ae_pool, device=dev, seed=b.seed, log=log,
            source=b.data_source), keys=AE_KEYS)
    stage("taesd-decoder", work / "autoencoders" / TAESD_DECODER_DONE, lambda: _taesd_decoder(work, b, dev, log),
          keys=AE_KEYS)
    stage("taesd-decoder-colour", work / "autoencoders" / TAESD_COLOUR_DONE,
          lambda: _taesd_decoder_colour(work, b, dev, log), keys=AE_KEYS)
    if b.taesd_grey_steps:
        stage("taesd-decoder-grey", work / "autoencoders" / TAESD_GREY_DONE,
              lambda: _taesd_decoder_grey(work, b, dev, log), keys=AE_KEYS)
    if b.taesd_lite_steps:  # from the finished TAESD: after every decoder stage
        stage("taesd-lite", work / "autoencoders" / TAESD_LITE, lambda: _taesd_lite(
            work / "autoencoders", steps=b.taesd_lite_steps, pool_size=max(2, b.ae_pool // 2),
            resolution=2 * b.resolution, crop=b.resolution, device=dev, seed=b.seed, log=log),
            keys=("taesd_lite_steps", *AE_KEYS))
    stage("text", work / "text" / "text_encoder", lambda: nano_train.train_text_encoder(
        work / "text", steps=b.text_steps, device=dev, seed=b.seed, log=log), keys=TEXT_KEYS)
    stage("init", work / "init", lambda: _initial_model(work, work / "init", b.seed), keys=("seed",),
          needs=("autoencoders", "text"))

    def base() -> None:
        keys = ("ip2p_steps", "ip2p_lr", "pix2pix_weighting", "ip2p_uniform_steps", *TRAIN_KEYS)
        start, start_stage = work / "init", "init"
        whole = False  # the two-run base here or copied whole: its first run is not made here
        if b.ip2p_uniform_steps:  # the first run, unless the base is here already or comes from the source
            start, start_stage = work / FIRST_BASE, FIRST_BASE
            first_keys = ("ip2p_uniform_steps", "ip2p_lr", *TRAIN_KEYS)
            # what stage() would record for the first run, so the base's entries are known before it runs or not
            depends[FIRST_BASE] = set(first_keys).union(depends["init"], depends["data"])
            if (work / "instruct-pix2pix").exists() or (
                    source is not None and not {"instruct-pix2pix", FIRST_BASE} & (fresh | set(retrain))
                    and source.can_copy("instruct-pix2pix", set(keys).union(depends[FIRST_BASE]), budget)):
                whole = True
                if source is not None and FIRST_BASE not in record["seconds"]:  # its time, not its folder
                    seconds = source.record.get("seconds", {}).get(FIRST_BASE)
                    if seconds is not None:
                        record["seconds"][FIRST_BASE] = seconds
                        record.setdefault("reused", {})[FIRST_BASE] = {
                            "from": str(source.root), "seconds": seconds, "folder_copied": False}
            else:
                stage(FIRST_BASE, start, lambda: _train(
                    "pix2pix-finetune", work / "init", data, start, b, steps=b.ip2p_uniform_steps, lr=b.ip2p_lr,
                    progress=progress, weighting="uniform"), work / "init", keys=first_keys, needs=("init", "data"))
        stage("instruct-pix2pix", work / "instruct-pix2pix", lambda: (
            _train("pix2pix-finetune", start, data, work / "instruct-pix2pix", b, steps=b.ip2p_steps,
                   lr=b.ip2p_lr, progress=progress, weighting=b.pix2pix_weighting),
            shutil.copytree(work / "autoencoders" / "taesd", work / "instruct-pix2pix" / "taesd")),
              None if whole else start, keys=keys, needs=(start_stage, "data"))
        if whole:  # its manifest holds its lineage, the first run's folder included
            record.setdefault("lineage", {})["instruct-pix2pix"] = lineage(work / "instruct-pix2pix")

    if b.stage_order == "paper":  # Sec. 4: Stage 1 from a text-to-image model, Stage 2 adds the image channels
        captions = work / "captions"
        stage("captions", captions, lambda: write_captions(captions, count=b.captions, size=b.resolution,
                                                           seed=b.seed), keys=("captions", "resolution", "seed"))
        stage("text-to-image", work / "text-to-image", lambda: _text_to_image(work, captions, b, progress),
              work / "init", keys=("t2i_steps", "t2i_lr", "editing_unet", *TRAIN_KEYS), needs=("init", "captions"))
        mobile_start = work / "text-to-image-mobile"
        md = b.editing_unet == "mobile-diffusion"
        target = "mobile-diffusion-pix2pix" if md else "mobile-pix2pix"
        t2i, t2i_stage = "text-to-image", "text-to-image"
        if b.t2i_mobile_steps and not md:  # Stage 1: top attention dropped, then finetuned as text-to-image
            stage("t2i-drop-attention", work / "text-to-image-noattn", lambda: _t2i_drop_attention(
                work, work / "text-to-image-noattn"), work / "text-to-image", needs=("text-to-image",))
            stage("t2i-finetune", work / "text-to-image-finetuned", lambda: _t2i_finetune(work, captions, b, progress),
                  work / "text-to-image-noattn", keys=("t2i_mobile_steps", "t2i_lr", *TRAIN_KEYS),
                  needs=("t2i-drop-attention", "captions"))
            t2i, t2i_stage = "text-to-image-finetuned", "t2i-finetune"
        # the start of the mobile line: what follows depends on the order through it
        # (t2i_mobile_steps is a key of its own here: 0 makes it convert another folder, not the finetuned one)
        stage("t2i-convert", mobile_start, lambda: _t2i_to_mobile(work, mobile_start, target, t2i), work / t2i,
              keys=("stage_order", *(() if md else ("t2i_mobile_steps",))), needs=(t2i_stage,))
        start_stage = "t2i-convert"
    else:
        base()
        mobile_start = work / "instruct-pix2pix-taesd"
        stage("taesd-swap", mobile_start, lambda: _with_taesd(work / "instruct-pix2pix", mobile_start),
              work / "instruct-pix2pix", keys=("stage_order",), needs=("instruct-pix2pix",))
        start_stage = "taesd-swap"
    line = _md_line if b.editing_unet == "mobile-diffusion" else _sd_line
    line(work, data, mobile_start, b, stage, progress, start_stage, one_step_data, one_step_needs)
    if b.stage_order == "paper":
        base()  # the ladder's base model, off the mobile line in this order: last, so the mobile line comes first
    record["total_seconds"] = round(sum(record["seconds"].values()), 1)
    record_path.write_text(json.dumps(record, indent=2) + "\n")
    if ship_to is not None:
        ship(work, ship_to, log=log)
        log(f"[ship] {ship_to}")
    return record


def _md_line(work: Path, data: Path, start: Path, b: ChainBudget, stage: Callable[..., None],
             progress: bool, start_stage: str, one_step_data: Path, one_step_needs: tuple[str, ...]) -> None:
    """The mobile line on the MobileDiffusion UNet, in the same work folders: mobile-pix2pix holds the
    mobile-diffusion-pix2pix model (Stage 2 from the converted text-to-image model), mobile-pix2pix-mmg its
    guidance-distilled mobile-diffusion-pix2pix-mmg (Algorithm 1), mobile-pix2pix-1step the adversarial one-step
    model (Algorithm 2) from it: the text-to-image model predicts v already, so there is no vpred stage, and the
    Stage-3 model is also the student's start (the adversarial teacher_sampler 'student-init')."""
    stage("mobile-pix2pix", work / "mobile-pix2pix", lambda: _train(
        "pix2pix-finetune", start, data, work / "mobile-pix2pix", b, steps=b.md_edit_steps, lr=b.md_edit_lr,
        progress=progress), start, keys=("md_edit_steps", "md_edit_lr", "editing_unet", *TRAIN_KEYS),
        needs=(start_stage, "data"))
    stage("mobile-pix2pix-mmg", work / "mobile-pix2pix-mmg", lambda: _then_measure(
        "mobile-pix2pix-mmg", work, data, lambda: _train(
        "mmg", work / "mobile-pix2pix", data, work / "mobile-pix2pix-mmg", b, steps=b.mmg_steps, lr=b.mmg_lr,
        progress=progress)), work / "mobile-pix2pix", keys=("mmg_steps", "mmg_lr"), needs=("mobile-pix2pix",))
    stage("mobile-pix2pix-1step", work / "mobile-pix2pix-1step", lambda: _then_measure(
        "mobile-pix2pix-1step", work, data, lambda: _train(
        "adversarial", work / "mobile-pix2pix-mmg", one_step_data, work / "mobile-pix2pix-1step", b,
        steps=b.adversarial_steps, lr=b.adversarial_lr, progress=progress, ema=False, lr_d=b.adversarial_lr,
        data_weight=b.adversarial_data_weight, student_timesteps=b.adversarial_timesteps,
        lambda_gen=b.adversarial_gan_weight, **_one_step_guidance(b),
        teacher_sampler="student-init",
        extra_resolutions=(b.adversarial_extra_resolution,) if b.adversarial_extra_resolution else ()),
        "mobile-pix2pix-mmg"), work / "mobile-pix2pix-mmg", keys=ADVERSARIAL_KEYS,
        needs=("mobile-pix2pix-mmg", *one_step_needs))


def _sd_line(work: Path, data: Path, mobile_start: Path, b: ChainBudget, stage: Callable[..., None],
             progress: bool, start_stage: str, one_step_data: Path, one_step_needs: tuple[str, ...]) -> None:
    """The mobile line on SD-1.5's UNet (the shipped family): mobile-pix2pix -> mmg -> vpred -> 1-step."""
    stage("mobile-pix2pix", work / "mobile-pix2pix", lambda: _train(
        "pix2pix-finetune", mobile_start, data, work / "mobile-pix2pix", b, steps=b.mobile_steps,
        lr=b.mobile_lr, progress=progress, stage="mobile-pix2pix", weighting=b.mobile_pix2pix_weighting),
        mobile_start, keys=("mobile_steps", "mobile_lr", "editing_unet", "pix2pix_weighting", "mobile_weighting",
                            *TRAIN_KEYS),
        needs=(start_stage, "data"))
    stage("mobile-pix2pix-mmg", work / "mobile-pix2pix-mmg", lambda: _then_measure(
        "mobile-pix2pix-mmg", work, data, lambda: _train(
        "mmg", work / "mobile-pix2pix", data, work / "mobile-pix2pix-mmg", b, steps=b.mmg_steps, lr=b.mmg_lr,
        progress=progress, guidance_inject=b.guidance_inject, weighting=b.mmg_weighting)), work / "mobile-pix2pix",
        keys=("mmg_steps", "mmg_lr", "guidance_inject", "mmg_weighting"), needs=("mobile-pix2pix",))
    stage("vpred", work / "vpred", lambda: _then_measure("vpred", work, data, lambda: _train(
        "vpred", work / "mobile-pix2pix-mmg", data, work / "vpred", b, steps=b.vpred_steps, lr=b.vpred_lr,
        progress=progress, weighting=b.vpred_weighting)), work / "mobile-pix2pix-mmg",
        keys=("vpred_steps", "vpred_lr", "vpred_weighting"), needs=("mobile-pix2pix-mmg",))
    stage("mobile-pix2pix-1step", work / "mobile-pix2pix-1step", lambda: _then_measure(
        "mobile-pix2pix-1step", work, data, lambda: _train(
        "adversarial", work / "vpred", one_step_data, work / "mobile-pix2pix-1step", b, steps=b.adversarial_steps,
        lr=b.adversarial_lr, progress=progress, ema=False, lr_d=b.adversarial_lr,
        data_weight=b.adversarial_data_weight, student_timesteps=b.adversarial_timesteps,
        lambda_gen=b.adversarial_gan_weight, **_one_step_guidance(b),
        teacher_sampler=b.adversarial_teacher,
        **({"teacher_sampler_model": str(work / "mobile-pix2pix-mmg")} if b.adversarial_teacher == "stage3" else {}),
        extra_resolutions=(b.adversarial_extra_resolution,) if b.adversarial_extra_resolution else ()),
        # measured against the 5-step teacher it learned from
        "mobile-pix2pix-mmg" if b.adversarial_teacher == "stage3" else None), work / "vpred",
        keys=(*ADVERSARIAL_KEYS, "adversarial_teacher"), needs=("vpred", "mobile-pix2pix-mmg", *one_step_needs))
