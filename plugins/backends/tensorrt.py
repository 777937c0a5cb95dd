"""Registers the `tensorrt` backend: ONNX -> TensorRT engines per component on an NVIDIA GPU."""

from __future__ import annotations

import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import Any

import attrs

from movie_core.hookspecs import hookimpl
from movie_core.registry import ComponentSpec


def _batch_range(instance: Any, attribute: attrs.Attribute, value: tuple | None) -> None:
    if value is None:
        return
    if len(value) != 3 or not all(isinstance(v, int) and v >= 1 for v in value) or not value[0] <= value[1] <= value[2]:
        raise ValueError(f"batch_profile must be [min, opt, max] with 1 <= min <= opt <= max, got {list(value)}")


@attrs.frozen(kw_only=True)
class TensorRTConfig:
    """Engine options: precision, and a min/opt/max batch profile (None = static shapes)."""

    precision: str = attrs.field(default="float16", validator=attrs.validators.in_(("float16", "float32")))
    batch_profile: tuple | None = attrs.field(default=None, converter=attrs.converters.optional(tuple),
                                              validator=_batch_range)
    workspace_gb: float = attrs.field(default=8.0, validator=attrs.validators.gt(0))


@hookimpl
def movie_register_backends(registry):
    registry.register(
        ComponentSpec(
            family="backend",
            name="tensorrt",
            summary="NVIDIA TensorRT engines per component (from ONNX), fp16, static or min/opt/max batch profiles",
            factory="movie_plugins.backends.tensorrt:TensorRTBackend",
            config=TensorRTConfig,
        )
    )


class TensorRTBackend:
    """Each component: ONNX -> a serialized TensorRT engine (engine.plan) -> run on CUDA tensors.

    Precision follows the graph: with --dtype float16 the ONNX graph is fp16 and the network is built
    strongly typed (TensorRT >= 10); precision="float16" on a float32 graph sets the builder's FP16 flag
    where the TensorRT version still has it. batch_profile=[min, opt, max] exports a dynamic batch axis.
    """

    name = "tensorrt"
    exports = True

    @staticmethod
    def available() -> tuple[bool, str]:
        try:
            import tensorrt as trt
        except ImportError:
            return False, "TensorRT is not installed (pip install 'movie[tensorrt]' on a machine with an NVIDIA GPU)"
        except Exception as exc:  # the wheel is there but its libraries do not load
            return False, f"TensorRT does not load here: {exc}"
        import torch

        if not torch.cuda.is_available():
            return False, f"TensorRT {trt.__version__} is installed but PyTorch sees no CUDA GPU"
        return True, f"TensorRT {trt.__version__} on {torch.cuda.get_device_name()}"

    def toolchain(self, options: dict) -> dict[str, Any]:
        import tensorrt as trt
        import torch

        return {"torch": torch.__version__, "tensorrt": trt.__version__, "gpu": torch.cuda.get_device_name(),
                "batch_profile": list(options["batch_profile"]) if options.get("batch_profile") else None,
                "opset": 18}

    def dynamic_batch(self, options: dict) -> bool:
        return bool(options.get("batch_profile"))

    def precision(self, options: dict, inputs: tuple) -> str:
        floats = [t.dtype for t in inputs if t.is_floating_point()]
        graph = str(floats[0]).replace("torch.", "") if floats else "float32"
        return "float16" if graph == "float16" else options.get("precision", "float16")

    def runtime(self, options: dict) -> dict[str, Any]:
        """What an app sets to run the export: the TensorRT runtime on engine.plan (no onnxruntime)."""
        profile = list(options["batch_profile"]) if options.get("batch_profile") else None
        return {
            "runtime": "tensorrt", "provider": None, "options": {}, "library": None, "library_options": {},
            "session_config": {}, "model": "engine.plan", "precision": options.get("precision", "float16"),
            "batch_profile": profile, "device": "cuda",
            "note": "deserialize engine.plan with the TensorRT version and GPU in `versions` "
                    "(trt.Runtime.deserialize_cuda_engine), set each input's shape "
                    + ("(batch within batch_profile [min, opt, max]) " if profile else "(static: as listed) ")
                    + "and bind inputs and outputs by name as float32 CUDA buffers (execute_async_v3)",
        }

    def _build(self, onnx_path: Path, plan: Path, inputs: tuple, names: list[str], options: dict) -> None:
        import tensorrt as trt
        import torch

        from movie_core.errors import MovieError

        logger = trt.Logger(trt.Logger.WARNING)
        builder = trt.Builder(logger)
        flags = 0
        strongly_typed = hasattr(trt.NetworkDefinitionCreationFlag, "STRONGLY_TYPED")
        graph_fp16 = any(t.dtype == torch.float16 for t in inputs)
        if strongly_typed and (graph_fp16 or not hasattr(trt.BuilderFlag, "FP16")):
            flags |= 1 << int(trt.NetworkDefinitionCreationFlag.STRONGLY_TYPED)
        network = builder.create_network(flags)
        parser = trt.OnnxParser(network, logger)
        if not parser.parse_from_file(str(onnx_path)):
            errors = "; ".join(str(parser.get_error(i).desc()) for i in range(parser.num_errors))
            raise MovieError(f"tensorrt: cannot parse {onnx_path.name}: {errors}")
        config = builder.create_builder_config()
        config.set_memory_pool_limit(trt.MemoryPoolType.WORKSPACE, int(options.get("workspace_gb", 8.0) * (1 << 30)))
        if not flags and options.get("precision", "float16") == "float16" and hasattr(trt.BuilderFlag, "FP16"):
            config.set_flag(trt.BuilderFlag.FP16)
        profile_range = options.get("batch_profile")
        if profile_range:
            profile = builder.create_optimization_profile()
            for name, t in zip(names, inputs):
                rest = tuple(t.shape[1:])
                if name.startswith("anchor_"):  # the anchor's K/V: fixed shape
                    profile.set_shape(name, tuple(t.shape), tuple(t.shape), tuple(t.shape))
                else:
                    profile.set_shape(name, *[(int(b), *rest) for b in profile_range])
            config.add_optimization_profile(profile)
        serialized = builder.build_serialized_network(network, config)
        if serialized is None:
            raise MovieError(f"tensorrt: building the engine for {onnx_path.name} failed (see TensorRT's log above)")
        plan.write_bytes(bytes(serialized))

    def prepare(self, module: Any, example_inputs: tuple = (), options: dict | None = None) -> Callable:
        import tensorrt as trt

        from movie_plugins.backends._onnx import source_onnx

        options = options or {}
        folder = Path(options.get("artifact_dir") or tempfile.mkdtemp(prefix="movie-tensorrt-"))
        input_names = list(options.get("input_names") or [f"input_{i}" for i in range(len(example_inputs))])
        output_names = list(options.get("output_names") or ["output"])
        plan = folder / "engine.plan"
        if not options.get("reuse"):
            source = source_onnx(module, example_inputs, dict(options, input_names=input_names,
                                                               output_names=output_names),
                                 dynamic_batch=bool(options.get("batch_profile")))
            self._build(source, plan, example_inputs, input_names, options)
        runtime = trt.Runtime(trt.Logger(trt.Logger.WARNING))
        engine = runtime.deserialize_cuda_engine(plan.read_bytes())
        return EngineCallable(engine, input_names, output_names)


