"""Registers the `onnx` backend: each component exported with torch.onnx (opset >= 17), run by onnxruntime."""

from __future__ import annotations

import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import Any

import attrs

from movie_core.hookspecs import hookimpl
from movie_core.registry import ComponentSpec


@attrs.frozen(kw_only=True)
class OnnxConfig:
    """Export options: the ONNX opset and a dynamic batch axis (one model for every batch size).

    Opset 18 and up: torch.onnx's exporter writes 18, and its conversion down to 17 left opset-18
    attributes in Split nodes (an invalid model) with torch 2.13 / onnxscript 0.7.
    """

    opset: int = attrs.field(default=18, validator=attrs.validators.ge(18))
    dynamic_batch: bool = True


@hookimpl
def movie_register_backends(registry):
    registry.register(
        ComponentSpec(
            family="backend",
            name="onnx",
            summary="ONNX (torch.onnx export, opset 18) run by onnxruntime on CPU (CUDA when onnxruntime-gpu has it)",
            factory="movie_plugins.backends.onnx:OnnxBackend",
            config=OnnxConfig,
        )
    )


class OnnxBackend:
    """Exports a component to model.onnx in its artifact folder and runs it with onnxruntime."""

    name = "onnx"
    exports = True

    @staticmethod
    def available() -> tuple[bool, str]:
        try:
            import onnx  # noqa: F401
            import onnxruntime
            import onnxscript  # noqa: F401  (torch.onnx's exporter needs it)
        except ImportError as exc:
            return False, f"{exc.name} is not installed (pip install 'movie[onnx]')"
        return True, f"onnxruntime {onnxruntime.__version__} ({', '.join(onnxruntime.get_available_providers())})"

    def toolchain(self, options: dict) -> dict[str, Any]:
        import onnx
        import onnxruntime
        import torch

        from movie_plugins.backends._onnx import DEFAULT_OPSET

        return {"torch": torch.__version__, "onnx": onnx.__version__, "onnxruntime": onnxruntime.__version__,
                "opset": int(options.get("opset", DEFAULT_OPSET))}

    def dynamic_batch(self, options: dict) -> bool:
        return bool(options.get("dynamic_batch"))

    def precision(self, options: dict, inputs: tuple) -> str:
        floats = [str(t.dtype).replace("torch.", "") for t in inputs if t.is_floating_point()]
        return floats[0] if floats else "float32"

    def runtime(self, options: dict) -> dict[str, Any]:
        """What an app sets to run the export: onnxruntime's CPU provider, no options."""
        return {"runtime": "onnxruntime", "provider": "CPUExecutionProvider", "options": {}, "library": None,
                "library_options": {}, "session_config": {}, "model": "model.onnx",
                "precision": "as the graph (components.*.precision)",
                "note": "any onnxruntime execution provider runs model.onnx; CPU is the one the export checked"}

    def prepare(self, module: Any, example_inputs: tuple = (), options: dict | None = None) -> Callable:
        import onnxruntime as ort
        import torch

        from movie_plugins.backends._onnx import (
            DEFAULT_OPSET,
            OrtCallable,
            copy_onnx,
            quiet_session_options,
            source_onnx,
        )

        options = options or {}
        folder = Path(options.get("artifact_dir") or tempfile.mkdtemp(prefix="movie-onnx-"))
        n_in = len(example_inputs)
        input_names = options.get("input_names") or [f"input_{i}" for i in range(n_in)]
        output_names = options.get("output_names") or ["output"]
        path = folder / "model.onnx"
        if not options.get("reuse"):
            names = dict(options, input_names=input_names, output_names=output_names)
            source = source_onnx(module, example_inputs, names, opset=options.get("opset", DEFAULT_OPSET),
                                 dynamic_batch=bool(options.get("dynamic_batch")))
            copy_onnx(source, path)
        providers = ["CPUExecutionProvider"]
        on_cuda = bool(example_inputs) and example_inputs[0].device.type == "cuda"
        if on_cuda and "CUDAExecutionProvider" in ort.get_available_providers():
            providers.insert(0, "CUDAExecutionProvider")
        so = quiet_session_options(ort)
        so.intra_op_num_threads = int(options.get("threads") or torch.get_num_threads())  # as many as eager uses
        session = ort.InferenceSession(str(path), sess_options=so, providers=providers)
        self._providers = getattr(self, "_providers", {}) | {options.get("name", "graph"): session.get_providers()}
        return OrtCallable(session, input_names, output_names)

    def report(self) -> dict[str, Any]:
        """onnxruntime's version and the providers each prepared component's session runs on."""
        import onnxruntime

        return {"runtime": f"onnxruntime {onnxruntime.__version__}", "providers": getattr(self, "_providers", {})}
