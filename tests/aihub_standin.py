"""A stand-in for the `qai_hub` client (Qualcomm AI Hub), for tests: no network, no account.

It is NOT qai-hub. It has the functions and job methods the `aihub` backend uses, with the
signatures of qai-hub's documented API (workbench.aihub.qualcomm.com/docs/hub/api.html:
upload_model, get_devices, get_model, Device, submit_compile_job, submit_profile_job,
submit_inference_job; CompileJob.get_target_model / download_target_model / get_status,
ProfileJob.download_profile, InferenceJob.download_output_data) and it checks every argument
against what those docs allow: types, input_specs' shapes and dtypes, option flags, inference
inputs matching the compiled model's inputs. "Compiling" keeps the uploaded ONNX file;
inference jobs run (a copy of) it with onnxruntime on the CPU, so the numbers that come back are real.
Every call is appended to `calls` so tests can check the sequence.
"""

from __future__ import annotations

import itertools
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

__version__ = "0.0-standin"

DEVICES = ("Samsung Galaxy S24 (Family)", "Samsung Galaxy S23 (Family)", "Snapdragon 8 Elite QRD")
SPEC_DTYPES = ("float32", "int8", "int16", "int32", "int64", "uint8", "uint16")  # the docs' accepted input types
RUNTIMES = ("tflite", "qnn_lib_aarch64_android", "qnn_context_binary", "onnx", "precompiled_qnn_onnx")

calls: list[tuple[str, dict[str, Any]]] = []
_ids = itertools.count(1)
_models: dict[str, Model] = {}


class StandInError(AssertionError):
    """A call that qai-hub's documented API does not allow."""


def _check(cond: bool, message: str) -> None:
    if not cond:
        raise StandInError(message)


@dataclass(frozen=True)
class Device:
    name: str = ""
    os: str = ""
    attributes: str | list[str] = field(default_factory=list)


@dataclass
class Model:
    model_id: str
    onnx_bytes: bytes
    name: str
    input_specs: dict[str, tuple[tuple[int, ...], str]] | None = None
    target: bool = False


@dataclass
class JobStatus:
    code: str = "SUCCESS"
    message: str = ""

    @property
    def success(self) -> bool:
        return self.code == "SUCCESS"


def reset() -> None:
    calls.clear()
    _models.clear()


def get_devices(name: str = "", os: str = "", attributes: str | list[str] | None = None) -> list[Device]:
    calls.append(("get_devices", {"name": name, "os": os, "attributes": attributes}))
    _check(isinstance(name, str), "get_devices(name=...) takes a str")
    return [Device(d) for d in DEVICES if not name or d == name]


def upload_model(model: Any, name: str | None = None, project: Any = None) -> Model:
    calls.append(("upload_model", {"model": model, "name": name}))
    _check(isinstance(model, (str, Path)), f"upload_model(model=...) here takes a path, got {type(model).__name__}")
    path = Path(model)
    _check(path.exists(), f"upload_model: {path} does not exist")
    _check(path.suffix == ".onnx", f"upload_model: an ONNX model must end in .onnx, got {path.name}")
    m = Model(model_id=f"m{next(_ids)}", onnx_bytes=path.read_bytes(), name=path.name)  # uploaded: a copy
    _models[m.model_id] = m
    return m


def get_model(model_id: str) -> Model:
    calls.append(("get_model", {"model_id": model_id}))
    _check(model_id in _models, f"get_model: no model {model_id!r}")
    return _models[model_id]


def _check_options(options: str) -> dict[str, str]:
    _check(isinstance(options, str), "options is a string of command-line flags")
    parts = options.split()
    flags = dict(zip(parts[::2], parts[1::2]))
    _check(len(parts) % 2 == 0 and all(k.startswith("--") for k in flags), f"bad options string {options!r}")
    if "--target_runtime" in flags:
        _check(flags["--target_runtime"] in RUNTIMES, f"unknown --target_runtime {flags['--target_runtime']}")
    return flags


def _check_device(device: Any) -> None:
    _check(isinstance(device, Device), f"device must be a qai_hub.Device, got {type(device).__name__}")
    _check(device.name in DEVICES, f"no device named {device.name!r}")


class Job:
    def __init__(self) -> None:
        self.job_id = f"j{next(_ids)}"

    def get_status(self) -> JobStatus:
        return JobStatus()

    def wait(self, timeout: int | None = None) -> JobStatus:
        return JobStatus()


