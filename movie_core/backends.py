"""Execution backends: the contract, a pipeline's exportable components, the artifact cache, and binding.

A backend (registered through `movie_register_backends`) is a class with

    available() -> (ok, reason)                         can it run here, and why (not)
    prepare(module, example_inputs, options) -> fn       fn(*inputs) computes what module(*inputs) does

and optionally `exports = True` (it writes deployable artifacts into `options["artifact_dir"]`,
which this module caches and `movie export` collects), `toolchain(options) -> dict` (the versions
and target that make an artifact stale), `precision(options, example_inputs) -> str` and
`dynamic_batch(options) -> bool` (one artifact serves every batch size).

A pipeline is cut into separately prepared components: `text_encoder`, `encoder`, `unet` and
`decoder` (plus `unet_replay` when frames replay the anchor's self-attention keys and values).
The UNet graph takes the sinusoidal time and guidance features as inputs: they are computed on
the host (`Denoiser.unet_graph_inputs`), so the graph itself is static.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import shutil
from pathlib import Path
from typing import Any, Callable, Iterator

import torch

from movie_core import crossframe
from movie_core.errors import MovieError, UsageError

CACHE_FORMAT = "movie-artifact/1"


class BackendUnavailableError(MovieError):
    """The chosen backend cannot run on this machine."""


# --- graphs: the components as modules with tensor-only signatures -------------------------


class TextEncoderGraph(torch.nn.Module):
    """Token ids (1, 77) -> the text encoder's last hidden state."""

    def __init__(self, text_encoder: torch.nn.Module):
        super().__init__()
        self.text_encoder = text_encoder

    def forward(self, input_ids: torch.Tensor) -> torch.Tensor:
        return self.text_encoder(input_ids)[0]


class EncodeGraph(torch.nn.Module):
    """Images in [-1, 1] -> latents (the autoencoder's encode)."""

    def __init__(self, autoencoder: torch.nn.Module):
        super().__init__()
        self.autoencoder = autoencoder

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        return type(self.autoencoder).encode(self.autoencoder, images)


class DecodeGraph(torch.nn.Module):
    """Latents -> images in [-1, 1] (the autoencoder's decode)."""

    def __init__(self, autoencoder: torch.nn.Module):
        super().__init__()
        self.autoencoder = autoencoder

    def forward(self, latents: torch.Tensor) -> torch.Tensor:
        return type(self.autoencoder).decode(self.autoencoder, latents)


def _features_as_time_embedding(sample: torch.Tensor, timestep: torch.Tensor) -> torch.Tensor:
    # installed as the UNet's get_time_embed: the "timestep" argument already holds the host's sinusoids
    return timestep.to(sample.dtype)


class UNetGraph(torch.nn.Module):
    """One UNet pass on host-computed features; anchor attention as graph inputs/outputs.

    anchor="none":   (sample, time_features, text_emb[, guidance_features]) -> noise
    anchor="record": the same inputs -> (noise, k_0, v_0, k_1, v_1, ...): each self-attention's K/V
    anchor="replay": the same inputs + (k_0, v_0, ...) -> noise, self-attention reading the anchor's K/V
    """

    def __init__(self, unet: torch.nn.Module, embedded: bool, anchor: str = "none"):
        super().__init__()
        if anchor not in ("none", "record", "replay"):
            raise ValueError(f"anchor must be none, record or replay, got {anchor!r}")
        self.unet = unet
        self.embedded = embedded
        self.anchor = anchor
        self.layers = sorted(name for name in unet.attn_processors if name.endswith("attn1.processor"))
        self.controller = crossframe.AnchorController()
        self.controller.mode = {"none": "off", "record": "record", "replay": "replay"}[anchor]
        modules = dict(unet.named_modules())
        # (attention module, this graph's processor) per self-attention layer; plain tuples, not submodules
        self._attn1 = [(modules[name[: -len(".processor")]], crossframe.CrossFrameAttnProcessor(self.controller, name))
                       for name in self.layers]

    def extra_repr(self) -> str:
        return f"embedded={self.embedded}, anchor={self.anchor}"

    @contextlib.contextmanager
    def active(self) -> Iterator[None]:
        """Install this graph's attention processors and time-feature input on the UNet for the duration."""
        previous = [attn.processor for attn, _ in self._attn1]
        for attn, proc in self._attn1:  # set directly: set_attn_processor walks the whole UNet on every call
            attn.processor = proc
        self.unet.get_time_embed = _features_as_time_embedding
        try:
            yield
        finally:
            del self.unet.get_time_embed
            for (attn, _), proc in zip(self._attn1, previous):
                attn.processor = proc

    def forward(self, sample, time_features, text_emb, *rest):
        guidance = rest[0] if self.embedded else None
        kv = rest[1:] if self.embedded else rest
        ctrl = self.controller
        if self.anchor == "replay":
            ctrl.store = {(0, name): (kv[2 * i], kv[2 * i + 1]) for i, name in enumerate(self.layers)}
        elif self.anchor == "record":
            ctrl.store = {}
        out = self.unet(sample, time_features, encoder_hidden_states=text_emb, class_labels=guidance).sample
        if self.anchor != "record":
            return out
        return (out, *[t for name in self.layers for t in ctrl.store[(0, name)]])


def active(module: torch.nn.Module):
    """The context a graph runs in (UNetGraph installs its processors); a no-op for the others."""
    return module.active() if isinstance(module, UNetGraph) else contextlib.nullcontext()


