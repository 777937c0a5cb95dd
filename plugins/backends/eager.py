"""Registers the `eager` backend: plain PyTorch modules on cpu or cuda, fp32/fp16/bf16."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from movie_core.hookspecs import hookimpl
from movie_core.registry import ComponentSpec


@hookimpl
def movie_register_backends(registry):
    registry.register(
        ComponentSpec(
            family="backend",
            name="eager",
            summary="Plain PyTorch (eager mode) on cpu or cuda, float32/float16/bfloat16",
            factory="movie_plugins.backends.eager:EagerBackend",
        )
    )


class EagerBackend:
    """Runs modules as they are; prepare() only places them on the device and dtype asked for."""

    name = "eager"
    passthrough = True  # the pipeline runs its torch modules directly; prepare() serves direct callers

    @staticmethod
    def available() -> tuple[bool, str]:
        import torch

        devices = ["cpu"] + (["cuda"] if torch.cuda.is_available() else [])
        return True, f"PyTorch {torch.__version__} on {', '.join(devices)}"

    def prepare(self, module: Any, example_inputs: tuple = (), options: dict | None = None) -> Callable:
        options = options or {}
        if "device" in options or "dtype" in options:
            module = module.to(device=options.get("device"), dtype=options.get("dtype"))
        return module
