"""ONNX export and onnxruntime sessions shared by the onnx, hexagon, tensorrt and aihub backends."""

from __future__ import annotations

import contextlib
import io
import logging
import warnings
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch

from movie_core.errors import MovieError

DEFAULT_OPSET = 18
MIN_OPSET = 18  # see OnnxConfig


def check_opset(opset: int) -> int:
    from movie_core.errors import UsageError

    if int(opset) < MIN_OPSET:
        raise UsageError(f"ONNX opset must be >= {MIN_OPSET}, got {opset}")
    return int(opset)


class _Positional(torch.nn.Module):
    """forward(*args): one varargs signature, so dynamic shapes can be given per input."""

    def __init__(self, module: torch.nn.Module):
        super().__init__()
        self.module = module

    def forward(self, *args):
        return self.module(*args)


def export_onnx(module: torch.nn.Module, inputs: tuple, path: Path, input_names: Sequence[str],
                output_names: Sequence[str], opset: int = DEFAULT_OPSET, dynamic_batch: bool = False) -> Path:
    """torch.onnx.export (the torch.export-based exporter) to path; weights go to an external file past 2 GB."""
    dynamic_shapes = None
    if dynamic_batch:
        # frame inputs get a symbolic batch; the anchor's K/V keep theirs. torch.export specializes a
        # size-1 dim, so a batch of 1 is traced as 2 (the model still accepts 1).
        batch = torch.export.Dim("batch", min=1, max=1024)
        framewise = [not n.startswith("anchor_") for n in input_names]
        inputs = tuple(t.expand(2, *t.shape[1:]).contiguous() if f and t.shape[0] == 1 else t
                       for t, f in zip(inputs, framewise))
        dynamic_shapes = {"args": tuple({0: batch} if f else None for f in framewise)}
        module = _Positional(module)
    quiet = logging.getLogger("torch.onnx")
    level = quiet.level
    quiet.setLevel(logging.ERROR)
    try:
        with warnings.catch_warnings(), contextlib.redirect_stdout(io.StringIO()):
            warnings.simplefilter("ignore")
            program = torch.onnx.export(
                module.eval(), tuple(inputs), dynamo=True, opset_version=check_opset(opset), verbose=False,
                input_names=list(input_names), output_names=list(output_names), dynamic_shapes=dynamic_shapes,
            )
    except MovieError:
        raise
    except Exception as exc:  # the exporter's errors are long; the first line names the failing op
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise MovieError(f"ONNX export of {type(module).__name__} failed: {first}") from exc
    finally:
        quiet.setLevel(level)
    program.save(str(path))
    return path


def source_onnx(module: torch.nn.Module, inputs: tuple, options: dict, opset: int = DEFAULT_OPSET,
                dynamic_batch: bool = False) -> Path:
    """The component as ONNX, exported once per model, shapes, names, torch version and opset.

    The ONNX-based backends (onnx, hexagon, tensorrt, aihub) compile from the same export: it is kept
    in the artifact cache beside their own artifacts. Without a cache folder it goes to a temp folder.
    """
    from movie_core.backends import ArtifactCache, cache_key, describe_inputs, model_hash

    input_names = list(options.get("input_names") or [f"input_{i}" for i in range(len(inputs))])
    output_names = list(options.get("output_names") or ["output"])

    def export(folder: Path, reuse: bool) -> Path:
        path = folder / "model.onnx"
        if not reuse:
            export_onnx(module, inputs, path, input_names, output_names, opset=opset, dynamic_batch=dynamic_batch)
        return path

    if not options.get("artifact_dir"):
        import tempfile

        return export(Path(tempfile.mkdtemp(prefix="movie-onnx-")), False)
    import onnxscript

    toolchain = {"torch": torch.__version__, "onnxscript": onnxscript.__version__, "opset": check_opset(opset),
                 "names": [input_names, output_names], "dynamic_batch": dynamic_batch}
    key, record = cache_key("onnx-source", model_hash(module), describe_inputs(inputs), "as-exported", toolchain)
    _, folder = ArtifactCache(Path(options["artifact_dir"]).parent).prepare(key, record, export)
    return folder / "model.onnx"


def copy_onnx(source: Path, dest: Path) -> Path:
    """Copy an ONNX file and its external weights (if any) to dest (a .onnx path)."""
    import shutil

    shutil.copyfile(source, dest)
    for data in source.parent.glob(source.name + ".data"):
        shutil.copyfile(data, dest.with_name(dest.name + ".data"))
    return dest


class OrtCallable:
    """An onnxruntime session called like the module it was exported from: torch tensors in and out."""

    def __init__(self, session: Any, input_names: Sequence[str], output_names: Sequence[str]):
        self.session = session
        self.input_names = list(input_names)
        self.output_names = list(output_names)

    def __call__(self, *inputs: torch.Tensor):
        device = inputs[0].device
        feeds = {name: t.detach().cpu().numpy() for name, t in zip(self.input_names, inputs)}
        outs = self.session.run(self.output_names, feeds)
        tensors = [torch.from_numpy(np.ascontiguousarray(o)).to(device) for o in outs]
        return tensors[0] if len(tensors) == 1 else tuple(tensors)


def quiet_session_options(ort: Any) -> Any:
    """SessionOptions that log errors only (the EP's warnings are not the user's business)."""
    so = ort.SessionOptions()
    so.log_severity_level = 3
    return so
