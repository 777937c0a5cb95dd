"""Registers the `hexagon` backend: QNN context binaries for the Hexagon NPU through onnxruntime-qnn's HTP backend."""

from __future__ import annotations

import contextlib
import os
import sys
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import Any

import attrs

from movie_core.hookspecs import hookimpl
from movie_core.registry import ComponentSpec

# htp_arch -> (QNN soc_model id, chipset, phone generation)
TARGETS = {
    "v73": ("43", "SM8550", "Snapdragon 8 Gen 2"),
    "v75": ("57", "SM8650", "Snapdragon 8 Gen 3"),
    "v79": ("69", "SM8750", "Snapdragon 8 Elite"),
}
DEFAULT_TARGET = "v75"
QNN_OPSET = 18  # torch.onnx's exporter writes 18; its down-conversion to 17 leaves opset-18 Split attributes


@attrs.frozen(kw_only=True)
class HexagonConfig:
    """Which Hexagon NPU to compile for."""

    htp_arch: str = attrs.field(default=DEFAULT_TARGET, validator=attrs.validators.in_(tuple(TARGETS)))


@hookimpl
def movie_register_backends(registry):
    registry.register(
        ComponentSpec(
            family="backend",
            name="hexagon",
            summary="Snapdragon Hexagon NPU: QNN context binaries (onnxruntime-qnn HTP, fp16, no CPU fallback; "
                    "emulated on x86-64 Linux)",
            factory="movie_plugins.backends.hexagon:HexagonBackend",
            config=HexagonConfig,
        )
    )


def _qnn():
    import onnxruntime as ort
    import onnxruntime_qnn

    if "QNNExecutionProvider" not in {d.ep_name for d in ort.get_ep_devices()}:
        ort.register_execution_provider_library("QNNExecutionProvider", onnxruntime_qnn.get_library_path())
    return ort, onnxruntime_qnn


@contextlib.contextmanager
def _quiet_stdout():
    """QNN's HTP library prints a configuration note on the process's stdout when it loads: keep stdout clean."""
    import ctypes

    sys.stdout.flush()
    saved, devnull = os.dup(1), os.open(os.devnull, os.O_WRONLY)
    try:
        os.dup2(devnull, 1)
        yield
    finally:
        ctypes.CDLL(None).fflush(None)
        os.dup2(saved, 1)
        os.close(saved)
        os.close(devnull)


def _session(ort, path: Path, so):
    with _quiet_stdout():
        return ort.InferenceSession(str(path), sess_options=so)


