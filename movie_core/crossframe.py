"""Anchor cross-frame attention (MoViE Sec. 3.1): every frame's self-attention uses one anchor's keys/values.

Framework-free: a denoiser passes each anchor layer's keys and values through a hook
(`Denoiser.set_kv_hook`); `AnchorController.kv` is that hook. The anchor frame is sampled first
in `record` mode: each layer's K/V are stored once per sampling step (for every guidance branch
in the batch). The other frames are then sampled in `replay` mode: their queries attend to the
stored anchor K/V, repeated over the batch.
"""

from __future__ import annotations

from typing import Any

import torch


class AnchorController:
    """Holds the anchor's K/V per (step, layer) and the mode the hook runs in: off, record or replay."""

    def __init__(self) -> None:
        self.mode = "off"
        self.step = 0
        self.store: dict[tuple[int, str], tuple[torch.Tensor, torch.Tensor]] = {}

    def on_step(self, index: int, timestep: Any) -> None:
        """Sampling-loop callback: which step the next network passes belong to."""
        self.step = index

    def record(self) -> None:
        self.store.clear()
        self.step = 0
        self.mode = "record"

    def replay(self) -> None:
        if not self.store:
            raise RuntimeError("replay needs a recorded anchor first")
        self.step = 0
        self.mode = "replay"

    def clear(self) -> None:
        self.store.clear()
        self.mode = "off"

    def kv(self, name: str, key: torch.Tensor, value: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """The KV hook: record the layer's K/V, or swap in the anchor's, repeated over the batch."""
        if self.mode == "record":
            self.store[(self.step, name)] = (key.detach(), value.detach())
            return key, value
        if self.mode == "replay":
            return expand_to_batch(*self.store[(self.step, name)], key.shape[0])
        return key, value

    def recorded(self, layers: list[str]) -> list[torch.Tensor]:
        """The current step's stored K/V as a flat list k_0, v_0, k_1, v_1, ... in `layers` order."""
        return [t for name in layers for t in self.store[(self.step, name)]]


def expand_to_batch(key: torch.Tensor, value: torch.Tensor, batch: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Anchor K/V with one row per guidance branch, repeated so each frame of a batch gets its branch's."""
    groups = key.shape[0]
    if batch % groups:
        raise RuntimeError(f"batch {batch} is not a multiple of the anchor's {groups} guidance branches")
    return key.repeat_interleave(batch // groups, dim=0), value.repeat_interleave(batch // groups, dim=0)
