"""Registers the `aihub` backend: compile, profile and run components on real phones through Qualcomm AI Hub."""

from __future__ import annotations

import configparser
import json
import os
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import Any

import attrs

from movie_core.hookspecs import hookimpl
from movie_core.registry import ComponentSpec

DEFAULT_DEVICE = "Samsung Galaxy S24 (Family)"  # Snapdragon 8 Gen 3
RUNTIMES = ("qnn_context_binary", "precompiled_qnn_onnx", "tflite", "onnx")
ONNX_OPSET = 18


@attrs.frozen(kw_only=True)
class AIHubConfig:
    """Which AI Hub device to compile for and profile on, and the target runtime."""

    device: str = DEFAULT_DEVICE
    target_runtime: str = attrs.field(default="qnn_context_binary", validator=attrs.validators.in_(RUNTIMES))
    profile: bool = True


@hookimpl
def movie_register_backends(registry):
    registry.register(
        ComponentSpec(
            family="backend",
            name="aihub",
            summary="Qualcomm AI Hub (qai-hub): compile, profile and run each component on a hosted phone "
                    "(default Snapdragon 8 Gen 3)",
            factory="movie_plugins.backends.aihub:AIHubBackend",
            config=AIHubConfig,
        )
    )


def token_file() -> Path:
    """Where qai-hub keeps the API token: $QAIHUB_CLIENT_INI, else ~/.qai_hub/client.ini."""
    return Path(os.path.expanduser(os.environ.get("QAIHUB_CLIENT_INI", "~/.qai_hub/client.ini")))


def has_token() -> bool:
    parser = configparser.ConfigParser()
    try:
        parser.read(token_file())
    except configparser.Error:
        return False
    return any(parser.get(section, "api_token", fallback="").strip() for section in parser.sections())


MISSING_TOKEN = ("no Qualcomm AI Hub API token: run `qai-hub configure --api_token YOUR_TOKEN` "
                 "(it writes ~/.qai_hub/client.ini; QAIHUB_CLIENT_INI points elsewhere)")


