"""Registers the `cuda-graphs` backend: static-shape CUDA graphs, and one fused graph per frame batch.

Two levels:

* per component (the backend contract, any recipe): each component is captured as a CUDA graph for
  its input shapes and replayed; inputs are copied into the graph's static buffers, outputs cloned.
  The text encoder runs eagerly (once per video).
* per frame batch (`frame_function`, the 1-step recipes with embedded guidance): encode, the UNet
  pass with the prompt embedding, the anchor's self-attention K/V, the time and guidance features
  and the initial noise held as per-video constants, the scheduler's one step (an affine map,
  measured on the real scheduler), and decode are one CUDA graph. A batch is one host-to-device
  copy, one replay and one device-side copy of the result: no host synchronisation inside it.
  fp16/bf16 as the recipe says, channels_last on the convolutional modules, SDPA attention.

Optionally the fused function is built with torch.compile (inductor, without its own CUDA graphs)
before capture: `-O compile=default` or `-O compile=max-autotune-no-cudagraphs`.
"""

from __future__ import annotations

import contextlib
import time
from collections.abc import Callable
from typing import Any

import attrs

from movie_core.hookspecs import hookimpl
from movie_core.registry import ComponentSpec

COMPILE_MODES = ("none", "default", "max-autotune-no-cudagraphs")


@attrs.frozen(kw_only=True)
class CudaGraphsConfig:
    """channels_last: None = on for CUDA; fuse: one graph per frame batch where the recipe allows it;
    compile: build the fused function with torch.compile (inductor mode) before capturing it."""

    channels_last: bool | None = None
    fuse: bool = True
    compile: str = attrs.field(default="none", validator=attrs.validators.in_(COMPILE_MODES))
    warmup: int = attrs.field(default=2, validator=attrs.validators.ge(1))


@hookimpl
def movie_register_backends(registry):
    registry.register(
        ComponentSpec(
            family="backend",
            name="cuda-graphs",
            summary="CUDA graphs at static shapes: one replay per frame batch for the 1-step recipe (NVIDIA GPU)",
            factory="movie_plugins.backends.cuda_graphs:CudaGraphsBackend",
            config=CudaGraphsConfig,
            # a recipe that names no backend runs through this one on a CUDA device (when it is available)
            extra={"default_for_devices": ["cuda"]},
        )
    )


class StaticGraph:
    """fn(*inputs) on static input buffers: captured once as a CUDA graph and replayed.

    With capture=False fn runs eagerly on the same buffers (the CPU stand-in used by the tests): the
    copy-in, the shape checks and the output handling are the same code either way.
    """

    def __init__(self, fn: Callable, example_inputs: tuple, *, capture: bool, warmup: int = 2,
                 context: Callable[[], Any] = contextlib.nullcontext):
        import torch

        self.fn, self.capture, self.context = fn, capture, context
        self.inputs = tuple(t.detach().clone() for t in example_inputs)
        self.graph = None
        self.outputs: Any = None
        self.capture_s = 0.0
        if not capture:
            return
        start = time.perf_counter()
        side = torch.cuda.Stream()
        side.wait_stream(torch.cuda.current_stream())
        with torch.cuda.stream(side), context(), torch.no_grad():
            for _ in range(warmup):  # first calls: cuDNN algorithm choice, lazy init, compilation
                fn(*self.inputs)
        torch.cuda.current_stream().wait_stream(side)
        torch.cuda.synchronize()
        graph = torch.cuda.CUDAGraph()
        with context(), torch.no_grad(), torch.cuda.graph(graph):
            self.outputs = fn(*self.inputs)
        torch.cuda.synchronize()
        self.graph = graph
        self.capture_s = time.perf_counter() - start

    def signature(self) -> tuple:
        return tuple((tuple(t.shape), t.dtype) for t in self.inputs)

    def __call__(self, *inputs):
        if len(inputs) != len(self.inputs):
            raise ValueError(f"static graph takes {len(self.inputs)} inputs, got {len(inputs)}")
        for i, (dst, src) in enumerate(zip(self.inputs, inputs)):
            if dst.shape != src.shape or dst.dtype != src.dtype:
                raise ValueError(f"static graph input {i} is {tuple(dst.shape)} {dst.dtype}, "
                                 f"got {tuple(src.shape)} {src.dtype}")
            if dst.data_ptr() != src.data_ptr():
                dst.copy_(src, non_blocking=True)
        if self.graph is not None:
            self.graph.replay()
            return self.outputs
        import torch

        with self.context(), torch.no_grad():
            return self.fn(*self.inputs)


