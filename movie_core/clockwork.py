"""Clockwork Diffusion (Habibian et al., CVPR 2024) as recipe options: the step clock.

The denoiser's 'unet' network, cut by its `network_split()` (DenoiserContract) into a high-resolution
head and tail around a low-resolution core, runs whole on the clock's full steps; on the others only the
head, the adaptor and the tail run, the adaptor standing in for the core from the current step's r_in
and the last full step's r_out. Recipe options: `clock` N (full on steps 0, N, 2N, ...; 1 is off),
`clock_schedule` (the full steps, listed), `adaptor` (`identity`: reuse the last full r_out as it is,
the training-free baseline of the paper's official code).

The clock is the 'unet' network's runner (`set_runner`) while a batch is sampled, and follows the steps
through the sampler's `on_step` callback. Every pass of a step gets its own r_out: with 3-pass guidance
in one batch each branch reuses its own branch's features.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from typing import Any

import torch

from movie_core.errors import UsageError


def full_steps(steps: int, clock: int = 1, schedule: tuple[int, ...] | None = None) -> list[bool]:
    """For each of `steps` steps, whether it runs the full network (step 0 always does)."""
    if schedule is not None:
        chosen = set(schedule) | {0}
        return [i in chosen for i in range(steps)]
    return [i % clock == 0 for i in range(steps)]


def check_schedule(recipe: Any, steps: int) -> list[bool]:
    """The recipe's full steps over `steps` steps; a schedule naming a step the sampler never reaches is an error."""
    if recipe.clock_schedule is not None and recipe.clock_schedule[-1] >= steps:
        raise UsageError(f"clock_schedule names step {recipe.clock_schedule[-1]}, but the recipe samples {steps} "
                         f"steps (0 to {steps - 1})")
    return full_steps(steps, recipe.clock, recipe.clock_schedule)


class IdentityAdaptor(torch.nn.Module):
    """The training-free adaptor: the last full step's r_out, unchanged (no FLOPs)."""

    def forward(self, r_in: torch.Tensor, r_out_prev: torch.Tensor, *context: torch.Tensor) -> torch.Tensor:
        return r_out_prev


def make_adaptor(name: str) -> torch.nn.Module:
    if name == "identity":
        return IdentityAdaptor()
    raise UsageError(f"unknown adaptor '{name}'; adaptors: identity")


def network_split(denoiser: Any, name: str) -> Any:
    """The denoiser's NetworkSplit, or one line saying it cannot run a clock."""
    split_fn = getattr(denoiser, "network_split", None)  # optional in the contract
    split = split_fn() if callable(split_fn) else None
    if split is None:
        raise UsageError(f"denoiser '{name}' cannot run with a clock: it does not expose a network split "
                         "(DenoiserContract.network_split)")
    return split


class StepClock:
    """The 'unet' runner of a clocked recipe: full network on full steps, head -> adaptor -> tail on the others.

    Counts what ran (`core_calls`, `adaptor_calls`) for tests and benchmarks."""

    def __init__(self, split: Any, adaptor: torch.nn.Module, clock: int = 1,
                 schedule: tuple[int, ...] | None = None) -> None:
        self.split, self.adaptor = split, adaptor
        self.clock, self.schedule = clock, schedule
        self.step = 0
        self._call = 0
        self._r_out: dict[int, torch.Tensor] = {}
        self.core_calls = 0
        self.adaptor_calls = 0

    def is_full(self, step: int) -> bool:
        return full_steps(step + 1, self.clock, self.schedule)[step]

    def on_step(self, index: int, timestep: Any) -> None:
        """Sampling-loop callback: the next passes belong to step `index` (step 0 starts a new trajectory)."""
        self.step, self._call = index, 0
        if index == 0:
            self._r_out.clear()

    def __call__(self, *inputs: torch.Tensor) -> torch.Tensor:
        r_in, *context = self.split.head(*inputs)
        key = self._call
        self._call += 1
        previous = self._r_out.get(key)
        if self.is_full(self.step) or previous is None or previous.shape[0] != r_in.shape[0]:
            r_out = self.split.core(r_in, *context)
            self._r_out[key] = r_out
            self.core_calls += 1
        else:
            r_out = self.adaptor(r_in, previous, *context)
            self.adaptor_calls += 1
        return self.split.tail(r_out, *context)

    @contextlib.contextmanager
    def running(self, denoiser: Any) -> Iterator[StepClock]:
        """Route the denoiser's 'unet' network through this clock for the duration (a passthrough backend: nothing
        else is routed), starting a fresh trajectory."""
        self.on_step(0, None)
        denoiser.set_runner("unet", self)
        try:
            yield self
        finally:
            denoiser.set_runner("unet", None)
            self._r_out.clear()


def build_clock(pipe: Any) -> StepClock | None:
    """The step clock of a built pipeline, or None when its recipe has no clock; one line when it cannot run."""
    recipe = pipe.recipe
    if not recipe.clocked:
        return None
    split = network_split(pipe.denoiser, recipe.denoiser)
    if pipe.runtime is not None:
        raise UsageError(f"the clock runs on the eager backend for now (backend '{recipe.backend}' would need the "
                         "split graphs, which are not exported yet): use --backend eager")
    check_schedule(recipe, pipe.steps)
    return StepClock(split, make_adaptor(recipe.adaptor), recipe.clock, recipe.clock_schedule)