class AIHubBackend:
    """Each component: ONNX -> upload_model -> compile job -> profile job (latency JSON) -> inference jobs.

    prepare() returns a callable that submits an inference job per call (minutes each: for checking
    numerics and on-device latency, not for editing long videos).
    """

    name = "aihub"
    exports = True
    needs_float32 = True

    @staticmethod
    def available() -> tuple[bool, str]:
        try:
            import qai_hub
        except ImportError:
            return False, "qai-hub is not installed (pip install 'movie[aihub]')"
        if not has_token():
            return False, MISSING_TOKEN
        return True, f"qai-hub {getattr(qai_hub, '__version__', '?')}, API token in {token_file()}"

    def toolchain(self, options: dict) -> dict[str, Any]:
        import qai_hub
        import torch

        return {"torch": torch.__version__, "qai_hub": getattr(qai_hub, "__version__", "?"), "opset": ONNX_OPSET,
                "device": options.get("device", DEFAULT_DEVICE),
                "target_runtime": options.get("target_runtime", "qnn_context_binary")}

    def precision(self, options: dict, inputs: tuple) -> str:
        return "float16"

    def runtime(self, options: dict) -> dict[str, Any]:
        """What an app sets to run the export: AI Hub's compiled model for its target runtime on the device."""
        runtime = options.get("target_runtime", "qnn_context_binary")
        onnx = runtime in ("onnx", "precompiled_qnn_onnx")
        return {
            "runtime": {"tflite": "tflite", "qnn_context_binary": "qnn"}.get(runtime, "onnxruntime"),
            "target_runtime": runtime, "device": options.get("device", DEFAULT_DEVICE),
            "provider": "QNNExecutionProvider" if onnx else None,
            "options": {"backend_path": "libQnnHtp.so", "enable_htp_fp16_precision": "1"} if onnx else {},
            "library": None, "library_options": {}, "session_config": {},
            "model": "{component}" + {"qnn_context_binary": ".bin", "tflite": ".tflite"}.get(runtime, ".onnx"),
            "precision": "float16",
            "note": "the model AI Hub compiled for `device` (see each component's aihub.json); a QNN context binary "
                    "is loaded by the QNN HTP backend of the app's QNN SDK; inputs and outputs stay float32",
        }

    def _device(self, hub: Any, name: str) -> Any:
        from movie_core.errors import UsageError

        if not hub.get_devices(name=name):
            raise UsageError(f"aihub: no device named '{name}' (see `qai-hub list-devices`)")
        return hub.Device(name)

    def prepare(self, module: Any, example_inputs: tuple = (), options: dict | None = None) -> Callable:
        import qai_hub as hub

        from movie_core.errors import MovieError
        from movie_plugins.backends._onnx import source_onnx

        if not has_token():
            raise MovieError(f"aihub: {MISSING_TOKEN}")
        options = options or {}
        name = options.get("name", "model")
        folder = Path(options.get("artifact_dir") or tempfile.mkdtemp(prefix="movie-aihub-"))
        input_names = list(options.get("input_names") or [f"input_{i}" for i in range(len(example_inputs))])
        output_names = list(options.get("output_names") or ["output"])
        device = self._device(hub, options.get("device", DEFAULT_DEVICE))
        record_path = folder / "aihub.json"
        if options.get("reuse"):
            record = json.loads(record_path.read_text())
            return HubCallable(hub, hub.get_model(record["target_model_id"]), device, name, input_names, output_names)
        source = source_onnx(module, example_inputs, dict(options, input_names=input_names, output_names=output_names),
                             opset=ONNX_OPSET)
        specs = {n: (tuple(t.shape), str(t.dtype).replace("torch.", "")) for n, t in zip(input_names, example_inputs)}
        uploaded = hub.upload_model(str(source))
        runtime = options.get("target_runtime", "qnn_context_binary")
        compile_job = hub.submit_compile_job(model=uploaded, device=device, name=f"movie-{name}", input_specs=specs,
                                             options=f"--target_runtime {runtime}")
        target = compile_job.get_target_model()
        if target is None:
            status = compile_job.get_status()
            raise MovieError(f"aihub: compiling '{name}' failed: {getattr(status, 'message', status)}")
        compile_job.download_target_model(str(folder / name))
        record = {"component": name, "device": device.name, "target_runtime": runtime,
                  "model_id": uploaded.model_id, "target_model_id": target.model_id, "compile_job": compile_job.job_id}
        if options.get("profile", True):
            profile_job = hub.submit_profile_job(model=target, device=device, name=f"movie-{name}-profile")
            profile = profile_job.download_profile()
            (folder / "profile.json").write_text(json.dumps(profile, indent=2, default=str) + "\n")
            summary = profile.get("execution_summary", {}) if isinstance(profile, dict) else {}
            us = summary.get("estimated_inference_time")
            record.update(profile_job=profile_job.job_id, latency_ms=us / 1000 if us is not None else None,
                          peak_memory_bytes=summary.get("estimated_inference_peak_memory"))
        record_path.write_text(json.dumps(record, indent=2) + "\n")
        return HubCallable(hub, target, device, name, input_names, output_names)


class HubCallable:
    """Runs a compiled AI Hub model through an inference job on the device, torch tensors in and out."""

    def __init__(self, hub: Any, target: Any, device: Any, name: str, input_names: list[str], output_names: list[str]):
        self.hub, self.target, self.device, self.name = hub, target, device, name
        self.input_names, self.output_names = input_names, output_names

    def __call__(self, *inputs):
        import numpy as np
        import torch

        from movie_core.errors import MovieError

        data = {n: [t.detach().cpu().numpy()] for n, t in zip(self.input_names, inputs)}
        job = self.hub.submit_inference_job(model=self.target, device=self.device, inputs=data,
                                            name=f"movie-{self.name}-inference")
        outputs = job.download_output_data()
        if not outputs:
            raise MovieError(f"aihub: the inference job for '{self.name}' returned no output")
        arrays = [outputs[n] for n in self.output_names] if all(n in outputs for n in self.output_names) \
            else list(outputs.values())
        tensors = [torch.from_numpy(np.asarray(a[0])).to(inputs[0].device) for a in arrays]
        return tensors[0] if len(tensors) == 1 else tuple(tensors)
