"""The distiller contract: one training stage of the MoViE recipe, run by movie_core.training.loop."""

from __future__ import annotations

import copy
from pathlib import Path
from typing import Any

import attrs
import torch

from movie_core.errors import UsageError


def unwrap(module: torch.nn.Module) -> torch.nn.Module:
    """The module inside a DDP / compile wrapper."""
    while isinstance(inner := getattr(module, "module", None), torch.nn.Module):
        module = inner
    return module


class Distiller:
    """Base class. Subclasses set `name`, `produces` and implement make_student() and train_step().

    setup() loads the frozen teacher pipeline, makes the student denoiser, an Adam optimizer over
    its UNet, and hands both to accelerate. train_step() does forward, backward and the optimizer
    step(s) for one batch and returns float losses. export() writes the student as a model folder.
    """

    name = ""
    produces = ""
    options_class: type | None = None

    def __init__(self, options: Any = None) -> None:
        self.options = options if options is not None else (self.options_class() if self.options_class else None)

    def options_dict(self) -> dict[str, Any]:
        return attrs.asdict(self.options) if self.options is not None else {}

    def load_teacher(self, teacher_dir: Path, device: torch.device):
        """The frozen teacher pipeline (autoencoders + denoiser) from a model folder."""
        from movie_core.composer import compose
        from movie_core.loading import build
        from movie_core.recipe import make_recipe, preset
        from movie_core.weights import read_manifest, resolve_model

        root = resolve_model(teacher_dir)
        manifest = read_manifest(root)
        if not manifest or "recipe" not in manifest:
            raise UsageError(f"{teacher_dir}: no movie.json with a recipe; "
                             "save the teacher with `movie compose --save-model`")
        recipe = make_recipe(manifest["recipe"]) if manifest else preset("base")
        pipe = build(compose(recipe), model=root)
        pipe.to(device=device)
        for m in (pipe.encoder, pipe.decoder, pipe.denoiser):
            m.eval().requires_grad_(False)
        return pipe

    @classmethod
    def objective(cls, student: Path, teacher: Path, data: Path) -> dict[str, float] | None:
        """This stage's own objective on the test split of `data`: the trained student folder against its teacher
        folder, at the student's start and after training where that makes sense. None: the strategy defines none."""
        return None

    @classmethod
    def load_frozen(cls, folder: Path):
        """A model folder as a frozen CPU pipeline (for objectives)."""
        return cls().load_teacher(folder, torch.device("cpu"))

    def make_student(self, teacher: Any) -> Any:
        """The student denoiser, initialised from the teacher (a deep copy, converted if needed).

        Its class is the teacher's denoiser's; the distillers train its `unet` network.
        """
        return copy.deepcopy(teacher.denoiser)

    def trainable_parameters(self) -> list[torch.nn.Parameter]:
        return [p for p in self.student.unet.parameters() if p.requires_grad]

    def setup(self, teacher_dir: Path, accelerator, cfg) -> None:
        """Teacher, student, optimizer; everything trainable goes through accelerator.prepare."""
        self.accelerator, self.cfg = accelerator, cfg
        self.teacher = self.load_teacher(teacher_dir, accelerator.device)
        self.student = self.make_student(self.teacher).to(accelerator.device)
        self.student.requires_grad_(False)
        self.student.unet.requires_grad_(True)
        self.student.unet.train()
        optimizer = torch.optim.AdamW(self.trainable_parameters(), lr=cfg.lr, weight_decay=0.0)
        self.student.unet, optimizer = accelerator.prepare(self.student.unet, optimizer)
        self.optimizers = [optimizer]
        self.latent_cache: dict[Any, tuple[torch.Tensor, torch.Tensor]] | None = {} if cfg.cache_latents else None
        self.setup_extra(accelerator, cfg)

    def setup_extra(self, accelerator, cfg) -> None:
        """Hook for distillers with more trainable parts (the adversarial discriminator)."""

    @property
    def student_module(self) -> torch.nn.Module:
        """The prepared module whose parameters are the student's (EMA and export use it)."""
        return self.student.unet

    @property
    def trainable_modules(self) -> list[torch.nn.Module]:
        """Every prepared module that trains (gradient accumulation skips their DDP sync between updates)."""
        return [self.student_module]

    @torch.no_grad()
    def encode_batch(self, batch: dict[str, Any]) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """(source latents, edited latents, prompt embeddings) with the teacher's frozen encoders."""
        enc = self.teacher.encoder
        emb = self.teacher.denoiser.encode_prompt(batch["instruction"])
        cache = getattr(self, "latent_cache", None)
        if cache is None or "index" not in batch:
            return enc.encode(batch["source"]), enc.encode(batch["edited"]), emb
        index = batch["index"]
        missing = [j for j, i in enumerate(index) if i not in cache]
        if missing:
            rows = torch.tensor(missing, device=batch["source"].device)
            src, tgt = enc.encode(batch["source"][rows]), enc.encode(batch["edited"][rows])
            for k, j in enumerate(missing):
                cache[index[j]] = (src[k], tgt[k])
        return (torch.stack([cache[i][0] for i in index]), torch.stack([cache[i][1] for i in index]), emb)

    def step_optimizer(self, loss: torch.Tensor, optimizer, module: torch.nn.Module) -> None:
        """Backward with accelerate, clip, step and zero the grads of one optimizer."""
        self.accelerator.backward(loss)
        if self.cfg.max_grad_norm and self.accelerator.sync_gradients:
            self.accelerator.clip_grad_norm_(module.parameters(), self.cfg.max_grad_norm)
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)

    def train_step(self, batch: dict[str, Any], step: int) -> dict[str, float]:
        raise NotImplementedError

    def export_denoiser(self) -> torch.nn.Module:
        """The student denoiser with its UNet unwrapped, ready to save."""
        student = copy.copy(self.student)
        student.unet = unwrap(self.student.unet)
        return student

    def manifest_fields(self) -> dict[str, Any]:
        """Extra movie.json fields for the exported student (stage, prediction type, steps)."""
        return {}

    def export(self, out: Path, extra: dict[str, Any], overwrite: bool = False) -> Path:
        """Write the student with the teacher's autoencoders as a model folder whose manifest records the stage."""
        from movie_core.composer import compose
        from movie_core.pipeline import Pipeline

        student = self.export_denoiser().eval()
        # the student's own default steps (1 for the one-step stage), not the teacher's
        steps = getattr(student, "default_steps", None) or self.teacher.recipe.steps
        recipe = self.teacher.recipe.replace(denoiser=self.produces, steps=steps)
        pipe = Pipeline(compose(recipe), self.teacher.encoder, self.teacher.decoder, student,
                        device=self.teacher.device, dtype=self.teacher.dtype)
        return pipe.save_pretrained(out, extra=extra | self.manifest_fields())
