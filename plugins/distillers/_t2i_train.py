"""`t2i-train`: train a text-to-image denoiser on (image, caption) pairs with the standard diffusion loss.

Teacher-less: the --teacher folder only supplies the start (option `init`): its own text-to-image denoiser
('model'), or a new one of option `denoiser` with a random UNet at the folder's size that keeps the folder's text
tower, tokenizer and autoencoders ('random'; `nano:instruct-pix2pix` gives the shipped nano family's). Nothing is
distilled from it.

One step: x0 = the encoder's latents of the images (the dataset's edited image: a `movie data captions` folder
holds the image there), t ~ U{0..999}, eps ~ N(0, I) (+ `offset_noise` x a per-channel constant),
x_t = alpha_t x0 + sigma_t eps; the model, given the caption, regresses the target of its prediction type
(epsilon for the built-in text-to-image denoisers, or option `prediction`), optionally Min-SNR weighted; a
`caption_dropout` share of the captions is replaced by the empty prompt, which is what classifier-free guidance's
unconditional pass sees (its 2 passes then work). With `train_text` the text tower trains too. The networks run
through the denoiser's contract networks ('text_encoder': token ids -> embeddings, 'unet': graph_inputs -> output),
so any text-to-image denoiser built on the contract trains.
"""

from __future__ import annotations

import copy
from pathlib import Path
from typing import Any, ClassVar

import torch
import torch.nn.functional as F
from torch import nn

from movie_core.errors import UsageError
from movie_core.training.distiller import Distiller, unwrap
from movie_plugins.distillers._common import model_target, sample_timesteps, vp_coefficients
from movie_plugins.distillers._options import T2ITrainOptions
from movie_plugins.distillers._ufogen import PREDICTIONS


def is_text_to_image(den: Any) -> bool:
    return den.describe().get("task") == "text-to-image"


class TextToImageNets(nn.Module):
    """A denoiser's 'text_encoder' and 'unet' networks as one module: (x_t, t, token ids) -> model output.

    One module so that accelerate (DDP) and the loop's EMA see every trained parameter; its parameters are the
    denoiser's own (shared, not copied), so the trained denoiser is the one exported."""

    def __init__(self, den: Any) -> None:
        super().__init__()
        nets = den.networks()
        self.text = nets["text_encoder"].module
        self.unet = nets["unet"].module
        self.__dict__["den"] = den  # not a submodule: the networks above hold its trained parts

    def forward(self, x_t: torch.Tensor, t: torch.Tensor, input_ids: torch.Tensor) -> torch.Tensor:
        den = self.__dict__["den"]
        emb = self.text(input_ids)
        inputs = den.graph_inputs(x_t, t, x_t, emb)
        active = getattr(self.unet, "active", None)
        if active is None:
            return self.unet(*inputs)
        with active():
            return self.unet(*inputs)


def min_snr_weight(acp: torch.Tensor, t: torch.Tensor, gamma: float, prediction_type: str) -> torch.Tensor:
    """Min-SNR-gamma loss weights (Hang et al. 2023) per example: min(SNR, gamma) / SNR for an epsilon model,
    min(SNR, gamma) / (SNR + 1) for v-prediction, min(SNR, gamma) for x0; SNR_t = alpha_t^2 / sigma_t^2."""
    a = acp[t.long()]
    snr = a / (1 - a)
    clipped = snr.clamp(max=gamma)
    if prediction_type == "epsilon":
        return clipped / snr
    if prediction_type == "v_prediction":
        return clipped / (snr + 1)
    return clipped