_TORCH_DTYPE_NAMES = {"FLOAT": "float32", "HALF": "float16", "BF16": "bfloat16", "INT32": "int32", "INT64": "int64",
                      "BOOL": "bool", "INT8": "int8", "UINT8": "uint8"}


class EngineCallable:
    """A TensorRT engine called with CUDA torch tensors, on PyTorch's current stream."""

    def __init__(self, engine: Any, input_names: list[str], output_names: list[str]):
        self.engine = engine
        self.context = engine.create_execution_context()
        self.input_names, self.output_names = input_names, output_names

    def __call__(self, *inputs):
        import torch

        from movie_core.errors import MovieError

        if inputs[0].device.type != "cuda":
            raise MovieError("tensorrt runs on CUDA tensors: use --device cuda")
        ctx = self.context
        keep = []
        for name, t in zip(self.input_names, inputs):
            t = t.contiguous()
            keep.append(t)
            ctx.set_input_shape(name, tuple(t.shape))
            ctx.set_tensor_address(name, t.data_ptr())
        outs = []
        for name in self.output_names:
            shape = tuple(ctx.get_tensor_shape(name))
            dtype = getattr(torch, _TORCH_DTYPE_NAMES[self.engine.get_tensor_dtype(name).name])
            out = torch.empty(shape, dtype=dtype, device=inputs[0].device)
            ctx.set_tensor_address(name, out.data_ptr())
            outs.append(out)
        if not ctx.execute_async_v3(torch.cuda.current_stream().cuda_stream):
            raise MovieError("tensorrt: the engine failed to execute")
        return outs[0] if len(outs) == 1 else tuple(outs)
