"""`clockwork`: train a Clockwork adaptor for a frozen model (Habibian et al., CVPR 2024, Sec. 4; the frame clock is
ours).

The teacher is frozen and runs whole; only the adaptor (movie_core.clockwork.ClockworkAdaptor, sized from the
teacher's network split) trains. Each step, the teacher samples a batch through a recording runner that keeps, per
step and pass, what enters its low-resolution core (r_in, the context) and what the core returns (r_out):

* step clock: trajectories the teacher unrolls from noise with its own sampler and step count (fresh noise every
  step, as the paper regenerates them each epoch) on the dataset's source images and instructions. A step the clock
  skips is a training example: adaptor(r_in_i, r_out at the last full step, time, text) against r_out_i.
* frame clock: consecutive frames of procedural videos, all frames of a video sampled from the same noise, as
  `movie edit` does; a frame the clock skips learns its r_out from its own r_in and the r_out the recipe's
  `frame_blend` makes for it at the same step and pass ('linear': the blend of the full frames on either side, and
  the earlier one alone; 'previous': the earlier one alone). (The teacher samples without anchor cross-frame
  attention here.)

Loss: the mean squared error to the teacher's r_out (L2, the paper's); `loss_identity` logs what the identity
adaptor (r_out reused as is) would score on the same batch. The export is the teacher's model folder with the
adaptor in `adaptor/` (safetensors + adaptor.json recording the clock kind, clock, sampler and step count).
"""

from __future__ import annotations

import shutil
from pathlib import Path
from typing import Any

import numpy as np
import torch

from movie_core import clockwork
from movie_core.errors import UsageError
from movie_core.training.distiller import Distiller, unwrap
from movie_plugins.distillers._options import ClockworkOptions


class Recorder:
    """A 'unet' runner that runs the split whole and keeps, per (step, pass), r_in, the context and r_out."""

    def __init__(self, split: Any) -> None:
        self.split = split
        self.step = 0
        self.call = 0
        self.records: dict[tuple[int, int], tuple[torch.Tensor, list[torch.Tensor], torch.Tensor]] = {}

    def on_step(self, index: int, timestep: Any) -> None:
        self.step, self.call = index, 0

    def __call__(self, *inputs: torch.Tensor) -> torch.Tensor:
        r_in, *context = self.split.head(*inputs)
        r_out = self.split.core(r_in, *context)
        self.records[(self.step, self.call)] = (r_in, context, r_out)
        self.call += 1
        return self.split.tail(r_out, *context)


