"""Anchor cross-frame attention (paper Sec. 3.1): every frame's self-attention uses one anchor's keys/values.

The anchor frame is sampled first with the controller in `record` mode: each self-attention layer
stores its keys and values once per sampling step (for every guidance branch in the batch). The
other frames are then sampled in `replay` mode: their queries attend to the stored anchor K/V.
"""

from __future__ import annotations

from typing import Any

import torch
import torch.nn.functional as F


class AnchorController:
    """Holds the anchor's K/V per (step, layer) and the mode the processors run in."""

    def __init__(self) -> None:
        self.mode = "off"
        self.step = 0
        self.store: dict[tuple[int, str], tuple[torch.Tensor, torch.Tensor]] = {}

    def on_step(self, index: int, timestep: Any) -> None:
        """Sampling-loop callback: which step the next UNet calls belong to."""
        self.step = index

    def record(self) -> None:
        self.store.clear()
        self.mode = "record"

    def replay(self) -> None:
        if not self.store:
            raise RuntimeError("replay needs a recorded anchor first")
        self.mode = "replay"

    def clear(self) -> None:
        self.store.clear()
        self.mode = "off"


class CrossFrameAttnProcessor:
    """Self-attention whose keys/values come from the anchor frame in replay mode (SDPA)."""

    def __init__(self, controller: AnchorController, name: str) -> None:
        self.controller = controller
        self.name = name

    def __call__(self, attn, hidden_states, encoder_hidden_states=None, attention_mask=None, temb=None, *args, **kwargs):
        residual = hidden_states
        input_ndim = hidden_states.ndim
        if input_ndim == 4:
            b, c, h, w = hidden_states.shape
            hidden_states = hidden_states.view(b, c, h * w).transpose(1, 2)
        batch = hidden_states.shape[0]
        if attn.group_norm is not None:
            hidden_states = attn.group_norm(hidden_states.transpose(1, 2)).transpose(1, 2)
        query = attn.to_q(hidden_states)
        ctrl = self.controller
        if ctrl.mode == "replay":
            key, value = ctrl.store[(ctrl.step, self.name)]
            groups = key.shape[0]
            if batch % groups:
                raise RuntimeError(f"batch {batch} is not a multiple of the anchor's {groups} guidance branches")
            key = key.repeat_interleave(batch // groups, dim=0)
            value = value.repeat_interleave(batch // groups, dim=0)
        else:
            key = attn.to_k(hidden_states)
            value = attn.to_v(hidden_states)
            if ctrl.mode == "record":
                ctrl.store[(ctrl.step, self.name)] = (key.detach(), value.detach())
        heads = attn.heads
        head_dim = key.shape[-1] // heads
        query = query.view(batch, -1, heads, head_dim).transpose(1, 2)
        key = key.view(batch, -1, heads, head_dim).transpose(1, 2)
        value = value.view(batch, -1, heads, head_dim).transpose(1, 2)
        out = F.scaled_dot_product_attention(query, key, value)
        out = out.transpose(1, 2).reshape(batch, -1, heads * head_dim).to(query.dtype)
        out = attn.to_out[1](attn.to_out[0](out))
        if input_ndim == 4:
            out = out.transpose(-1, -2).reshape(b, c, h, w)
        if attn.residual_connection:
            out = out + residual
        return out / attn.rescale_output_factor


def install(unet: torch.nn.Module, controller: AnchorController) -> dict[str, Any]:
    """Put cross-frame processors on every self-attention (attn1) of a diffusers UNet; returns the old ones."""
    previous = dict(unet.attn_processors)
    processors = {
        name: CrossFrameAttnProcessor(controller, name) if name.endswith("attn1.processor") else proc
        for name, proc in previous.items()
    }
    unet.set_attn_processor(processors)
    return previous


def uninstall(unet: torch.nn.Module, previous: dict[str, Any]) -> None:
    """Restore the processors install() replaced."""
    unet.set_attn_processor(previous)
