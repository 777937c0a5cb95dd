"""The training loop every distiller shares: accelerate (DDP, mixed precision), accumulation, EMA,
checkpoints with --resume, a NaN guard, JSONL (and TensorBoard) logs, a progress bar, deterministic seeds.

Batches are drawn by (seed, step, rank) rather than by a stateful loader, so a resumed run sees
exactly the batches and noise it would have seen had it never stopped.
"""

from __future__ import annotations

import hashlib
import json
import math
import os
import shutil
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import attrs
import numpy as np
import torch

from movie_core.errors import MovieError, UsageError

MIXED_PRECISION = ("no", "fp16", "bf16")
PARAM_DUMP_ENV = "MOVIE_DEBUG_PARAM_DUMP"  # set: each rank writes <out>.train/params-rank<R>.sha256


@attrs.frozen(kw_only=True)
class TrainConfig:
    """Options of the shared loop (a distiller has its own options besides these)."""

    steps: int = attrs.field(default=1000, validator=attrs.validators.ge(1))
    batch_size: int = attrs.field(default=8, validator=attrs.validators.ge(1))
    lr: float = attrs.field(default=1e-5, validator=attrs.validators.gt(0))
    warmup_steps: int = attrs.field(default=0, validator=attrs.validators.ge(0))
    grad_accum: int = attrs.field(default=1, validator=attrs.validators.ge(1))
    max_grad_norm: float | None = 1.0
    mixed_precision: str = attrs.field(default="no", validator=attrs.validators.in_(MIXED_PRECISION))
    ema_decay: float | None = None
    checkpoint_every: int = attrs.field(default=200, validator=attrs.validators.ge(1))
    keep_checkpoints: int = attrs.field(default=2, validator=attrs.validators.ge(1))
    log_every: int = attrs.field(default=10, validator=attrs.validators.ge(1))
    resolution: int = attrs.field(default=64, validator=attrs.validators.ge(8))
    # Further training resolutions: steps cycle through (resolution, *extra_resolutions) and a step at r draws
    # round(batch_size * resolution^2 / r^2) samples (at least 1), so every step costs about the same. A model
    # trained at one size only generalises poorly to frames of another (the nano UNet at 64 px loses 1.2 dB
    # on held-out 128-px scenes).
    extra_resolutions: tuple[int, ...] = attrs.field(
        default=(), converter=tuple, validator=attrs.validators.deep_iterable(attrs.validators.ge(8)))
    seed: int = 0
    split: str = "train"
    # Encode each sample once with the frozen teacher encoder and reuse its latents (exact up to float
    # rounding: the samples are not augmented). Much faster on CPU; off by default so that a resumed run
    # repeats the uninterrupted one bit for bit.
    cache_latents: bool = False


def train_config(distiller_cls: Any, *, lr: float | None = None, warmup_steps: int | None = None,
                 **fields: Any) -> TrainConfig:
    """The loop's options for a distiller: lr and warm-up default to the strategy's own (`defaults`)."""
    defaults = getattr(distiller_cls, "defaults", {})
    return TrainConfig(lr=lr or defaults.get("lr", 1e-5),
                       warmup_steps=warmup_steps if warmup_steps is not None else defaults.get("warmup_steps", 0),
                       **fields)


class EMA:
    """Exponential moving average of parameters; checkpointed with the run."""

    def __init__(self, module: torch.nn.Module, decay: float) -> None:
        self.decay = decay
        self.shadow = {k: p.detach().clone() for k, p in module.named_parameters() if p.requires_grad}

    @torch.no_grad()
    def update(self, module: torch.nn.Module) -> None:
        for k, p in module.named_parameters():
            if k in self.shadow:
                self.shadow[k].lerp_(p.detach().to(self.shadow[k].dtype), 1 - self.decay)

    @torch.no_grad()
    def copy_to(self, module: torch.nn.Module) -> None:
        for k, p in module.named_parameters():
            if k in self.shadow:
                p.copy_(self.shadow[k])

    def state_dict(self) -> dict[str, Any]:
        return {"decay": self.decay, "shadow": self.shadow}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.decay = state["decay"]
        self.shadow = {k: v.clone() for k, v in state["shadow"].items()}