class ClockworkDistiller(Distiller):
    name = "clockwork"
    produces = ""
    options_class = ClockworkOptions
    defaults = {"lr": 1e-4, "warmup_steps": 0}  # noqa: RUF012 - the adaptor starts at identity; trains fast
    options: ClockworkOptions

    # --- setup: the frozen teacher, its split, the adaptor --------------------------------------------------

    def setup(self, teacher_dir: Path, accelerator, cfg) -> None:
        self.accelerator, self.cfg = accelerator, cfg
        self.teacher = self.load_teacher(teacher_dir, accelerator.device)
        den = self.teacher.denoiser
        self.split = clockwork.network_split(den, self.teacher.recipe.denoiser)
        self.steps = self.options.steps or self.teacher.steps
        if self.options.kind == "step" and self.steps < 2:
            raise UsageError(f"a step clock needs several sampling steps; the teacher samples {self.steps} "
                             "(pass -O steps=N, or train a frame clock: -O kind=frame)")
        self.sampler = den.describe().get("scheduler")
        r_in, r_out, emb, text_emb = self._probe(cfg.resolution)
        adaptor = clockwork.ClockworkAdaptor.for_tensors(r_in, r_out, emb, text_emb, hidden=self.options.hidden,
                                                         use_r_out=self.options.use_r_out)
        adaptor.train()
        optimizer = torch.optim.AdamW(adaptor.parameters(), lr=cfg.lr, weight_decay=0.0)
        self.adaptor, optimizer = accelerator.prepare(adaptor, optimizer)
        self.optimizers = [optimizer]
        self.latent_cache = {} if cfg.cache_latents else None

    @torch.no_grad()
    def _probe(self, resolution: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
        """(r_in, r_out, emb, text_emb) of one teacher pass at the training size: what sizes the adaptor."""
        recorder = Recorder(self.split)
        image = torch.zeros(1, 3, resolution, resolution, device=self.accelerator.device)
        self._sample(self.teacher.encoder.encode(image), [""], recorder, seed=0, steps=1)
        r_in, context, r_out = recorder.records[(0, 0)]
        return r_in[:1], r_out[:1], context[0][:1], context[1][:1]

    @property
    def student_module(self) -> torch.nn.Module:
        return self.adaptor

    def trainable_parameters(self) -> list[torch.nn.Parameter]:
        return list(self.adaptor.parameters())

    # --- the teacher's trajectories ------------------------------------------------------------------------

    @torch.no_grad()
    def _sample(self, latents: torch.Tensor, prompts: list[str], recorder: Recorder, *, seed: int,
                steps: int | None = None, same_noise: bool = False) -> None:
        pipe, den = self.teacher, self.teacher.denoiser
        r = pipe.recipe
        text = den.encode_prompt(prompts)
        null = den.encode_prompt([""]) if den.guidance == "cfg3" else None
        n = latents.shape[0]
        gens = [torch.Generator(device=latents.device if latents.device.type != "meta" else "cpu")
                .manual_seed(seed if same_noise else seed + i) for i in range(n)]
        den.set_runner("unet", recorder)
        try:
            den.sample(latents, text, steps=steps or self.steps, s_T=r.text_guidance, s_I=r.image_guidance,
                       null_emb=null, generator=gens, on_step=recorder.on_step)
        finally:
            den.set_runner("unet", None)

    def _frames_batch(self, step: int) -> tuple[torch.Tensor, list[str], int]:
        """Consecutive frames of procedural videos: (images (videos * frames, 3, R, R) in [-1, 1], one prompt per
        frame, frames per video: clock + 1, the full frames first and last, for 'linear'; clock for 'previous')."""
        from movie_core.data.procedural import make_video

        n = self.options.clock + (self.options.blend == "linear")
        videos = max(1, self.cfg.batch_size // n)
        rng = np.random.default_rng([self.cfg.seed, step, self.accelerator.process_index])
        frames, prompts = [], []
        for _ in range(videos):
            seed = int(rng.integers(0, 2**31 - 1))
            start = int(rng.integers(0, self.options.clock))  # the full frame anywhere in the scene's motion
            clip = make_video(seed, frames=start + n, size=self.cfg.resolution, split="train")
            frames.extend(clip["source_frames"][start:])
            prompts.extend([clip["instruction"]] * n)
        x = torch.from_numpy(np.stack(frames)).permute(0, 3, 1, 2).float() / 127.5 - 1
        return x.to(self.accelerator.device), prompts, n

    def examples(self, batch: dict[str, Any], step: int) -> tuple[list, list, list, list]:
        """(r_in, r_out_prev, context, target) per skipped evaluation, each a list of batched tensors."""
        recorder = Recorder(self.split)
        seed = hash((self.cfg.seed, step, self.accelerator.process_index)) & 0x7FFFFFFF
        r_ins, prevs, contexts, targets = [], [], [], []
        if self.options.kind == "step":
            src, _, _ = self.encode_batch(batch)
            self._sample(src, list(batch["instruction"]), recorder, seed=seed)
            full = clockwork.full_steps(self.steps, self.options.clock)
            for (i, call), (r_in, context, r_out) in recorder.records.items():
                if full[i]:
                    continue
                last = max(j for j in range(i) if full[j])
                r_ins.append(r_in)
                prevs.append(recorder.records[(last, call)][2])
                contexts.append(context)
                targets.append(r_out)
        else:
            images, prompts, n = self._frames_batch(step)
            with torch.no_grad():
                latents = self.teacher.encoder.encode(images)
            # one video at a time: every frame of a video from the same noise (as `movie edit` samples them)
            for v in range(images.shape[0] // n):
                recorder.records.clear()
                self._sample(latents[v * n:(v + 1) * n], prompts[v * n:(v + 1) * n], recorder, seed=seed + v,
                             same_noise=True)
                for r_in, context, r_out in recorder.records.values():
                    rows = r_in.shape[0]
                    branches = rows // n
                    skipped = [b * n + f for b in range(branches) for f in range(1, self.options.clock)]
                    # the starts `movie edit` makes (clockwork.frame_blend): with the later full frame known and,
                    # for 'linear', without it (a batch's trailing frames)
                    known = [[0, self.options.clock]] + ([[0]] if self.options.blend == "linear" else [])
                    for full in known:
                        blends = {f: clockwork.frame_blend(f, full, [], self.options.blend)
                                  for f in range(1, self.options.clock)}
                        r_ins.append(r_in[skipped])
                        prevs.append(clockwork.blend_rows(skipped, n, 0, blends, r_out, []))
                        contexts.append([c[skipped] if c.ndim and c.shape[0] == rows else c for c in context])
                        targets.append(r_out[skipped])
        return r_ins, prevs, contexts, targets

    def train_step(self, batch: dict[str, Any], step: int) -> dict[str, float]:
        r_ins, prevs, contexts, targets = self.examples(batch, step)
        r_in = torch.cat(r_ins)
        prev = torch.cat(prevs)
        target = torch.cat(targets)
        context = [torch.cat([c[k] for c in contexts]) for k in range(len(contexts[0]))]
        out = self.adaptor(r_in, prev, *context)
        loss = torch.nn.functional.mse_loss(out.float(), target.float())
        self.step_optimizer(loss, self.optimizers[0], self.adaptor)
        identity = torch.nn.functional.mse_loss(prev.float(), target.float())
        return {"loss": loss.item(), "loss_identity": identity.item()}

    @torch.no_grad()
    def held_out(self, adaptor: torch.nn.Module, batches: list[tuple[dict[str, Any], int]]) -> dict[str, float]:
        """Mean squared error to the teacher's r_out of `adaptor` and of the identity adaptor, over the skipped
        evaluations of these (batch, step) draws (steps the run never trains on: their own noise and videos)."""
        err = ident = 0.0
        count = 0
        for batch, step in batches:
            for r_in, prev, context, target in zip(*self.examples(batch, step)):
                err += torch.nn.functional.mse_loss(adaptor(r_in, prev, *context), target, reduction="sum").item()
                ident += torch.nn.functional.mse_loss(prev, target, reduction="sum").item()
                count += target.numel()
        return {"adaptor_mse": err / count, "identity_mse": ident / count}

    # --- export: the teacher's folder with adaptor/ -------------------------------------------------------

    def trained_for(self) -> dict[str, Any]:
        blend = {"blend": self.options.blend} if self.options.kind == "frame" else {}
        return {"kind": self.options.kind, "clock": self.options.clock, "sampler": self.sampler, "steps": self.steps,
                "resolution": self.cfg.resolution, **blend}

    def export(self, out: Path, extra: dict[str, Any], overwrite: bool = False) -> Path:
        """The teacher as a model folder, with the trained adaptor in adaptor/."""
        trained_for = self.trained_for()
        self.teacher.save_pretrained(out, extra=extra | {"clockwork": trained_for})
        try:
            adaptor = unwrap(self.adaptor)
            assert isinstance(adaptor, clockwork.ClockworkAdaptor)
            clockwork.save_adaptor(adaptor, out, trained_for)
        except BaseException:
            shutil.rmtree(out, ignore_errors=True)
            raise
        return out