def _clone(out):
    return tuple(t.clone() for t in out) if isinstance(out, (tuple, list)) else out.clone()


class CudaGraphsBackend:
    """Per-component CUDA graphs (prepare) and the fused per-batch frame graph (frame_function)."""

    name = "cuda-graphs"

    @staticmethod
    def available() -> tuple[bool, str]:
        import torch

        if not torch.cuda.is_available():
            build = f"CUDA {torch.version.cuda}" if torch.version.cuda else "a CPU-only build"
            return False, f"CUDA graphs need an NVIDIA GPU; PyTorch {torch.__version__} ({build}) sees none"
        return True, f"CUDA graphs on {torch.cuda.get_device_name()}, PyTorch {torch.__version__}"

    def prepare(self, module: Any, example_inputs: tuple = (), options: dict | None = None) -> Callable:
        options = options or {}
        cuda = bool(example_inputs) and example_inputs[0].device.type == "cuda"
        if options.get("name") == "text_encoder" or not cuda:
            return module  # once per video: not worth a graph (and tokenizer-side masks may sync)
        graph = StaticGraph(module, example_inputs, capture=options.get("capture", True),
                            warmup=options.get("warmup", 2))

        def run(*inputs):
            return _clone(graph(*inputs))  # the next replay overwrites the static outputs

        run.graph = graph  # type: ignore[attr-defined]
        return run

    def frame_function(self, pipe, prompt, anchor: dict | None, steps: int,
                       options: dict | None = None) -> FusedFrames | str:
        """The fused frame-batch callable for this video, or a one-line reason why it does not apply."""
        options = options or {}
        if not options.get("fuse", True):
            return "fuse=false"
        den = pipe.denoiser
        if steps != 1:
            return f"the fused graph is for 1-step recipes ({steps} steps here)"
        if den.guidance != "embedded":
            return "the fused graph is for embedded guidance (one UNet pass per step)"
        if anchor is not None and any(step != 0 for step, _ in anchor):
            return "anchor K/V recorded for more than one step"
        if not callable(getattr(den, "make_scheduler", None)):  # optional: the one step is measured on it
            return "the denoiser exposes no make_scheduler() to measure its one step on"
        return FusedFrames(pipe, prompt.text_emb, anchor, options)