class BatchSource:
    """Batches of (source, edited, instruction), drawn by (seed, step, rank); step k at resolutions[k % n].

    The batch at the first resolution has batch_size samples, at another r round(batch_size * (first / r)^2)
    (at least 1). `index` names each sample for the latent cache: the dataset index at the first resolution,
    (index, r) at another."""

    def __init__(self, dataset, batch_size: int, resolutions: Sequence[int], seed: int, rank: int) -> None:
        if len(dataset) == 0:
            raise UsageError("the training split is empty")
        self.dataset, self.batch_size, self.resolutions = dataset, batch_size, tuple(resolutions)
        self.seed, self.rank = seed, rank

    def size_at(self, step: int) -> tuple[int, int]:
        """(resolution, batch size) of a step."""
        r = self.resolutions[step % len(self.resolutions)]
        return r, max(1, round(self.batch_size * self.resolutions[0] ** 2 / r**2))

    def __call__(self, step: int, device: torch.device) -> dict[str, Any]:
        from PIL import Image

        from movie_core.data.datasets import to_torch_batch

        res, batch = self.size_at(step)

        def at_size(image: np.ndarray) -> np.ndarray:
            if image.shape[:2] == (res, res):
                return image
            return np.asarray(Image.fromarray(image).resize((res, res), Image.Resampling.BICUBIC))

        rng = np.random.default_rng([self.seed, step, self.rank])
        idx = rng.integers(0, len(self.dataset), batch)
        samples = []
        for i in idx:
            s = self.dataset[int(i)]
            samples.append({"source": at_size(s["source"]), "edited": at_size(s["edited"]),
                            "instruction": s["instruction"]})
        index = [int(i) if res == self.resolutions[0] else (int(i), res) for i in idx]
        return to_torch_batch(samples, device=device) | {"index": index}


def _work_dir(out: Path) -> Path:
    return out.with_name(f"{out.name}.train")


def _checkpoints(work: Path) -> list[Path]:
    return sorted((work / "checkpoints").glob("step-*"), key=lambda p: int(p.name.split("-")[1]))


def can_resume(out: Path) -> bool:
    """Whether the run that writes `out` left a checkpoint (what run(..., resume=True) continues from)."""
    return bool(_checkpoints(_work_dir(Path(out))))


def _lr_lambda(warmup: int):
    return lambda step: min(1.0, (step + 1) / warmup) if warmup else 1.0


def run(distiller, teacher: Path, data: Path, out: Path, cfg: TrainConfig, *, resume: bool = False,
        overwrite: bool = False, progress: bool = True) -> dict[str, Any]:
    """Train `distiller` from the `teacher` model folder on `data`, writing the student model folder `out`."""
    from accelerate import Accelerator
    from accelerate.utils import set_seed
    from tqdm import tqdm

    from movie_core.data.datasets import open_dataset

    out = Path(out)
    work = _work_dir(out)
    if out.exists() and not overwrite:
        raise UsageError(f"{out} exists; pass --overwrite")
    if not out.parent.is_dir():
        raise UsageError(f"cannot write to folder {out.parent} (does not exist)")
    if work.exists() and not resume:
        if not overwrite:
            raise UsageError(f"{work} holds an earlier run; pass --resume to continue it or --overwrite to start over")
    # step_scheduler_with_optimizer=False: accelerate would otherwise step every LR schedule num_processes times
    # per update (its convention for dataloader-length schedules); ours count optimizer updates on every rank.
    # cpu=True for a multi-process launch (torchrun) on a machine without CUDA: accelerate only joins the gloo
    # process group when told to run on CPU; otherwise every rank would silently train alone (world size 1).
    multi_cpu = int(os.environ.get("WORLD_SIZE", "1")) > 1 and not torch.cuda.is_available()
    accelerator = Accelerator(mixed_precision=cfg.mixed_precision, gradient_accumulation_steps=cfg.grad_accum,
                              step_scheduler_with_optimizer=False, cpu=multi_cpu)
    if work.exists() and overwrite and not resume and accelerator.is_main_process:
        shutil.rmtree(work)
    accelerator.wait_for_everyone()
    set_seed(cfg.seed)
    dataset = open_dataset(data, cfg.split)
    batches = BatchSource(dataset, cfg.batch_size, (cfg.resolution, *cfg.extra_resolutions), cfg.seed,
                          accelerator.process_index)
    distiller.setup(teacher, accelerator, cfg)
    for opt in distiller.optimizers:
        for group in opt.param_groups:
            group.setdefault("initial_lr", group["lr"])
    schedulers = [
        accelerator.prepare(torch.optim.lr_scheduler.LambdaLR(opt, _lr_lambda(cfg.warmup_steps)))
        for opt in distiller.optimizers
    ]
    ema = EMA(accelerator.unwrap_model(distiller.student_module), cfg.ema_decay) if cfg.ema_decay else None
    if ema is not None:
        accelerator.register_for_checkpointing(ema)
    start = 0
    if resume:
        ckpts = _checkpoints(work)
        if not ckpts:
            raise UsageError(f"nothing to resume: no checkpoints in {work / 'checkpoints'}")
        accelerator.load_state(str(ckpts[-1]))
        start = json.loads((ckpts[-1] / "trainer.json").read_text())["step"]
        if accelerator.is_main_process:
            _truncate_log(work / "log.jsonl", start)  # rows past the checkpoint are redone
    if accelerator.is_main_process:
        (work / "checkpoints").mkdir(parents=True, exist_ok=True)
        (work / "config.json").write_text(json.dumps(
            {"strategy": distiller.name, "teacher": str(teacher), "data": str(data), "train": attrs.asdict(cfg),
             "options": distiller.options_dict()}, indent=2, default=str))
    log_path = work / "log.jsonl"
    writer = _tensorboard(work) if accelerator.is_main_process else None
    bar = tqdm(total=cfg.steps, initial=start, unit="step", disable=not (progress and accelerator.is_main_process),
               dynamic_ncols=True, desc=distiller.name)
    t0 = time.perf_counter()
    last: dict[str, float] = {}
    for step in range(start, cfg.steps):
        torch.manual_seed(hash((cfg.seed, step, accelerator.process_index)) & 0x7FFFFFFF)
        batch = batches(step, accelerator.device)
        with accelerator.accumulate(*distiller.trainable_modules):
            losses = distiller.train_step(batch, step)
        bad = {k: v for k, v in losses.items() if not math.isfinite(v)}
        if bad:
            ckpts = _checkpoints(work)
            hint = f"resume from {ckpts[-1]} with a lower --lr" if ckpts else "try a lower --lr"
            raise MovieError(  # steps counted as in the log and the checkpoints: the (step + 1)-th step
                f"loss {', '.join(f'{k}={v}' for k, v in bad.items())} at step {step + 1}: stopping ({hint})")
        if accelerator.sync_gradients:  # an optimizer update happened (always, without --grad-accum)
            for sched in schedulers:
                sched.step()
            if ema is not None:
                ema.update(accelerator.unwrap_model(distiller.student_module))
        last = losses
        done = step + 1
        if accelerator.is_main_process and (done % cfg.log_every == 0 or done == cfg.steps):
            row = {"step": done, **losses, "lr": schedulers[0].get_last_lr()[0] if schedulers else cfg.lr,
                   "seconds": round(time.perf_counter() - t0, 3)}
            with log_path.open("a") as f:
                f.write(json.dumps(row) + "\n")
            if writer is not None:
                for k, v in losses.items():
                    writer.add_scalar(f"loss/{k}", v, done)
        if done % cfg.checkpoint_every == 0 and done < cfg.steps:
            _save_checkpoint(accelerator, work, done, cfg.keep_checkpoints)
        bar.update(1)
        bar.set_postfix({k: f"{v:.4g}" for k, v in losses.items()})
    bar.close()
    accelerator.wait_for_everyone()
    if os.environ.get(PARAM_DUMP_ENV):
        _dump_param_hash([accelerator.unwrap_model(m) for m in distiller.trainable_modules], work,
                         accelerator.process_index)
    _save_checkpoint(accelerator, work, cfg.steps, cfg.keep_checkpoints)  # every rank: it holds barriers
    if accelerator.is_main_process:
        student = accelerator.unwrap_model(distiller.student_module)
        if ema is not None:
            ema.copy_to(student)
        distiller.export(out, extra={"training": {
            "strategy": distiller.name, "steps": cfg.steps, "teacher": str(teacher), "data": str(data),
            "train": attrs.asdict(cfg), "options": distiller.options_dict(), "final_losses": last,
            "world_size": accelerator.num_processes,
        }}, overwrite=overwrite)
    if writer is not None:
        writer.close()
    accelerator.wait_for_everyone()
    return {"steps": cfg.steps, "resumed_from": start, "final_losses": last, "out": str(out), "work": str(work),
            "world_size": accelerator.num_processes, "seconds": time.perf_counter() - t0}


