"""The contracts every component implements: exactly what the core calls, nothing else.

The core (pipeline, edit, bench, eval, flops, export, ablate) reaches a built component only through
the methods and attributes listed here; `tests/test_contracts.py` fails when core code touches
anything else, and checks every signature below against docs/plugin_hooks.md.

A component may subclass `Autoencoder` or `Denoiser` (torch modules with these methods) or be any
object that satisfies the matching Protocol (`AutoencoderContract`, `DenoiserContract`).
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any, Protocol, runtime_checkable

import attrs
import torch

DTYPES = {"float32": torch.float32, "float16": torch.float16, "bfloat16": torch.bfloat16}

# hook(layer_name, key, value) -> (key, value): what a self-attention layer attends to.
KVHook = Callable[[str, torch.Tensor, torch.Tensor], tuple[torch.Tensor, torch.Tensor]]
# on_step(index, timestep): the sampler says which step the next network passes belong to.
StepCallback = Callable[[int, Any], None]


@attrs.frozen
class BuildContext:
    """How to build a component: size, placement, and where its weights come from (None = random)."""

    size: str = "nano"
    device: str = "cpu"
    dtype: str = "float32"
    weights: Path | None = None
    meta: bool = False
    seed: int = 0
    variant: str | None = None  # which weight files of a model folder: None = plain ones (else its only variant)

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


@attrs.frozen
class Network:
    """One network a backend may prepare: a module with a tensor-only forward, and its tensor names.

    `module(*inputs)` returns one tensor (the output named `outputs[0]`). The module may define an
    `active()` context manager, entered while the network is prepared and run (to install what a
    static graph needs, for example host-computed time features)."""

    module: torch.nn.Module
    inputs: tuple[str, ...]
    outputs: tuple[str, ...]


@attrs.frozen
class NetworkSplit:
    """A denoiser's 'unet' network cut where Clockwork cuts it: after the first down block.

    For the network's inputs x: `head(*x) -> (r_in, *context)`, `core(r_in, *context) -> r_out`,
    `tail(r_out, *context) -> the network's output`, and tail(core(head(x))) is exactly the network.
    head: input conv, time (and guidance) embeddings, the first down block; r_in is what enters the second
    resolution level. core: everything from the second level down, back up to the top resolution (its
    upsampler included); r_out has the top level's shape. tail: the last up block and the output layers.
    context: the other tensors that cross the cut (embeddings, text, the top level's skip features)."""

    head: torch.nn.Module
    core: torch.nn.Module
    tail: torch.nn.Module


@runtime_checkable
class AutoencoderContract(Protocol):
    """Images in [-1, 1] (NCHW) <-> latents in the autoencoder's latent space."""

    latent_space: str
    downscale: int
    latent_channels: int

    def encode(self, images: torch.Tensor) -> torch.Tensor:
        """images (N, 3, H, W) in [-1, 1] -> latents (N, latent_channels, H / downscale, W / downscale)."""
        ...

    def decode(self, latents: torch.Tensor) -> torch.Tensor:
        """latents -> images (N, 3, H, W) in [-1, 1]."""
        ...

    def save_pretrained(self, root: str | Path) -> None:
        """Write this autoencoder's weights under root (diffusers layout: root/<its subfolder>)."""
        ...


@runtime_checkable
class DenoiserContract(Protocol):
    """Text encoder, denoising network and sampler of one editing model.

    guidance: 'cfg3' (three network passes per step, MoViE Eq. 1; `sample` needs `null_emb`), 'cfg2' (two passes,
    text-to-image guidance; `null_emb` too) or 'embedded' (one pass; the scales enter the network).
    default_steps: steps when the recipe sets none.
    latent_channels: the channels of the latents its sampler works on (the autoencoder's `latent_channels`: 4 in SD's
    latent space, 8 in md-vae's). Optional: the Denoiser base class says 4.
    """

    guidance: str
    prediction_type: str
    default_steps: int
    stage: str
    latent_channels: int

    def tokenize(self, prompts: list[str]) -> tuple[torch.Tensor, list[bool]]:
        """Token ids (B, L) for the text network, and per prompt whether it was truncated."""
        ...

    def encode_prompt(self, prompts: list[str]) -> torch.Tensor:
        """Text embeddings (B, L, D) for `sample` (runs the 'text_encoder' network)."""
        ...

    def sample(self, image_latents: torch.Tensor, text_emb: torch.Tensor, *, steps: int | None = None,
               s_T: float = 7.5, s_I: float = 1.5, null_emb: torch.Tensor | None = None,
               generator: Any = None, latents: torch.Tensor | None = None,
               on_step: StepCallback | None = None) -> torch.Tensor:
        """Edited latents from the source latents: the whole sampler loop; calls on_step(i, t) before step i."""
        ...

    def networks(self) -> dict[str, Network]:
        """The networks a backend may prepare: 'text_encoder' (token ids -> embeddings) and 'unet'
        (one denoising pass on `graph_inputs`, returning the model output)."""
        ...

    def graph_inputs(self, x: torch.Tensor, t: Any, image_latents: torch.Tensor, text_emb: torch.Tensor,
                     s_I: Any = None, s_T: Any = None) -> list[torch.Tensor]:
        """The 'unet' network's inputs for one pass (everything static-graph unfriendly done here)."""
        ...

    def set_runner(self, name: str, runner: Callable[..., torch.Tensor] | None) -> None:
        """Route the named network through `runner(*inputs)` (a backend's prepared callable); None: own module."""
        ...

    def anchor_layers(self) -> list[str]:
        """Names of the self-attention layers whose keys/values an anchor frame records (cross-frame attention)."""
        ...

    def set_kv_hook(self, hook: KVHook | None) -> KVHook | None:
        """Every anchor layer passes its keys and values through hook(name, k, v) (B, tokens, dim) and attends
        to what it returns; None removes it. Returns the previous hook."""
        ...

    def describe(self) -> dict[str, Any]:
        """JSON-able facts for manifests and exports (scheduler, steps, prediction type, guidance, notes)."""
        ...

    def export_host(self, folder: Path, image_latents: torch.Tensor, *, steps: int, s_T: float, s_I: float,
                    generator: Any = None) -> dict[str, Any] | None:
        """Write what an app computes around the networks for these settings into folder (tokenizer.json,
        constant tensors as .npy: time and guidance features, the initial noise for this generator and
        latent shape) and return its JSON description (files, token ids, timesteps, alpha_bar, the update
        formula and its constants); None: this denoiser exports no host plan."""
        ...

    def fused_step(self, steps: int) -> Network | None:
        """A network doing the whole sampler for `steps` in one pass (initial noise, image latents and the
        unet's other inputs -> edited latents), where a graph can absorb the update; else None."""
        ...

    def save_pretrained(self, root: str | Path) -> None:
        """Write this denoiser's weights and configs under root (diffusers layout)."""
        ...

    def network_split(self) -> NetworkSplit | None:
        """The 'unet' network cut into high-resolution path and low-resolution core (Clockwork), or None when
        it cannot be cut (optional: the Denoiser base class returns None, and the recipe's clock is refused)."""
        ...


@runtime_checkable
class BackendContract(Protocol):
    """An execution backend: can it run here, and prepare(module, inputs, options) -> a callable."""

    @staticmethod
    def available() -> tuple[bool, str]:
        ...

    def prepare(self, module: torch.nn.Module, example_inputs: tuple[torch.Tensor, ...] = (),
                options: dict[str, Any] | None = None) -> Callable[..., Any]:
        ...


CONTRACTS: dict[str, type] = {"autoencoder": AutoencoderContract, "denoiser": DenoiserContract,
                              "backend": BackendContract}


class Autoencoder(torch.nn.Module):
    """Base class of the built-in autoencoders (a torch module implementing AutoencoderContract)."""

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


class Denoiser(torch.nn.Module):
    """Base class of denoisers that are torch modules: runner routing and the KV-hook slot done once.

    Subclasses implement tokenize, sample, networks, graph_inputs, anchor_layers, describe, save_pretrained
    and call `self.run_network(name, *inputs)` for every pass of a network so backends can route it."""

    guidance: str = "cfg3"
    prediction_type: str = "epsilon"
    default_steps: int = 10
    stage: str = ""
    latent_channels: int = 4  # optional contract member: SD's latent space; an md-vae (8-channel) denoiser says 8

    def native_latent_size(self) -> int | None:
        """The latent side the network was trained at (SD 1.5: 64, so 512 pixels); None: not stated. Optional
        contract member: `movie edit` caps the long side of frames at it times the encoder's downscale."""
        return None

    def __init__(self) -> None:
        super().__init__()
        self._runners: dict[str, Callable[..., torch.Tensor]] = {}
        self._kv_hook: KVHook | None = None

    def set_runner(self, name: str, runner: Callable[..., torch.Tensor] | None) -> None:
        if runner is None:
            self._runners.pop(name, None)
        else:
            self._runners[name] = runner

    def runner(self, name: str) -> Callable[..., torch.Tensor] | None:
        """The backend runner routed for a network, if any."""
        return self._runners.get(name)

    def run_network(self, name: str, *inputs: torch.Tensor) -> torch.Tensor:
        """One pass of a network: through its routed runner, else its own module."""
        runner = self._runners.get(name)
        if runner is not None:
            return runner(*inputs)
        out: torch.Tensor = self.networks()[name].module(*inputs)
        return out

    def set_kv_hook(self, hook: KVHook | None) -> KVHook | None:
        previous, self._kv_hook = self._kv_hook, hook
        return previous

    @property
    def kv_hook(self) -> KVHook | None:
        return self._kv_hook

    def encode_prompt(self, prompts: list[str]) -> torch.Tensor:
        ids, _ = self.tokenize(prompts)
        device = next(self.networks()["text_encoder"].module.parameters()).device
        with torch.no_grad():
            return self.run_network("text_encoder", ids.to(device))

    def tokenize(self, prompts: list[str]) -> tuple[torch.Tensor, list[bool]]:
        raise NotImplementedError

    def sample(self, image_latents: torch.Tensor, text_emb: torch.Tensor, *, steps: int | None = None,
               s_T: float = 7.5, s_I: float = 1.5, null_emb: torch.Tensor | None = None,
               generator: Any = None, latents: torch.Tensor | None = None,
               on_step: StepCallback | None = None) -> torch.Tensor:
        raise NotImplementedError

    def networks(self) -> dict[str, Network]:
        raise NotImplementedError

    def graph_inputs(self, x: torch.Tensor, t: Any, image_latents: torch.Tensor, text_emb: torch.Tensor,
                     s_I: Any = None, s_T: Any = None) -> list[torch.Tensor]:
        raise NotImplementedError

    def anchor_layers(self) -> list[str]:
        raise NotImplementedError

    def describe(self) -> dict[str, Any]:
        return {"stage": self.stage, "prediction_type": self.prediction_type, "guidance": self.guidance,
                "default_steps": self.default_steps}

    def export_host(self, folder: Path, image_latents: torch.Tensor, *, steps: int, s_T: float, s_I: float,
                    generator: Any = None) -> dict[str, Any] | None:
        return None  # optional: an export then carries describe()'s "host" notes only

    def fused_step(self, steps: int) -> Network | None:
        return None  # optional: the app runs the sampler's update itself

    def save_pretrained(self, root: str | Path) -> None:
        raise NotImplementedError

    def network_split(self) -> NetworkSplit | None:
        return None  # not supported: a subclass whose network can be cut at its second level overrides this
