"""Registers the `compile` backend: torch.compile (inductor); CUDA graphs and channels_last on GPU."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import attrs

from movie_core.hookspecs import hookimpl
from movie_core.registry import ComponentSpec

MODES = ("default", "reduce-overhead", "max-autotune", "max-autotune-no-cudagraphs")


@attrs.frozen(kw_only=True)
class CompileConfig:
    """torch.compile options; None picks by device (GPU: reduce-overhead + channels_last; CPU: default, NCHW)."""

    mode: str | None = attrs.field(default=None, validator=attrs.validators.optional(attrs.validators.in_(MODES)))
    channels_last: bool | None = None


@hookimpl
def movie_register_backends(registry):
    registry.register(
        ComponentSpec(
            family="backend",
            name="compile",
            summary="torch.compile (inductor): CUDA graphs + channels_last on GPU, plain inductor on CPU",
            factory="movie_plugins.backends.compile:CompileBackend",
            config=CompileConfig,
        )
    )


class CompileBackend:
    """torch.compile per component, in process: nothing to export, compiled on first call per shape.

    Options: mode (inductor mode; default "reduce-overhead" = CUDA graphs on GPU, "default" on CPU) and
    channels_last (default on GPU; off on CPU, where it can be switched on to try).
    """

    name = "compile"

    @staticmethod
    def available() -> tuple[bool, str]:
        import shutil

        import torch

        has_compiler = shutil.which("g++") or shutil.which("c++") or shutil.which("clang++")
        if not torch.cuda.is_available() and not has_compiler:
            return False, "torch.compile on CPU needs a C++ compiler (g++ or clang++) on PATH"
        where = "cuda (CUDA graphs, channels_last)" if torch.cuda.is_available() else "cpu (inductor C++ kernels)"
        return True, f"torch.compile with inductor, PyTorch {torch.__version__}, on {where}"

    def prepare(self, module: Any, example_inputs: tuple = (), options: dict | None = None) -> Callable:
        import torch

        options = options or {}
        cuda = bool(example_inputs) and example_inputs[0].device.type == "cuda"
        channels_last = cuda if options.get("channels_last") is None else options["channels_last"]
        mode = options.get("mode") or ("reduce-overhead" if cuda else "default")
        if channels_last:
            module = module.to(memory_format=torch.channels_last)
        compiled = torch.compile(module, mode=mode, fullgraph=False, dynamic=False)
        cuda_graphs = cuda and mode in ("reduce-overhead", "max-autotune")

        def run(*inputs: torch.Tensor):
            if channels_last:
                inputs = tuple(t.contiguous(memory_format=torch.channels_last) if t.ndim == 4 else t for t in inputs)
            if cuda_graphs:
                torch.compiler.cudagraph_mark_step_begin()
            out = compiled(*inputs)
            if not cuda_graphs:
                return out
            # a CUDA graph's outputs are overwritten by its next replay: keep copies
            return tuple(t.clone() for t in out) if isinstance(out, tuple) else out.clone()

        return run
