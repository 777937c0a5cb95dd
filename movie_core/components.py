"""The torch-side contracts every component plugin implements (imported only when building)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import attrs
import torch

DTYPES = {"float32": torch.float32, "float16": torch.float16, "bfloat16": torch.bfloat16}


@attrs.frozen
class BuildContext:
    """How to build a component: size, placement, and where its weights come from (None = random)."""

    size: str = "nano"
    device: str = "cpu"
    dtype: str = "float32"
    weights: Path | None = None
    meta: bool = False
    seed: int = 0

    @property
    def torch_dtype(self) -> torch.dtype:
        return DTYPES[self.dtype]

    @property
    def torch_device(self) -> torch.device:
        return torch.device("meta" if self.meta else resolve_device(self.device))


def resolve_device(device: str) -> str:
    """'auto' -> cuda when available, else mps, else cpu."""
    if device != "auto":
        return device
    if torch.cuda.is_available():
        return "cuda"
    if getattr(torch.backends, "mps", None) and torch.backends.mps.is_available():
        return "mps"
    return "cpu"


class Autoencoder(torch.nn.Module):
    """Images in [-1, 1] (NCHW) <-> latents in SD's scaled latent space."""

    latent_space: str = "sd1"
    subfolder: str = ""
    downscale: int = 8
    latent_channels: int = 4

    def encode(self, images: torch.Tensor) -> torch.Tensor:
        raise NotImplementedError

    def decode(self, latents: torch.Tensor) -> torch.Tensor:
        raise NotImplementedError

    def save_pretrained(self, root: str | Path) -> None:
        """Write this autoencoder's weights to root/<subfolder> in diffusers format."""
        raise NotImplementedError

    def flops_modules(self) -> dict[str, tuple[Any, Any]]:
        """Sub-modules whose cost is counted per frame: {'encode': (fn, ...)}; see movie_core.flops."""
        raise NotImplementedError


class Denoiser(torch.nn.Module):
    """Tokenizer + text encoder + UNet + sampling defaults.

    guidance: 'cfg3' (three UNet passes per step, paper Eq. 1) or 'embedded' (one pass; the
    scales enter the UNet as embeddings, paper Sec. 3.3).
    """

    guidance: str = "cfg3"
    prediction_type: str = "epsilon"
    default_steps: int = 10
    stage: str = ""

    def encode_prompt(self, prompts: list[str]) -> torch.Tensor:
        raise NotImplementedError

    def predict(self, x_t, t, image_latents, text_emb, s_I: float, s_T: float) -> torch.Tensor:
        raise NotImplementedError

    def unet_graph_inputs(self, x, t, image_latents, text_emb, s_I=None, s_T=None) -> list[torch.Tensor]:
        """One UNet pass's inputs for a static graph (time and guidance sinusoids computed on the host).

        Needed by the graph backends (onnx, hexagon, tensorrt, aihub); see movie_core.backends.UNetGraph.
        """
        raise NotImplementedError

    def make_scheduler(self):
        raise NotImplementedError

    def save_pretrained(self, root: str | Path) -> None:
        raise NotImplementedError
