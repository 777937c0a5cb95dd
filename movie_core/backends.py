"""Execution backends: the contract, a pipeline's exportable components, the artifact cache, and binding.

A backend (registered through `movie_register_backends`) is a class with

    available() -> (ok, reason)                         can it run here, and why (not)
    prepare(module, example_inputs, options) -> fn       fn(*inputs) computes what module(*inputs) does

and optionally `passthrough = True` (it runs torch modules as they are: nothing is routed),
`exports = True` (it writes deployable artifacts into `options["artifact_dir"]`, which this module
caches and `movie export` collects), `toolchain(options) -> dict` (the versions and target that
make an artifact stale), `precision(options, example_inputs) -> str`, `dynamic_batch(options) ->
bool` (one artifact serves every batch size), `runtime(options) -> dict` (what an app sets up to run
the exported artifacts: provider, options, model file; the export manifest's `runtime`) and `report() -> dict`
(how it ran, e.g. providers).

A pipeline is cut into separately prepared components: `text_encoder` and `unet` (the denoiser's
networks, `Denoiser.networks()`), `encoder` and `decoder` (plus `unet_replay` when frames replay
the anchor's self-attention keys and values). The denoiser computes each network's inputs on the
host (`Denoiser.graph_inputs`), so every graph is static.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import shutil
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import torch

from movie_core import crossframe
from movie_core.errors import MovieError, UsageError

CACHE_FORMAT = "movie-artifact/1"


class BackendUnavailableError(MovieError):
    """The chosen backend cannot run on this machine."""


# --- graphs: the components as modules with tensor-only signatures -------------------------


class EncodeGraph(torch.nn.Module):
    """Images in [-1, 1] -> latents (the autoencoder's encode)."""

    def __init__(self, autoencoder: Any):
        super().__init__()
        self.autoencoder = autoencoder

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        return self.autoencoder.encode(images)


class DecodeGraph(torch.nn.Module):
    """Latents -> images in [-1, 1] (the autoencoder's decode)."""

    def __init__(self, autoencoder: Any):
        super().__init__()
        self.autoencoder = autoencoder

    def forward(self, latents: torch.Tensor) -> torch.Tensor:
        return self.autoencoder.decode(latents)


class AnchoredNetwork(torch.nn.Module):
    """A denoiser's 'unet' network with anchor attention as graph inputs/outputs (through its KV hook).

    anchor="none":   the network's inputs -> noise
    anchor="record": the same inputs -> (noise, k_0, v_0, k_1, v_1, ...): each anchor layer's K/V
    anchor="replay": the same inputs + (k_0, v_0, ...) -> noise, every anchor layer attending to those K/V
    """

    def __init__(self, denoiser: Any, anchor: str = "none", network: Any = None, layers: list[str] | None = None):
        super().__init__()
        if anchor not in ("none", "record", "replay"):
            raise ValueError(f"anchor must be none, record or replay, got {anchor!r}")
        network = network or denoiser.networks()["unet"]  # or another network running the unet (fused_step)
        self.net = network.module
        self.input_names = tuple(network.inputs)
        self.output_names = tuple(network.outputs)  # one, or several (the clock's full graph adds r_out)
        self.output_name = self.output_names[0]
        self.anchor = anchor
        # the anchor layers the network runs: all of them, or those of a part (the clock's high-resolution path)
        self.layers = (list(denoiser.anchor_layers()) if layers is None else list(layers)) if anchor != "none" else []
        self._set_hook = denoiser.set_kv_hook  # a bound method, not a submodule: the hash covers the network only
        self._kv: dict[str, tuple[torch.Tensor, torch.Tensor]] = {}

    def extra_repr(self) -> str:
        return f"anchor={self.anchor}, layers={len(self.layers)}"

    def io_names(self) -> tuple[tuple[str, ...], tuple[str, ...]]:
        kv = tuple(f"anchor_{kind}_{i}" for i in range(len(self.layers)) for kind in ("k", "v"))
        out = self.output_names
        if self.anchor == "replay":
            return self.input_names + kv, out
        if self.anchor == "record":
            return self.input_names, out + kv
        return self.input_names, out

    @contextlib.contextmanager
    def active(self) -> Iterator[None]:
        """The network's own context, and this graph's KV hook on the anchor layers, for the duration."""
        with active(self.net):
            if self.anchor == "none":
                yield
                return
            previous = self._set_hook(self._hook)
            try:
                yield
            finally:
                self._set_hook(previous)

    def _hook(self, name: str, key: torch.Tensor, value: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        if self.anchor == "record":
            self._kv[name] = (key, value)
            return key, value
        return crossframe.expand_to_batch(*self._kv[name], key.shape[0])

    def forward(self, *inputs: torch.Tensor):
        n = len(self.input_names)
        if self.anchor == "replay":
            kv = inputs[n:]
            self._kv = {name: (kv[2 * i], kv[2 * i + 1]) for i, name in enumerate(self.layers)}
        else:
            self._kv = {}
        out = self.net(*inputs[:n])
        if self.anchor != "record":
            return out
        outs = tuple(out) if isinstance(out, (tuple, list)) else (out,)
        return (*outs, *[t for name in self.layers for t in self._kv[name]])


def active(module: Any):
    """The context a graph runs in (its own `active()` when it has one); a no-op for the others."""
    enter = getattr(module, "active", None)
    return enter() if callable(enter) else contextlib.nullcontext()


# --- keys and the artifact cache -----------------------------------------------------------


def model_hash(module: torch.nn.Module) -> str:
    """sha256 of a module's structure (its repr) and every parameter and buffer (name, dtype, shape, bytes)."""
    h = hashlib.sha256()
    h.update(type(module).__qualname__.encode())
    h.update(repr(module).encode())
    for name, tensor in sorted(module.state_dict(keep_vars=False).items()):
        t = tensor.detach()
        h.update(f"{name}|{t.dtype}|{tuple(t.shape)}".encode())
        if t.device.type != "meta":
            h.update(t.contiguous().cpu().view(torch.uint8).numpy().tobytes() if t.numel() else b"")
    return h.hexdigest()


def describe_inputs(inputs: tuple) -> list[dict[str, Any]]:
    """Shape and dtype of each example input."""
    return [{"shape": list(t.shape), "dtype": str(t.dtype).replace("torch.", "")} for t in inputs]


def cache_key(backend_name: str, model: str, inputs: list[dict[str, Any]], precision: str,
              toolchain: dict[str, Any]) -> tuple[str, dict[str, Any]]:
    """The key of an artifact: model hash, input shapes, precision and toolchain (versions and target)."""
    record = {"format": CACHE_FORMAT, "backend": backend_name, "model": model, "inputs": inputs,
              "precision": precision, "toolchain": toolchain}
    digest = hashlib.sha256(json.dumps(record, sort_keys=True).encode()).hexdigest()[:32]
    return f"{backend_name}-{digest}", record


def default_cache_dir() -> Path:
    """$MOVIE_CACHE_DIR, else $XDG_CACHE_HOME/movie/artifacts, else ~/.cache/movie/artifacts."""
    if os.environ.get("MOVIE_CACHE_DIR"):
        return Path(os.environ["MOVIE_CACHE_DIR"])
    base = Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache")
    return base / "movie" / "artifacts"


class ArtifactCache:
    """Folders of built artifacts, one per key; a folder is complete only once its artifact.json exists."""

    def __init__(self, root: str | Path | None = None):
        self.root = Path(root) if root else default_cache_dir()

    def path(self, key: str) -> Path:
        return self.root / key

    def lookup(self, key: str, record: dict[str, Any]) -> Path | None:
        """The folder for key if it is complete and was built for exactly this record."""
        folder = self.path(key)
        try:
            meta = json.loads((folder / "artifact.json").read_text())
        except (OSError, ValueError):
            return None
        return folder if meta.get("record") == record else None

    def prepare(self, key: str, record: dict[str, Any], build: Callable[[Path, bool], Any]) -> tuple[Any, Path]:
        """build(folder, reuse) on the cached folder, or on a temp folder renamed into place once it succeeds."""
        found = self.lookup(key, record)
        if found is not None:
            return build(found, True), found
        self.root.mkdir(parents=True, exist_ok=True)
        tmp = self.root / f".{key}.tmp-{os.getpid()}"
        shutil.rmtree(tmp, ignore_errors=True)
        tmp.mkdir()
        try:
            result = build(tmp, False)
            (tmp / "artifact.json").write_text(json.dumps({"key": key, "record": record}, indent=2) + "\n")
            final = self.path(key)
            if final.exists():  # incomplete or built for another record: replace it
                shutil.rmtree(final)
            tmp.replace(final)
        except BaseException:
            shutil.rmtree(tmp, ignore_errors=True)
            raise
        return result, final


# --- preparing components --------------------------------------------------------------------


class Prepared:
    """A component prepared by a backend for one set of input shapes: the callable and its record."""

    def __init__(self, fn: Callable, info: dict[str, Any]):
        self.fn = fn
        self.info = info


def prepare_component(backend: Any, name: str, module: torch.nn.Module, inputs: tuple, names: tuple, options: dict,
                      cache: ArtifactCache) -> Prepared:
    """Prepare one component for these inputs; artifacts of exporting backends go through the cache."""
    input_names, output_names = names
    opts = dict(options, name=name, input_names=input_names, output_names=output_names)
    described = describe_inputs(inputs)
    if dynamic_batch(backend, opts):
        for n, d in zip(input_names, described):
            if not n.startswith("anchor_"):  # the anchor's K/V keep their batch (its guidance branches)
                d["shape"][0] = "batch"
    info: dict[str, Any] = {"component": name, "inputs": dict(zip(input_names, described)),
                            "outputs": list(output_names)}
    with active(module), torch.no_grad():
        if not getattr(backend, "exports", False):
            return Prepared(backend.prepare(module, inputs, opts), info)
        precision = backend.precision(opts, inputs) if hasattr(backend, "precision") else described[0]["dtype"]
        toolchain = backend.toolchain(opts) if hasattr(backend, "toolchain") else {}
        key, record = cache_key(backend.name, model_hash(module), described, precision, toolchain)
        fn, folder = cache.prepare(key, record, lambda d, reuse: backend.prepare(
            module, inputs, dict(opts, artifact_dir=d, reuse=reuse)))
    info.update(key=key, artifact_dir=str(folder), precision=precision, toolchain=toolchain)
    return Prepared(fn, info)


def dynamic_batch(backend: Any, options: dict) -> bool:
    """Whether the backend prepares one artifact for any batch size (dim 0) with these options."""
    return bool(getattr(backend, "dynamic_batch", lambda options: False)(options))


class Runner:
    """Calls one component through a backend, preparing it on first use for each set of input shapes."""

    def __init__(self, backend: Any, name: str, module: torch.nn.Module, names: tuple, options: dict,
                 cache: ArtifactCache):
        self.backend, self.name, self.module, self.names = backend, name, module, names
        self.options, self.cache = options, cache
        self.prepared: dict[tuple, Prepared] = {}
        self.any_batch = dynamic_batch(backend, options)

    def __call__(self, *inputs: torch.Tensor):
        sig = tuple((tuple(t.shape)[1 if self.any_batch else 0:], t.dtype) for t in inputs)
        prepared = self.prepared.get(sig)
        if prepared is None:
            prepared = prepare_component(self.backend, self.name, self.module, inputs, self.names, self.options,
                                         self.cache)
            self.prepared[sig] = prepared
        with torch.no_grad():
            if getattr(self.backend, "exports", False):  # the artifact runs without the torch module
                out = prepared.fn(*inputs)
            else:
                with active(self.module):
                    out = prepared.fn(*inputs)
        if "output_shapes" not in prepared.info:  # what this artifact returned (an export's manifest says it)
            outs = out if isinstance(out, (tuple, list)) else (out,)
            prepared.info["output_shapes"] = {n: list(t.shape) for n, t in zip(self.names[1], outs)
                                              if isinstance(t, torch.Tensor)}
        return out


class Runtime:
    """The components of a pipeline running through a backend; the torch modules stay as the reference.

    Prepares 'text_encoder', 'encoder', 'unet' (and 'unet_replay' when the recipe has an anchor) and
    'decoder' on first use per input shape, and routes the denoiser's networks through them."""

    def __init__(self, pipe: Any, backend: Any, options: dict | None = None, cache: ArtifactCache | None = None):
        self.backend = backend
        self.options = dict(options or {})
        self.cache = cache or ArtifactCache()
        den = self.denoiser = pipe.denoiser
        text = den.networks()["text_encoder"]
        anchored = pipe.recipe.anchor != "none"
        graphs: dict[str, tuple[torch.nn.Module, tuple]] = {
            "text_encoder": (text.module, (tuple(text.inputs), tuple(text.outputs))),
            "encoder": (EncodeGraph(pipe.encoder), (("images",), ("latents",))),
            "decoder": (DecodeGraph(pipe.decoder), (("latents",), ("images",))),
        }
        unet = AnchoredNetwork(den, "record" if anchored else "none")
        graphs["unet"] = (unet, unet.io_names())
        if anchored:
            replay = AnchoredNetwork(den, "replay")
            graphs["unet_replay"] = (replay, replay.io_names())
        self.graphs = {name: g for name, (g, _) in graphs.items()}
        self.runners = {name: Runner(backend, name, g, names, self.options, self.cache)
                        for name, (g, names) in graphs.items()}
        self.anchor: crossframe.AnchorController | None = None
        den.set_runner("text_encoder", self.runners["text_encoder"])
        den.set_runner("unet", self.unet_runner(None))

    def unet_runner(self, anchor: crossframe.AnchorController | None) -> Callable[..., torch.Tensor]:
        """The 'unet' runner for one anchor state: record graph on the anchor, replay graph on the others."""
        def run(*inputs: torch.Tensor) -> torch.Tensor:
            saved, self.anchor = self.anchor, anchor
            try:
                return self.run_anchored("unet", *inputs)[0]  # (a clocked recipe's 'unet' also returns r_out)
            finally:
                self.anchor = saved

        return run

    @contextlib.contextmanager
    def anchored(self, anchor: crossframe.AnchorController | None) -> Iterator[None]:
        """Route the denoiser's 'unet' through the runner for this anchor state for the duration."""
        self.denoiser.set_runner("unet", self.unet_runner(anchor))
        self.anchor = anchor
        try:
            yield
        finally:
            self.anchor = None
            self.denoiser.set_runner("unet", self.unet_runner(None))

    def add_clock(self, split: Any, adaptor: torch.nn.Module) -> ClockGraphs:
        """Run a clocked recipe's 'unet' as the clock's split graphs (the full network returning r_out in place
        of 'unet' / 'unet_replay', and 'unet_adapt' / 'unet_adapt_replay'); the clock calls them."""
        return ClockGraphs(self, split, adaptor)

    def run_anchored(self, name: str, *inputs: torch.Tensor) -> tuple[torch.Tensor, ...]:
        """Run graph `name` for the current anchor state (record on the anchor, `name`_replay with the anchor's
        K/V on the others); returns its outputs without the K/V (stored in the anchor when recording)."""
        anchor = self.anchor
        graph = self.graphs[name]
        replay = f"{name}_replay"
        if replay in self.runners and anchor is not None and anchor.mode == "replay":
            replay_graph = self.graphs[replay]
            assert isinstance(replay_graph, AnchoredNetwork)
            out = self.runners[replay](*inputs, *anchor.recorded(replay_graph.layers))
            return tuple(out) if isinstance(out, (tuple, list)) else (out,)
        out = self.runners[name](*inputs)
        out = tuple(out) if isinstance(out, (tuple, list)) else (out,)
        n = len(graph.output_names) if isinstance(graph, AnchoredNetwork) else 1
        if anchor is not None and anchor.mode == "record" and isinstance(graph, AnchoredNetwork):
            kv = out[n:]
            for i, layer in enumerate(graph.layers):
                anchor.store[(anchor.step, layer)] = (kv[2 * i], kv[2 * i + 1])
        return out[:n]

    def artifacts(self) -> list[dict[str, Any]]:
        """What was prepared so far: one record per component and input shapes."""
        return [p.info for r in self.runners.values() for p in r.prepared.values()]

    def describe(self) -> dict[str, Any]:
        """What the backend reports about how it ran (e.g. onnxruntime's providers), and what it prepared."""
        report = getattr(self.backend, "report", None)
        info: dict[str, Any] = dict(report()) if callable(report) else {}
        info["prepared"] = sorted({p["component"] for p in self.artifacts()})
        return info


class ClockGraphs:
    """A clocked recipe's 'unet' on a routing backend, as two graphs (movie_core.clockwork):

    'unet':       the network's inputs -> (output, r_out): the whole network, also returning what its
                  low-resolution core returned (run on the clock's full steps / frames)
    'unet_adapt': the network's inputs + r_out_prev -> output: the high-resolution path with the adaptor in place
                  of the core, r_out_prev being the last full evaluation's r_out (run on the others)

    With an anchor each has its record form (it also returns its anchor layers' K/V) and its `_replay` form (it
    takes them); 'unet_adapt' only has the anchor layers of the high-resolution path, found by running it once."""

    def __init__(self, runtime: Runtime, split: Any, adaptor: torch.nn.Module) -> None:
        from movie_core.clockwork import ClockAdapt, ClockFull
        from movie_core.components import Network

        self.runtime = runtime
        den = runtime.denoiser
        net = den.networks()["unet"]
        self.anchored = "unet_replay" in runtime.graphs
        full = Network(ClockFull(split), tuple(net.inputs), (net.outputs[0], "r_out"))
        self.adapt_network = Network(ClockAdapt(split, adaptor), (*net.inputs, "r_out_prev"), (net.outputs[0],))
        self._add("unet", AnchoredNetwork(den, "record" if self.anchored else "none", full))
        if self.anchored:
            self._add("unet_replay", AnchoredNetwork(den, "replay", full))
        else:
            self._add("unet_adapt", AnchoredNetwork(den, "none", self.adapt_network))
        self.shapes: dict[str, list[int]] = {}

    def _add(self, name: str, graph: AnchoredNetwork) -> None:
        rt = self.runtime
        rt.graphs[name] = graph
        rt.runners[name] = Runner(rt.backend, name, graph, graph.io_names(), rt.options, rt.cache)

    def _adapt_layers(self, inputs: tuple[torch.Tensor, ...]) -> None:
        """The anchor layers the high-resolution path runs (those whose KV hook fires), then its two graphs."""
        den = self.runtime.denoiser
        fired: set[str] = set()

        def hook(name: str, key: torch.Tensor, value: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
            fired.add(name)
            return key, value

        previous = den.set_kv_hook(hook)
        try:
            with active(self.adapt_network.module), torch.no_grad():
                self.adapt_network.module(*(t[:1] for t in inputs))
        finally:
            den.set_kv_hook(previous)
        layers = [name for name in den.anchor_layers() if name in fired]
        if not layers:  # nothing of the anchor crosses the high-resolution path: one graph serves every frame
            self._add("unet_adapt", AnchoredNetwork(den, "none", self.adapt_network))
            return
        self._add("unet_adapt", AnchoredNetwork(den, "record", self.adapt_network, layers))
        self._add("unet_adapt_replay", AnchoredNetwork(den, "replay", self.adapt_network, layers))

    def full(self, *inputs: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        out, r_out = self.runtime.run_anchored("unet", *inputs)
        self.shapes["r_out"] = list(r_out.shape)
        return out, r_out

    def adapt(self, *inputs: torch.Tensor) -> torch.Tensor:
        if "unet_adapt" not in self.runtime.graphs:
            self._adapt_layers(inputs)
        return self.runtime.run_anchored("unet_adapt", *inputs)[0]


def frame_function(pipe: Any, prompt: Any, anchor: dict | None, steps: int) -> tuple[Callable | None, str]:
    """The pipeline backend's fused per-batch frame function for one video, if it offers one, else (None, why not).

    Optional backend method `frame_function(pipe, prompt, anchor, steps, options)`: returns a callable
    images (n, 3, H, W) in [-1, 1] -> edited images that does what the frame loop's encode, sampling and
    decode do, with the prompt and the anchor's K/V ({(step, layer): (k, v)}) fixed for the video; or a
    string saying why it does not apply (the loop then runs component by component).
    """
    runtime = pipe.runtime
    if getattr(pipe, "step_clock", None) is not None or getattr(pipe, "frame_clock", None) is not None:
        return None, "the clock runs its split graphs component by component"
    make = getattr(runtime.backend, "frame_function", None) if runtime is not None else None
    if make is None:
        return None, f"backend '{pipe.recipe.backend}' has no fused frame function"
    made = make(pipe, prompt, anchor, steps, runtime.options)
    return (None, made) if isinstance(made, str) else (made, "")


def get_backend(name: str) -> Any:
    """An instance of the named backend, or a one-line error when it cannot run here."""
    from movie_core.plugins import get_registry

    cls = get_registry().get("backend", name).load_factory()
    ok, reason = cls.available()
    if not ok:
        raise BackendUnavailableError(f"backend '{name}' is not available here: {reason}")
    return cls()


def resolve_options(name: str, options: dict | None = None) -> dict[str, Any]:
    """A backend's options with its config class's defaults filled in; unknown keys are an error naming them."""
    import attrs

    from movie_core.plugins import get_registry

    spec = get_registry().get("backend", name)
    if spec.config is None:
        if options:
            raise UsageError(f"backend '{name}' takes no options, got: {', '.join(sorted(options))}")
        return {}
    return attrs.asdict(spec.make_config(**(options or {})))


def bind(pipe: Any, options: dict | None = None, cache: ArtifactCache | None = None) -> Runtime | None:
    """Run the pipeline's components through its recipe's backend. None for a backend that declares
    `passthrough = True` (it runs the torch modules as they are, so nothing needs routing)."""
    name = pipe.recipe.backend
    backend = get_backend(name)
    options = resolve_options(name, options)
    if getattr(backend, "passthrough", False):
        return None
    if getattr(backend, "needs_float32", False) and pipe.recipe.dtype != "float32":
        raise UsageError(f"backend '{name}' takes float32 graphs and sets its own precision; use --dtype float32")
    return Runtime(pipe, backend, options, cache)