def unet_io_names(graph: UNetGraph) -> tuple[tuple[str, ...], tuple[str, ...]]:
    """ONNX-style input and output names of a UNet graph."""
    inputs = ["sample", "time_features", "text_emb"] + (["guidance_features"] if graph.embedded else [])
    kv = [f"anchor_{kind}_{i}" for i in range(len(graph.layers)) for kind in ("k", "v")]
    if graph.anchor == "replay":
        return tuple(inputs + kv), ("noise",)
    if graph.anchor == "record":
        return tuple(inputs), tuple(["noise"] + kv)
    return tuple(inputs), ("noise",)


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
                return prepared.fn(*inputs)
            with active(self.module):
                return prepared.fn(*inputs)


def anchor_controller(unet: torch.nn.Module) -> crossframe.AnchorController | None:
    """The controller of the cross-frame processors installed on a UNet (by FrameEditor), if any."""
    for proc in unet.attn_processors.values():
        if isinstance(proc, crossframe.CrossFrameAttnProcessor):
            return proc.controller
    return None


class BoundPipeline:
    """A pipeline whose components run through a backend; the torch modules stay as the reference."""

    def __init__(self, pipe, backend: Any, options: dict | None = None, cache: ArtifactCache | None = None):
        self.pipe, self.backend = pipe, backend
        self.options = dict(options or {})
        self.cache = cache or ArtifactCache()
        den = pipe.denoiser
        embedded = den.guidance == "embedded"
        anchored = pipe.recipe.anchor != "none"
        unet = UNetGraph(den.unet, embedded, "record" if anchored else "none")
        graphs: dict[str, torch.nn.Module] = {
            "text_encoder": TextEncoderGraph(den.text_encoder),
            "encoder": EncodeGraph(pipe.encoder),
            "unet": unet,
            "decoder": DecodeGraph(pipe.decoder),
        }
        if anchored:
            graphs["unet_replay"] = UNetGraph(den.unet, embedded, "replay")
        self.graphs = graphs
        self.runners = {name: Runner(backend, name, g, self._names(name, g), self.options, self.cache)
                        for name, g in graphs.items()}

    @staticmethod
    def _names(name: str, graph: torch.nn.Module) -> tuple[tuple[str, ...], tuple[str, ...]]:
        if isinstance(graph, UNetGraph):
            return unet_io_names(graph)
        return {"text_encoder": (("input_ids",), ("text_emb",)), "encoder": (("images",), ("latents",)),
                "decoder": (("latents",), ("images",))}[name]

    def install(self) -> "BoundPipeline":
        """Route encode, decode, encode_prompt and the UNet pass of the pipeline through the runners."""
        pipe, den, runners = self.pipe, self.pipe.denoiser, self.runners
        pipe.encoder.encode = runners["encoder"]
        pipe.decoder.decode = runners["decoder"]

        def encode_prompt(prompts: list[str]) -> torch.Tensor:
            ids, _ = den.tokenize(prompts)
            return runners["text_encoder"](ids.to(next(den.text_encoder.parameters()).device))

        def unet_forward(x, t, image_latents, text_emb, s_I=None, s_T=None) -> torch.Tensor:
            inputs = den.unet_graph_inputs(x, t, image_latents, text_emb, s_I, s_T)
            ctrl = anchor_controller(den.unet)
            if "unet_replay" not in runners:
                return runners["unet"](*inputs)
            if ctrl is None or ctrl.mode in ("off", "record"):
                out, *kv = runners["unet"](*inputs)
                if ctrl is not None and ctrl.mode == "record":
                    layers = self.graphs["unet"].layers
                    for i, name in enumerate(layers):
                        ctrl.store[(ctrl.step, name)] = (kv[2 * i], kv[2 * i + 1])
                return out
            kv = [t for name in self.graphs["unet_replay"].layers for t in ctrl.store[(ctrl.step, name)]]
            return runners["unet_replay"](*inputs, *kv)

        den.encode_prompt = encode_prompt
        den.unet_forward = unet_forward
        pipe.bound = self  # frame_function() finds the backend and its options here
        return self

    def artifacts(self) -> list[dict[str, Any]]:
        """What was prepared so far: one record per component and input shapes."""
        return [p.info for r in self.runners.values() for p in r.prepared.values()]


def frame_function(pipe, text_emb: torch.Tensor, anchor: dict | None, steps: int) -> tuple[Callable | None, str]:
    """The bound backend's fused per-batch frame function for one video, if it offers one, else (None, why not).

    Optional backend method `frame_function(pipe, text_emb, anchor, steps, options)`: returns a callable
    images (n, 3, H, W) in [-1, 1] -> edited images that does what the frame loop's encode, sampling and
    decode do, with the prompt embedding and the anchor's K/V ({(step, layer): (k, v)}) fixed for the
    video; or a string saying why it does not apply (the loop then runs component by component).
    """
    bound = getattr(pipe, "bound", None)
    make = getattr(bound.backend, "frame_function", None) if bound is not None else None
    if make is None:
        return None, f"backend '{pipe.recipe.backend}' has no fused frame function"
    made = make(pipe, text_emb, anchor, steps, bound.options)
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


def bind(pipe, options: dict | None = None, cache: ArtifactCache | None = None) -> BoundPipeline | None:
    """Run the pipeline through its recipe's backend (None for eager, which runs the modules as they are)."""
    name = pipe.recipe.backend
    if name == "eager":
        return None
    backend = get_backend(name)
    options = resolve_options(name, options)
    if getattr(backend, "needs_float32", False) and pipe.recipe.dtype != "float32":
        raise UsageError(f"backend '{name}' takes float32 graphs and sets its own precision; use --dtype float32")
    return BoundPipeline(pipe, backend, options, cache).install()