def _save_checkpoint(accelerator, work: Path, step: int, keep: int) -> None:
    path = work / "checkpoints" / f"step-{step}"
    accelerator.save_state(str(path))
    if accelerator.is_main_process:
        (path / "trainer.json").write_text(json.dumps({"step": step}))
        for old in _checkpoints(work)[:-keep]:
            shutil.rmtree(old, ignore_errors=True)
    accelerator.wait_for_everyone()


def _truncate_log(path: Path, step: int) -> None:
    if path.is_file():
        rows = [line for line in path.read_text().splitlines() if line.strip() and json.loads(line)["step"] <= step]
        path.write_text("".join(row + "\n" for row in rows))


def _dump_param_hash(modules: list[torch.nn.Module], work: Path, rank: int) -> None:
    """Debug/test aid ($MOVIE_DEBUG_PARAM_DUMP set): sha256 of this rank's trained weights, before any EMA copy."""
    digest = hashlib.sha256()
    for i, module in enumerate(modules):
        for key, value in sorted(module.state_dict().items()):
            digest.update(f"{i}.{key}".encode())
            digest.update(value.detach().cpu().contiguous().numpy().tobytes())
    work.mkdir(parents=True, exist_ok=True)
    (work / f"params-rank{rank}.sha256").write_text(digest.hexdigest() + "\n")


def _tensorboard(work: Path):
    try:
        from torch.utils.tensorboard import SummaryWriter
    except ImportError:
        return None
    return SummaryWriter(str(work / "tensorboard"))


def read_log(out: Path) -> list[dict[str, Any]]:
    """The JSONL loss log of the run that wrote (or is writing) `out`."""
    path = _work_dir(Path(out)) / "log.jsonl"
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()] if path.is_file() else []