class CompileJob(Job):
    def __init__(self, model: Model, device: Device, options: dict[str, str]):
        super().__init__()
        self.device = device
        self.target = Model(model_id=f"t{next(_ids)}", onnx_bytes=model.onnx_bytes, name=model.name,
                            input_specs=model.input_specs, target=True)
        _models[self.target.model_id] = self.target
        self.runtime = options.get("--target_runtime", "tflite")

    def get_target_model(self) -> Model | None:
        calls.append(("CompileJob.get_target_model", {}))
        return self.target

    def download_target_model(self, filename: str) -> str:
        calls.append(("CompileJob.download_target_model", {"filename": filename}))
        _check(isinstance(filename, str), "download_target_model(filename) takes a str")
        suffix = {"qnn_context_binary": ".bin", "tflite": ".tflite"}.get(self.runtime, ".onnx")
        out = Path(filename if filename.endswith(suffix) else filename + suffix)
        out.write_bytes(b"stand-in context binary for " + self.target.name.encode())
        return str(out)


class ProfileJob(Job):
    def download_profile(self, filename: str | None = None) -> dict:
        calls.append(("ProfileJob.download_profile", {"filename": filename}))
        return {"execution_summary": {"estimated_inference_time": 1234, "estimated_inference_peak_memory": 5678},
                "execution_detail": []}


class InferenceJob(Job):
    def __init__(self, model: Model, inputs: Mapping[str, list[np.ndarray]]):
        super().__init__()
        self.model, self.inputs = model, inputs

    def download_output_data(self, filename: str | None = None) -> dict[str, list[np.ndarray]]:
        calls.append(("InferenceJob.download_output_data", {"filename": filename}))
        import onnxruntime as ort

        session = ort.InferenceSession(self.model.onnx_bytes, providers=["CPUExecutionProvider"])
        feeds = {name: arrays[0] for name, arrays in self.inputs.items()}
        names = [o.name for o in session.get_outputs()]
        return {n: [o] for n, o in zip(names, session.run(None, feeds))}


def submit_compile_job(model: Any, device: Any, name: str | None = None, input_specs: Any = None, options: str = "",
                       single_compile: bool = True, calibration_data: Any = None, retry: bool = True,
                       project: Any = None) -> CompileJob:
    calls.append(("submit_compile_job", {"model": model, "device": device, "name": name,
                                         "input_specs": input_specs, "options": options}))
    _check(isinstance(model, Model) and not model.target, "submit_compile_job takes an uploaded source Model here")
    _check_device(device)
    _check(name is None or isinstance(name, str), "name is a str")
    _check(isinstance(input_specs, Mapping) and input_specs, "input_specs: a mapping of input name -> spec")
    for key, spec in input_specs.items():
        _check(isinstance(key, str), "input_specs keys are input names")
        shape, dtype = spec if len(spec) == 2 and isinstance(spec[0], tuple) else (spec, "float32")
        _check(isinstance(shape, tuple) and all(isinstance(d, int) and d > 0 for d in shape),
               f"input_specs[{key!r}]: shape must be a tuple of positive ints, got {shape!r}")
        _check(dtype in SPEC_DTYPES, f"input_specs[{key!r}]: dtype {dtype!r} is not one of {SPEC_DTYPES}")
    model.input_specs = {k: (v[0], v[1]) for k, v in input_specs.items()}
    return CompileJob(model, device, _check_options(options))


def submit_profile_job(model: Any, device: Any, name: str | None = None, options: str = "", retry: bool = True,
                       project: Any = None) -> ProfileJob:
    calls.append(("submit_profile_job", {"model": model, "device": device, "name": name, "options": options}))
    _check(isinstance(model, Model) and model.target, "submit_profile_job takes a compiled target Model")
    _check_device(device)
    _check_options(options)
    return ProfileJob()


def submit_inference_job(model: Any, device: Any, inputs: Any = None, name: str | None = None, options: str = "",
                         retry: bool = True, profile: bool = True, project: Any = None) -> InferenceJob:
    calls.append(("submit_inference_job", {"model": model, "device": device, "inputs": inputs, "name": name}))
    _check(isinstance(model, Model) and model.target, "submit_inference_job takes a compiled target Model")
    _check_device(device)
    _check_options(options)
    _check(isinstance(inputs, Mapping), "inputs: a mapping of input name -> list of numpy arrays")
    _check(list(inputs) == list(model.input_specs),
           f"inputs {list(inputs)} != compiled inputs {list(model.input_specs)}")
    for key, arrays in inputs.items():
        _check(isinstance(arrays, list) and all(isinstance(a, np.ndarray) for a in arrays),
               f"inputs[{key!r}] must be a list of numpy arrays")
        shape, dtype = model.input_specs[key]
        _check(all(a.shape == shape and str(a.dtype) == dtype for a in arrays),
               f"inputs[{key!r}]: {[(a.shape, str(a.dtype)) for a in arrays]} != spec {(shape, dtype)}")
    return InferenceJob(model, inputs)