class T2ITrain(Distiller):
    name = "t2i-train"
    produces = ""  # the denoiser trained (set by make_student)
    options_class = T2ITrainOptions
    options: T2ITrainOptions
    defaults: ClassVar[dict[str, float]] = {"lr": 1e-4}

    # --- models ------------------------------------------------------------------------------------------------

    def make_student(self, teacher) -> Any:
        o = self.options
        den = teacher.denoiser
        init = o.init if o.init != "auto" else ("model" if is_text_to_image(den) else "random")
        self.started_from = init
        if init == "model":
            if not is_text_to_image(den):
                raise UsageError(f"t2i-train -O init=model continues a text-to-image model, but the --teacher "
                                 f"folder's denoiser '{teacher.recipe.denoiser}' edits images; -O init=random "
                                 "starts a new text-to-image UNet with its text tower and autoencoders")
            self.produces = teacher.recipe.denoiser
            student = copy.deepcopy(den)
        else:
            student = self._random_student(teacher)
        if student.guidance != "cfg2" or student.prediction_type not in PREDICTIONS:
            raise UsageError(f"t2i-train trains 2-pass classifier-free-guidance denoisers; '{self.produces}' is "
                             f"{student.guidance}, {student.prediction_type}")
        if o.steps:
            student.default_steps = o.steps
        if o.prediction and o.prediction != student.prediction_type:
            if getattr(student, "folder_scheduler", None) is not None:
                config = dict(student.folder_scheduler.config) | {"prediction_type": o.prediction}
                student.folder_scheduler = type(student.folder_scheduler).from_config(config)
            student.prediction_type = o.prediction  # the scheduler it samples and saves with follows it
        return student

    def _random_student(self, teacher) -> Any:
        """A new `denoiser` with a random UNet, the teacher folder's text tower and tokenizer; its recipe is the
        teacher's with that denoiser (the composer checks it against the autoencoders' latent space)."""
        from movie_core.components import BuildContext
        from movie_core.composer import compose
        from movie_core.plugins import get_registry

        o = self.options
        self.produces = o.denoiser
        spec = get_registry().get("denoiser", o.denoiser)
        recipe = self.student_recipe(teacher.recipe)
        comp = compose(recipe)
        ctx = BuildContext(size=recipe.size, seed=self.cfg.seed)
        student = spec.load_factory()(ctx, spec.make_config(**comp.component_options("denoiser")))
        if not is_text_to_image(student):
            raise UsageError(f"t2i-train -O denoiser={o.denoiser}: not a text-to-image denoiser")
        donor = teacher.denoiser
        for part in ("text_encoder", "tokenizer"):
            if not hasattr(donor, part) or not hasattr(student, part):
                raise UsageError(f"t2i-train -O init=random takes the --teacher folder's {part}; "
                                 f"'{teacher.recipe.denoiser}' has none")
        student.text_encoder = copy.deepcopy(donor.text_encoder)
        student.tokenizer = donor.tokenizer
        if hasattr(student, "standin_tokenizer"):
            student.standin_tokenizer = bool(getattr(donor, "standin_tokenizer", False))
        student = student.to(teacher.device)
        width = student.encode_prompt(["a"]).shape[-1]
        expects = getattr(getattr(student.unet, "config", None), "cross_attention_dim", width)
        if width != expects:
            raise UsageError(f"t2i-train: the --teacher folder's text tower gives {width}-wide embeddings, but a "
                             f"{recipe.size} '{o.denoiser}' UNet attends to {expects}")
        return student.train(False)

    def student_recipe(self, recipe):
        """The trained model's recipe: the teacher folder's with the trained denoiser, its own sampler and steps."""
        return recipe.replace(denoiser=self.produces, steps=self.options.steps, scheduler=None,
                              component_options={k: v for k, v in recipe.component_options.items()
                                                 if k != "denoiser"})

    def setup(self, teacher_dir: Path, accelerator, cfg) -> None:
        self.accelerator, self.cfg = accelerator, cfg
        self.teacher = self.load_teacher(teacher_dir, accelerator.device)
        self.student = self.make_student(self.teacher).to(accelerator.device)
        self.student.requires_grad_(False)
        nets = TextToImageNets(self.student)
        nets.unet.requires_grad_(True)
        nets.text.requires_grad_(self.options.train_text)
        nets.train()
        nets.text.train(self.options.train_text)  # a frozen tower runs without dropout
        optimizer = torch.optim.AdamW([p for p in nets.parameters() if p.requires_grad], lr=cfg.lr, weight_decay=0.0)
        self.nets, optimizer = accelerator.prepare(nets, optimizer)
        self.optimizers = [optimizer]
        self.latent_cache: dict[Any, torch.Tensor] | None = {} if cfg.cache_latents else None
        self.device = accelerator.device
        self.acp = self.student.make_scheduler().alphas_cumprod.to(device=self.device, dtype=torch.float32)

    @property
    def student_module(self) -> nn.Module:
        return self.nets

    @property
    def trainable_modules(self) -> list[nn.Module]:
        return [self.nets]

    # --- one step ----------------------------------------------------------------------------------------------

    @torch.no_grad()
    def encode_images(self, batch: dict[str, Any]) -> torch.Tensor:
        """The images' latents (the dataset's edited image), cached per sample with --cache-latents."""
        enc, images = self.teacher.encoder, batch["edited"]
        cache = self.latent_cache
        if cache is None or "index" not in batch:
            return enc.encode(images)
        index = batch["index"]
        missing = [j for j, i in enumerate(index) if i not in cache]
        if missing:
            latents = enc.encode(images[torch.tensor(missing, device=images.device)])
            for k, j in enumerate(missing):
                cache[index[j]] = latents[k]
        return torch.stack([cache[i] for i in index])

    def train_step(self, batch: dict[str, Any], step: int) -> dict[str, float]:
        o = self.options
        x0 = self.encode_images(batch)
        n, dev = x0.shape[0], x0.device
        drop = (torch.rand(n, device=dev) < o.caption_dropout).tolist()
        prompts = ["" if d else p for d, p in zip(drop, batch["instruction"])]
        ids, _ = self.student.tokenize(prompts)
        t = sample_timesteps(n, dev)
        noise = torch.randn_like(x0)
        if o.offset_noise:
            noise = noise + o.offset_noise * torch.randn(n, x0.shape[1], 1, 1, device=dev, dtype=x0.dtype)
        alpha, sigma = vp_coefficients(self.acp, t)
        x_t = alpha * x0 + sigma * noise
        out = self.nets(x_t, t, ids.to(dev))
        target = model_target(self.student.prediction_type, x0, noise, alpha, sigma)
        per_example = F.mse_loss(out.float(), target.float(), reduction="none").flatten(1).mean(1)
        if o.snr_gamma is not None:
            per_example = per_example * min_snr_weight(self.acp, t, o.snr_gamma, self.student.prediction_type)
        loss = per_example.mean()
        self.step_optimizer(loss, self.optimizers[0], self.nets)
        return {"loss": loss.item()}

    # --- export ------------------------------------------------------------------------------------------------

    def export_denoiser(self) -> nn.Module:
        unwrap(self.nets)  # the denoiser holds the trained networks' parameters themselves
        return self.student

    def manifest_fields(self) -> dict[str, Any]:
        return {"training_stage": self.name, "started_from": self.started_from,
                "note": "text-to-image model trained on captioned images (t2i-train)"}

    def export(self, out: Path, extra: dict[str, Any], overwrite: bool = False) -> Path:
        from movie_core.composer import compose
        from movie_core.pipeline import Pipeline

        student = self.export_denoiser().eval()
        recipe = self.student_recipe(self.teacher.recipe)
        pipe = Pipeline(compose(recipe), self.teacher.encoder, self.teacher.decoder, student,
                        device=self.teacher.device, dtype=self.teacher.dtype)
        return pipe.save_pretrained(out, extra=extra | self.manifest_fields())