class FusedFrames:
    """images (n, 3, H, W) in [-1, 1] -> edited images: one graph replay per batch (padded to a captured size)."""

    def __init__(self, pipe, text_emb, anchor: dict | None, options: dict):
        import torch

        from movie_core.backends import AnchoredNetwork, DecodeGraph, EncodeGraph

        den, r = pipe.denoiser, pipe.recipe
        self.pipe, self.den = pipe, den
        self.device = text_emb.device
        self.dtype = pipe.dtype
        cuda = self.device.type == "cuda"
        self.capture = options.get("capture", cuda)
        self.warmup = options.get("warmup", 2)
        self.channels_last = cuda if options.get("channels_last") is None else bool(options["channels_last"])
        self.compile = options.get("compile") or "none"
        self.encode = EncodeGraph(pipe.encoder)
        self.decode = DecodeGraph(pipe.decoder)
        self.unet = AnchoredNetwork(den, "replay" if anchor else "none")
        if self.channels_last:
            for m in (self.encode, self.decode, self.unet):
                m.to(memory_format=torch.channels_last)
        self.kv = tuple(t for name in self.unet.layers for t in anchor[(0, name)]) if anchor else ()
        self.text_emb = text_emb
        self.s_I = torch.tensor(float(r.image_guidance), dtype=torch.float32, device=self.device)
        self.s_T = torch.tensor(float(r.text_guidance), dtype=torch.float32, device=self.device)
        self.seed = r.seed
        self.noise: dict[tuple, tuple] = {}  # latent (h, w) -> (model input, a, b·latents)
        self.graphs: dict[tuple, StaticGraph] = {}
        self.build_s: dict[str, float] = {}
        self.error = ""
        self._fn = self._frame
        if self.compile != "none":
            self._fn = torch.compile(self._frame, mode=self.compile, dynamic=False, fullgraph=False)

    # --- per-video constants --------------------------------------------------------------------

    def _constants(self, h: int, w: int) -> tuple:
        """The initial noise (as every frame's generator draws it), the step's time, and the one step as a·out + c."""
        import torch
        from diffusers.utils.torch_utils import randn_tensor

        key = (h, w)
        if key in self.noise:
            return self.noise[key]
        g = torch.Generator(device=self.device).manual_seed(self.seed)
        noise = randn_tensor((1, 4, h, w), generator=[g], device=self.device, dtype=self.dtype)
        scheduler = self.den.make_scheduler()
        scheduler.set_timesteps(1, device=self.device)
        t = scheduler.timesteps[0]
        latents = noise * scheduler.init_noise_sigma
        model_in = scheduler.scale_model_input(latents, t)

        def step(out):
            s = self.den.make_scheduler()
            s.set_timesteps(1, device=self.device)
            return s.step(out, t, latents).prev_sample

        c = step(torch.zeros_like(latents))
        a = step(torch.ones_like(latents)) - c
        probe = torch.randn(latents.shape, generator=torch.Generator(device=self.device).manual_seed(1),
                            device=self.device, dtype=self.dtype)
        err = (step(probe) - (a * probe + c)).abs().max().item()
        scale = max(probe.abs().max().item() * a.abs().max().item() + c.abs().max().item(), 1e-6)
        if not err <= 1e-2 * scale:
            raise RuntimeError(f"the scheduler's one step is not affine in the model output (error {err:.3g})")
        self.noise[key] = (model_in, t, a, c)
        return self.noise[key]

    # --- the captured function ------------------------------------------------------------------

    def _frame(self, x, model_in, t, a, c, *kv):
        n = x.shape[0]
        latents = self.encode(x)
        inputs = self.den.graph_inputs(model_in.expand(n, -1, -1, -1), t, latents,
                                            self.text_emb.expand(n, -1, -1), self.s_I, self.s_T)
        if self.channels_last:
            inputs[0] = inputs[0].contiguous(memory_format=_channels_last())
        out = self.unet(*inputs, *kv)
        return self.decode(a * out + c)

    def _graph(self, x) -> StaticGraph:
        n, _, H, W = x.shape
        fitting = [k for k in self.graphs if k[1:] == (H, W) and k[0] >= n]
        if fitting:
            return self.graphs[min(fitting)]
        model_in, t, a, c = self._constants(H // 8, W // 8)
        start = time.perf_counter()
        consts = (model_in, t, a, c, *self.kv)

        def fn(frames):
            return self._fn(frames, *consts)

        graph = StaticGraph(fn, (self._layout(x),), capture=self.capture, warmup=self.warmup,
                            context=self.unet.active)
        self.graphs[(n, H, W)] = graph
        self.build_s[f"{n}x{H}x{W}"] = time.perf_counter() - start
        return graph

    def _layout(self, x):
        return x.contiguous(memory_format=_channels_last()) if self.channels_last else x.contiguous()

    def __call__(self, x):
        import torch

        n = x.shape[0]
        x = x.to(device=self.device, dtype=self.dtype)
        try:
            graph = self._graph(x)
        except Exception as exc:  # building or capturing failed: the caller falls back to the component path
            self.error = f"fused frame graph failed to build: {type(exc).__name__}: {exc}".strip()[:500]
            return None
        size = graph.inputs[0].shape[0]
        if size > n:  # the last, short batch: pad with its last frame rather than capture another graph
            x = torch.cat([x, x[-1:].expand(size - n, -1, -1, -1)])
        return graph(self._layout(x))[:n].clone()


def _channels_last():
    import torch

    return torch.channels_last