class HexagonBackend:
    """Each component: ONNX (opset 17, fp32) -> QNN EP with the HTP backend -> an EPContext model + QNN context binary.

    The context binary is what a phone app loads; here the same files run in the HTP emulator.
    Options: htp_arch (v73, v75 default, v79; the soc_model follows). CPU fallback is disabled, so an
    operator the HTP cannot run is an error that names it.
    """

    name = "hexagon"
    exports = True
    needs_float32 = True

    @staticmethod
    def available() -> tuple[bool, str]:
        try:
            ort, qnn = _qnn()
        except ImportError as exc:
            return False, f"{exc.name} is not installed (pip install 'movie[hexagon]')"
        except Exception as exc:  # the EP library fails to load on an unsupported platform
            return False, f"onnxruntime-qnn cannot load its QNN execution provider here: {exc}"
        from onnxruntime_qnn import build_and_package_info as info

        return True, (f"onnxruntime-qnn {qnn.__version__} (QNN {getattr(info, 'qnn_version', '?')}), "
                      f"onnxruntime {ort.__version__}; HTP targets {', '.join(TARGETS)}")

    @staticmethod
    def target(options: dict) -> dict[str, str]:
        from movie_core.errors import UsageError

        arch = str(options.get("htp_arch", DEFAULT_TARGET)).lower()
        arch = arch if arch.startswith("v") else f"v{arch}"
        if arch not in TARGETS:
            raise UsageError(f"unknown Hexagon target '{arch}'; available: {', '.join(TARGETS)}")
        soc, chipset, phone = TARGETS[arch]
        return {"htp_arch": arch, "soc_model": soc, "chipset": chipset, "device": phone}

    def toolchain(self, options: dict) -> dict[str, Any]:
        import onnx
        import onnxruntime
        import onnxruntime_qnn
        import torch
        from onnxruntime_qnn import build_and_package_info as info

        return {"torch": torch.__version__, "onnx": onnx.__version__, "onnxruntime": onnxruntime.__version__,
                "onnxruntime_qnn": onnxruntime_qnn.__version__, "qnn_sdk": getattr(info, "qnn_version", ""),
                "opset": QNN_OPSET, "target": self.target(options)}

    def precision(self, options: dict, inputs: tuple) -> str:
        return "float16"

    def _session_options(self, ort, qnn, target: dict, context_path: Path | None):
        so = ort.SessionOptions()
        so.log_severity_level = 4  # unsupported nodes are reported by name below, not through the EP's log
        so.add_session_config_entry("session.disable_cpu_ep_fallback", "1")
        if context_path is not None:
            so.add_session_config_entry("ep.context_enable", "1")
            so.add_session_config_entry("ep.context_file_path", str(context_path))
        devices = [d for d in ort.get_ep_devices() if d.ep_name == "QNNExecutionProvider"]
        so.add_provider_for_devices(devices, {"backend_path": qnn.get_qnn_htp_path(), **self._ep_options(target)})
        return so

    @staticmethod
    def _ep_options(target: dict) -> dict[str, str]:
        """The QNN execution provider's options for a target (besides backend_path, the HTP library)."""
        return {"htp_arch": target["htp_arch"][1:], "soc_model": target["soc_model"],
                "enable_htp_fp16_precision": "1"}

    def runtime(self, options: dict) -> dict[str, Any]:
        """What an app sets to run the export: onnxruntime with the QNN EP (a plugin library) on the HTP."""
        from onnxruntime_qnn import get_library_path, get_qnn_htp_path

        target = self.target(options)
        return {
            "runtime": "onnxruntime", "provider": "QNNExecutionProvider", "options": self._ep_options(target),
            "library": Path(get_library_path()).name, "library_package": "onnxruntime_qnn",
            "library_options": {"backend_path": Path(get_qnn_htp_path()).name},
            "session_config": {"session.disable_cpu_ep_fallback": "1"},
            "model": "{component}.onnx", "precision": "float16",
            "target": target,
            "note": "register `library` as the provider's plugin library (ort.register_execution_provider_library; "
                    "in an app: the QNN libraries shipped beside it), add the provider for its devices with "
                    "`options` and `library_options` (file names resolved in the library's folder); "
                    "{component}.onnx is an EPContext model whose QNN context binary {component}_qnn.bin lies "
                    "beside it; inputs and outputs stay float32",
        }

    def unsupported_nodes(self, onnx_path: Path, target: dict) -> list[str]:
        """Operators the QNN EP leaves to the CPU: 'OpType (node name)' for each."""
        ort, qnn = _qnn()
        so = self._session_options(ort, qnn, target, None)
        so.add_session_config_entry("session.disable_cpu_ep_fallback", "0")
        so.add_session_config_entry("session.record_ep_graph_assignment_info", "1")
        session = _session(ort, onnx_path, so)
        return [f"{n.op_type} ({n.name})" for sub in session.get_provider_graph_assignment_info()
                if sub.ep_name != "QNNExecutionProvider" for n in sub.get_nodes()]

    def prepare(self, module: Any, example_inputs: tuple = (), options: dict | None = None) -> Callable:
        import torch

        from movie_core.errors import MovieError
        from movie_plugins.backends._onnx import OrtCallable, source_onnx

        options = options or {}
        ort, qnn = _qnn()
        target = self.target(options)
        name = options.get("name", "model")
        folder = Path(options.get("artifact_dir") or tempfile.mkdtemp(prefix="movie-hexagon-"))
        input_names = options.get("input_names") or [f"input_{i}" for i in range(len(example_inputs))]
        output_names = options.get("output_names") or ["output"]
        context = folder / f"{name}.onnx"  # the EPContext model; QNN writes {name}_qnn.bin beside it
        if not options.get("reuse"):
            if any(t.is_floating_point() and t.dtype != torch.float32 for t in example_inputs):
                raise MovieError("hexagon: export float32 graphs (the HTP runs them in fp16); use --dtype float32")
            source = source_onnx(module, example_inputs, dict(options, input_names=input_names,
                                                               output_names=output_names), opset=QNN_OPSET)
            try:
                _session(ort, source, self._session_options(ort, qnn, target, context))
            except Exception as exc:
                try:
                    missing = self.unsupported_nodes(source, target)
                except Exception:  # the graph does not even load: report the compile error itself
                    missing = []
                if missing:
                    raise MovieError(
                        f"hexagon: component '{name}' has operators the QNN HTP backend does not support "
                        f"(CPU fallback is disabled): {', '.join(missing)}"
                    ) from None
                raise MovieError(f"hexagon: QNN could not compile component '{name}' for {target['htp_arch']}: "
                                 f"{str(exc).strip().splitlines()[0]}") from None
        session = _session(ort, context, self._session_options(ort, qnn, target, None))
        return OrtCallable(session, input_names, output_names)
