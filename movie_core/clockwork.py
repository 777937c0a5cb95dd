"""Clockwork Diffusion (Habibian et al., CVPR 2024) as recipe options: the step clock.

The denoiser's 'unet' network, cut by its `network_split()` (DenoiserContract) into a high-resolution
head and tail around a low-resolution core, runs whole on the clock's full steps; on the others only the
head, the adaptor and the tail run, the adaptor standing in for the core from the current step's r_in
and the last full step's r_out. Recipe options: `clock` N (full on steps 0, N, 2N, ...; 1 is off),
`clock_schedule` (the full steps, listed), `adaptor` (`identity`: reuse the last full r_out as it is,
the training-free baseline of the paper's official code).

The clock is the 'unet' network's runner (`set_runner`) while a batch is sampled, and follows the steps
through the sampler's `on_step` callback. Every pass of a step gets its own r_out: with 3-pass guidance
in one batch each branch reuses its own branch's features.

The frame clock (`frame_clock` N, beyond the paper) is the same cut across the frames of a video: frames 0, N,
2N, ... (and the anchor frame) run the whole network; the others run the head, the adaptor fed with the last full
frame's r_out at the same step and pass, and the tail. Only that last r_out is kept (streaming, constant memory).

A trained adaptor (`ClockworkAdaptor`, paper Sec. 4: no attention; strided conv down, the pooled prompt projected,
2 ResNet blocks on the time embedding, transposed conv up, a residual from r_out_prev) lives in a model folder's
`adaptor/` (adaptor.safetensors + adaptor.json: its shapes and the clock kind, clock, sampler and steps it was
trained for); `adaptor = "trained"` reads the recipe's model folder, `adaptor = "DIR"` another folder.
"""

from __future__ import annotations

import contextlib
import json
import math
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import torch

from movie_core.errors import UsageError
from movie_core.recipe import FRAME_BLENDS


def full_steps(steps: int, clock: int = 1, schedule: tuple[int, ...] | None = None) -> list[bool]:
    """For each of `steps` steps, whether it runs the full network (step 0 always does)."""
    if schedule is not None:
        chosen = set(schedule) | {0}
        return [i in chosen for i in range(steps)]
    return [i % clock == 0 for i in range(steps)]


def check_schedule(recipe: Any, steps: int) -> list[bool]:
    """The recipe's full steps over `steps` steps; a schedule naming a step the sampler never reaches is an error."""
    if recipe.clock_schedule is not None and recipe.clock_schedule[-1] >= steps:
        raise UsageError(f"clock_schedule names step {recipe.clock_schedule[-1]}, but the recipe samples {steps} "
                         f"steps (0 to {steps - 1})")
    return full_steps(steps, recipe.clock, recipe.clock_schedule)


class IdentityAdaptor(torch.nn.Module):
    """The training-free adaptor: the last full step's r_out, unchanged (no FLOPs)."""

    def forward(self, r_in: torch.Tensor, r_out_prev: torch.Tensor, *context: torch.Tensor) -> torch.Tensor:
        return r_out_prev


ADAPTOR_DIR = "adaptor"
ADAPTOR_WEIGHTS = "adaptor.safetensors"
ADAPTOR_CONFIG = "adaptor.json"


# The adaptor's default hidden width, as a multiple of the channels entering the core (r_in), rounded to a multiple of
# 8. Sized to the paper's adaptor (about 14M parameters at SD size, Sec. 4): with the SD-1.5 split (r_in 320 channels,
# r_out 640, time embedding 1280, text 768) the adaptor has 36 h^2 + 19667 h + 640 parameters at hidden width h
# (2 ResNet blocks of two 3x3 convs: 36 h^2; the 3x3 stride-2 down conv from r_out: 5761 h; the 4x4 transposed up
# conv to r_out: 10240 h; the r_in and text projections, time linears and norms: the rest), which is 14.0M at
# h = 408, i.e. 1.275 x 320; 1.3 x 320 = 416 gives 14.4M (and 320, the old default, 10.0M).
HIDDEN_WIDTH = 1.3


def default_hidden(in_channels: int, width: float = HIDDEN_WIDTH) -> int:
    """The adaptor's hidden width for a core entered by `in_channels` channels: width x in_channels, to a multiple of
    8 (at least 8)."""
    return max(8, int(round(width * in_channels / 8)) * 8)


def _groups(channels: int) -> int:
    """GroupNorm groups: up to 32 that divide the channels."""
    return math.gcd(channels, 32)


class AdaptorResBlock(torch.nn.Module):
    """A ResNet block conditioned on the time embedding (GroupNorm, SiLU, 3x3 conv; the embedding added between)."""

    def __init__(self, channels: int, emb_dim: int) -> None:
        super().__init__()
        self.norm1 = torch.nn.GroupNorm(_groups(channels), channels)
        self.conv1 = torch.nn.Conv2d(channels, channels, 3, padding=1)
        self.emb = torch.nn.Linear(emb_dim, channels)
        self.norm2 = torch.nn.GroupNorm(_groups(channels), channels)
        self.conv2 = torch.nn.Conv2d(channels, channels, 3, padding=1)

    def forward(self, h: torch.Tensor, emb: torch.Tensor) -> torch.Tensor:
        x = self.conv1(torch.nn.functional.silu(self.norm1(h)))
        x = x + self.emb(torch.nn.functional.silu(emb))[:, :, None, None]
        x = self.conv2(torch.nn.functional.silu(self.norm2(x)))
        return h + x


class ClockworkAdaptor(torch.nn.Module):
    """The paper's lightweight adaptor (Sec. 4), sized from the split's tensors.

    (r_in, r_out_prev, emb, text_emb, *rest) -> r_out_prev + up(res(res(down(r_out_prev) + proj(r_in) +
    text(mean over tokens of text_emb)), emb), emb)): r_in (B, C_in, h, w) enters the core, r_out_prev (B, C_out,
    H, W) the last full evaluation's core output, emb (B, E) the time (and guidance) embedding, text_emb (B, L, D).
    The up convolution starts at zero, so an untrained adaptor is exactly the identity adaptor (but with `use_r_out`
    false, the ablation that never sees r_out_prev: it starts at zero). `hidden` (the width of
    the ResNet blocks; recorded in adaptor.json, `-O hidden=N` of the clockwork distiller) defaults to
    `default_hidden(in_channels)`: 416 and 14.4M parameters at SD size, the paper's ~14M."""

    def __init__(self, in_channels: int, out_channels: int, emb_dim: int, text_dim: int,
                 hidden: int | None = None, use_r_out: bool = True) -> None:
        super().__init__()
        hidden = hidden or default_hidden(in_channels)
        self.config = {"in_channels": in_channels, "out_channels": out_channels, "emb_dim": emb_dim,
                       "text_dim": text_dim, "hidden": hidden, "use_r_out": use_r_out}
        # use_r_out False: the paper's ablation (Clockwork Table 3: r_in and time only, FID 40.7 against 23.2): no
        # down path from r_out_prev and no residual to it; r_out_prev gives the output its shape only
        self.down = torch.nn.Conv2d(out_channels, hidden, 3, stride=2, padding=1) if use_r_out else None
        self.proj_in = torch.nn.Conv2d(in_channels, hidden, 1)
        self.text = torch.nn.Linear(text_dim, hidden)
        self.blocks = torch.nn.ModuleList([AdaptorResBlock(hidden, emb_dim) for _ in range(2)])
        self.norm_out = torch.nn.GroupNorm(_groups(hidden), hidden)
        self.up = torch.nn.ConvTranspose2d(hidden, out_channels, 4, stride=2, padding=1)
        torch.nn.init.zeros_(self.up.weight)
        torch.nn.init.zeros_(self.up.bias)  # type: ignore[arg-type]

    @classmethod
    def for_tensors(cls, r_in: torch.Tensor, r_out: torch.Tensor, emb: torch.Tensor, text_emb: torch.Tensor,
                    hidden: int | None = None, use_r_out: bool = True) -> ClockworkAdaptor:
        """An (untrained) adaptor for a split whose tensors have these shapes, on their device and dtype."""
        adaptor = cls(r_in.shape[1], r_out.shape[1], emb.shape[-1], text_emb.shape[-1], hidden, use_r_out)
        return adaptor.to(device=r_in.device, dtype=r_in.dtype)

    def forward(self, r_in: torch.Tensor, r_out_prev: torch.Tensor, emb: torch.Tensor, text_emb: torch.Tensor,
                *rest: torch.Tensor) -> torch.Tensor:
        h = self.proj_in(r_in) + self.text(text_emb.mean(dim=1))[:, :, None, None]
        if self.down is not None:
            d = self.down(r_out_prev)
            if d.shape[-2:] != r_in.shape[-2:]:
                d = torch.nn.functional.interpolate(d, size=r_in.shape[-2:], mode="nearest")
            h = d + h
        for block in self.blocks:
            h = block(h, emb)
        h = self.up(torch.nn.functional.silu(self.norm_out(h)), output_size=list(r_out_prev.shape[-2:]))
        return r_out_prev + h if self.down is not None else h


def save_adaptor(adaptor: ClockworkAdaptor, folder: str | Path, trained_for: dict[str, Any]) -> Path:
    """Write adaptor/ into a model folder: weights (safetensors) and adaptor.json (shapes + what it was trained for)."""
    from safetensors.torch import save_file

    out = Path(folder) / ADAPTOR_DIR
    out.mkdir(parents=True, exist_ok=True)
    state = {k: v.detach().to("cpu", torch.float32).contiguous() for k, v in adaptor.state_dict().items()}
    save_file(state, str(out / ADAPTOR_WEIGHTS))
    (out / ADAPTOR_CONFIG).write_text(json.dumps({"format": "movie-clockwork-adaptor/1", **adaptor.config,
                                                   "trained_for": trained_for}, indent=2) + "\n")
    return out


def adaptor_folder(name: str, model: Path | None) -> Path:
    """The adaptor/ folder a recipe's `adaptor` names: `trained` in the model folder, else the given path."""
    if name == "trained":
        if model is None:
            raise UsageError("adaptor 'trained' reads the model folder's adaptor/, but the recipe runs without one "
                             "(pass --model DIR, or --adaptor PATH to an adaptor folder)")
        base = Path(model)
    else:
        base = Path(name).expanduser()
    folder = base / ADAPTOR_DIR if (base / ADAPTOR_DIR / ADAPTOR_CONFIG).is_file() else base
    if not (folder / ADAPTOR_CONFIG).is_file() or not (folder / ADAPTOR_WEIGHTS).is_file():
        raise UsageError(f"no trained adaptor in {base}: it needs {ADAPTOR_DIR}/{ADAPTOR_CONFIG} and "
                         f"{ADAPTOR_DIR}/{ADAPTOR_WEIGHTS} (train one with `movie distill clockwork`)")
    return folder


def read_adaptor_config(folder: Path) -> dict[str, Any]:
    try:
        config: dict[str, Any] = json.loads((folder / ADAPTOR_CONFIG).read_text())
        for key in ("in_channels", "out_channels", "emb_dim", "text_dim", "hidden", "trained_for"):
            config[key]  # noqa: B018 - present, or the folder is not an adaptor
    except (OSError, ValueError, KeyError) as exc:
        raise UsageError(f"{folder / ADAPTOR_CONFIG}: not an adaptor config ({type(exc).__name__}: {exc})") from None
    return config


def load_adaptor(folder: Path, device: Any = "cpu", dtype: torch.dtype = torch.float32) -> ClockworkAdaptor:
    """A trained adaptor from its folder (adaptor.json + adaptor.safetensors)."""
    from safetensors.torch import load_file

    c = read_adaptor_config(folder)
    adaptor = ClockworkAdaptor(c["in_channels"], c["out_channels"], c["emb_dim"], c["text_dim"], c["hidden"],
                               bool(c.get("use_r_out", True)))
    try:
        adaptor.load_state_dict(load_file(str(folder / ADAPTOR_WEIGHTS)))
    except (OSError, RuntimeError) as exc:
        reason = " ".join(str(exc).split())[:200]
        raise UsageError(f"{folder / ADAPTOR_WEIGHTS} does not fit its adaptor.json: {reason}") from None
    adaptor.trained_for = dict(c["trained_for"])  # type: ignore[assignment]
    return adaptor.to(device=device, dtype=dtype).eval().requires_grad_(False)


def describe_training(trained_for: dict[str, Any]) -> str:
    kind = trained_for.get("kind", "step")
    blend = f", frame_blend {trained_for.get('blend', 'previous')}" if kind == "frame" else ""
    return (f"the {kind} clock {trained_for.get('clock')} with the {trained_for.get('sampler')} sampler at "
            f"{trained_for.get('steps')} step(s){blend}")


def check_trained_for(trained_for: dict[str, Any], *, kind: str, sampler: str | None, steps: int,
                      where: Path, blend: str | None = None) -> None:
    """One line when a recipe runs an adaptor with another clock kind, sampler or step count than it was trained for
    (a frame adaptor: or another frame_blend; one recorded before blends existed was trained on 'previous')."""
    asked = {"kind": kind, "sampler": sampler, "steps": steps}
    wrong = [k for k, v in asked.items() if trained_for.get(k) is not None and trained_for.get(k) != v]
    if kind == "frame" and blend is not None and trained_for.get("kind") == "frame":
        wrong += ["blend"] if trained_for.get("blend", "previous") != blend else []
    if wrong:
        runs = f", frame_blend {blend}" if kind == "frame" and blend is not None else ""
        raise UsageError(f"adaptor {where} was trained for {describe_training(trained_for)}; this recipe runs the "
                         f"{kind} clock with the {sampler} sampler at {steps} step(s){runs}")


def make_adaptor(name: str, shapes: tuple[torch.Tensor, ...] | None = None, model: Path | None = None,
                 device: Any = "cpu", dtype: torch.dtype = torch.float32) -> torch.nn.Module:
    """The recipe's adaptor: identity, or a trained one (from the model folder / a path). With `shapes` (r_in, r_out,
    emb, text_emb) and no folder to read (FLOPs on the meta device), an untrained adaptor of the same size."""
    if name == "identity":
        return IdentityAdaptor()
    if model is None and name == "trained" and shapes is not None:
        return ClockworkAdaptor.for_tensors(shapes[0], shapes[1], shapes[2], shapes[3])
    folder = adaptor_folder(name, model)
    if shapes is not None and shapes[0].device.type == "meta":
        c = read_adaptor_config(folder)
        # FLOPs count the recipe's network built at random on the meta device, whose embedding may be wider or
        # narrower than the folder's (a guidance-embedded UNet taking the scales per ResNet or through the time
        # embedding): the adaptor is counted at its saved width, reading this network's embedding
        return ClockworkAdaptor(c["in_channels"], c["out_channels"], shapes[2].shape[-1], c["text_dim"], c["hidden"],
                                bool(c.get("use_r_out", True))).to(device="meta")
    return load_adaptor(folder, device, dtype)


def network_split(denoiser: Any, name: str) -> Any:
    """The denoiser's NetworkSplit, or one line saying it cannot run a clock."""
    split_fn = getattr(denoiser, "network_split", None)  # optional in the contract
    split = split_fn() if callable(split_fn) else None
    if split is None:
        raise UsageError(f"denoiser '{name}' cannot run with a clock: it does not expose a network split "
                         "(DenoiserContract.network_split)")
    return split


def _enter(stack: contextlib.ExitStack, *modules: Any) -> None:
    for module in modules:
        enter = getattr(module, "active", None)
        if callable(enter):
            stack.enter_context(enter())


class ClockFull(torch.nn.Module):
    """The whole network, also returning r_out: (*network inputs) -> (output, r_out). A routing backend's 'unet'
    graph on the clock's full steps/frames; the r_out it returns feeds the adaptor graph on the others."""

    def __init__(self, split: Any) -> None:
        super().__init__()
        self.head, self.core, self.tail = split.head, split.core, split.tail

    @contextlib.contextmanager
    def active(self) -> Iterator[None]:
        with contextlib.ExitStack() as stack:
            _enter(stack, self.head, self.core, self.tail)
            yield

    def forward(self, *inputs: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        r_in, *context = self.head(*inputs)
        r_out = self.core(r_in, *context)
        return self.tail(r_out, *context), r_out


class ClockAdapt(torch.nn.Module):
    """The high-resolution path and the adaptor: (*network inputs, r_out_prev) -> output, where r_in comes from the
    inputs through the head and r_out_prev is the last full evaluation's r_out. A routing backend's 'unet_adapt'
    graph."""

    def __init__(self, split: Any, adaptor: torch.nn.Module) -> None:
        super().__init__()
        self.head, self.tail, self.adaptor = split.head, split.tail, adaptor

    @contextlib.contextmanager
    def active(self) -> Iterator[None]:
        with contextlib.ExitStack() as stack:
            _enter(stack, self.head, self.tail)
            yield

    def forward(self, *inputs: torch.Tensor) -> torch.Tensor:
        *x, r_out_prev = inputs
        r_in, *context = self.head(*x)
        return self.tail(self.adaptor(r_in, r_out_prev, *context), *context)


class StepClock:
    """The 'unet' runner of a clocked recipe: full network on full steps, head -> adaptor -> tail on the others.

    Counts what ran (`core_calls`, `adaptor_calls`) for tests and benchmarks."""

    def __init__(self, split: Any, adaptor: torch.nn.Module, clock: int = 1,
                 schedule: tuple[int, ...] | None = None, graphs: Any = None) -> None:
        self.split, self.adaptor, self.graphs = split, adaptor, graphs
        self.clock, self.schedule = clock, schedule
        self.step = 0
        self._call = 0
        self._r_out: dict[int, torch.Tensor] = {}
        self.core_calls = 0
        self.adaptor_calls = 0

    def is_full(self, step: int) -> bool:
        return full_steps(step + 1, self.clock, self.schedule)[step]

    def on_step(self, index: int, timestep: Any) -> None:
        """Sampling-loop callback: the next passes belong to step `index` (step 0 starts a new trajectory)."""
        self.step, self._call = index, 0
        if index == 0:
            self._r_out.clear()

    def __call__(self, *inputs: torch.Tensor) -> torch.Tensor:
        if self.graphs is not None:
            return self._call_graphs(*inputs)
        r_in, *context = self.split.head(*inputs)
        key = self._call
        self._call += 1
        previous = self._r_out.get(key)
        if self.is_full(self.step) or previous is None or previous.shape[0] != r_in.shape[0]:
            r_out = self.split.core(r_in, *context)
            self._r_out[key] = r_out
            self.core_calls += 1
        else:
            r_out = self.adaptor(r_in, previous, *context)
            self.adaptor_calls += 1
        return self.split.tail(r_out, *context)

    def _call_graphs(self, *inputs: torch.Tensor) -> torch.Tensor:
        """The same through a backend's graphs: 'unet' (-> output, r_out) on full steps, 'unet_adapt' on the others."""
        key = self._call
        self._call += 1
        previous = self._r_out.get(key)
        if self.is_full(self.step) or previous is None or previous.shape[0] != inputs[0].shape[0]:
            out, r_out = self.graphs.full(*inputs)
            self._r_out[key] = r_out
            self.core_calls += 1
            return out
        self.adaptor_calls += 1
        return self.graphs.adapt(*inputs, previous)

    @contextlib.contextmanager
    def running(self, denoiser: Any) -> Iterator[StepClock]:
        """Route the denoiser's 'unet' network through this clock for the duration (a passthrough backend: nothing
        else is routed), starting a fresh trajectory."""
        self.on_step(0, None)
        denoiser.set_runner("unet", self)
        try:
            yield self
        finally:
            denoiser.set_runner("unet", None)
            self._r_out.clear()


# a per-frame blend: (weight, source) pairs, source an int = a row of this batch's frame, ("kept", k) = the k-th
# kept full frame of earlier batches (0 the latest)
Blend = list[tuple[float, Any]]


def frame_blend(frame: int, full_in_batch: list[int], kept: list[int], mode: str) -> Blend:
    """How frame `frame` (absolute index) gets its r_out_prev from the full frames' r_out: `full_in_batch` are the
    absolute indices of this batch's full frames, `kept` those of earlier calls' kept full frames (latest first).

    'previous': the nearest earlier full frame's r_out, as it is. 'linear': between the nearest earlier and the
    nearest later full frame (when the later one is known: in this batch, or run before it in the batch's order,
    `FrameClock.order`) linearly by frame distance, else the nearest earlier one's as it is."""
    known = [(f, ("batch", f)) for f in full_in_batch] + [(f, ("kept", k)) for k, f in enumerate(kept)
                                                          if f not in full_in_batch]
    earlier = [x for x in known if x[0] < frame]
    if not earlier:
        raise ValueError(f"frame {frame} has no earlier full frame")
    p, src_p = max(earlier, key=lambda x: x[0])
    later = [x for x in known if x[0] > frame]
    if mode == "previous" or not later:
        return [(1.0, src_p)]
    q, src_q = min(later, key=lambda x: x[0])
    w = (frame - p) / (q - p)
    return [(1.0 - w, src_p), (w, src_q)]


def blend_rows(adapt_rows: list[int], count: int, start: int, blends: dict[int, Blend], r_out: torch.Tensor | None,
                kept: list[torch.Tensor]) -> torch.Tensor:
    """r_out_prev for each adapted row (branch-major rows of `count` frames) from this call's full frames' r_out and
    the kept earlier ones (one row per guidance branch)."""
    rows = []
    for row in adapt_rows:
        b, f = divmod(row, count)
        total: torch.Tensor | None = None
        for weight, (where, which) in blends[f]:
            t = r_out[b * count + which - start] if where == "batch" else kept[which][b]  # type: ignore[index]
            total = t * weight if total is None else total + t * weight
        assert total is not None
        rows.append(total)
    return torch.stack(rows)


class FrameClock:
    """The 'unet' runner of a frame-clocked recipe: frames 0, N, 2N, ... (and the anchor frame) run the whole network,
    the others head -> adaptor -> tail, the adaptor fed with an r_out_prev made from the full frames' r_out at the
    same step and pass (`blend`, the recipe's `frame_blend`: see `frame_blend`). Batches of frames: rows are
    guidance-branch major (row = branch * frames + frame), as the anchor's K/V.

    `frames(start, count)` says which video frames the next batch holds (None: not video frames, all run full and
    nothing is kept). The last KEEP full frames' r_out per (step, pass) are kept (constant memory): a caller that
    runs a batch one frame at a time runs its full frames first (`order`), so the frames between them can blend
    both sides. Counts `core_frames` and `adaptor_frames` (frame evaluations per pass) for tests and benchmarks."""

    KEEP = 4

    def __init__(self, split: Any, adaptor: torch.nn.Module, every: int, graphs: Any = None,
                 blend: str = "linear") -> None:
        if blend not in FRAME_BLENDS:
            raise UsageError(f"frame_blend must be one of {', '.join(FRAME_BLENDS)}, got {blend!r}")
        self.split, self.adaptor, self.every, self.graphs, self.blend = split, adaptor, every, graphs, blend
        self.anchor: int | None = None
        self.step = 0
        self._call = 0
        self._frames: tuple[int | None, int] | None = None
        # per (step, pass): the last full frames' (absolute index, r_out rows one per branch), latest first
        self._kept: dict[tuple[int, int], list[tuple[int, torch.Tensor]]] = {}
        self.core_frames = 0
        self.adaptor_frames = 0

    def is_full(self, frame: int) -> bool:
        return frame % self.every == 0 or frame == self.anchor

    def frames(self, start: int | None, count: int) -> None:
        """The next batch holds video frames start .. start + count - 1 (start None: not video frames); frame 0
        starts a new video (the kept r_out is dropped)."""
        if start == 0 or start is None:
            self._kept.clear()
        self._frames = (start, count)

    def order(self, start: int, count: int) -> list[int]:
        """The order in which to run frames start .. start + count - 1 one at a time: the full ones first (frame
        `start` counts as full when nothing is kept yet), so each frame between full frames of the batch can
        blend both sides. The result of every frame is what one call with the whole batch gives."""
        first_full = not self._kept or start == 0
        full = [f for f in range(count) if self.is_full(start + f) or (f == 0 and first_full)]
        return full + [f for f in range(count) if f not in full]

    def on_step(self, index: int, timestep: Any) -> None:
        self.step, self._call = index, 0

    def _plan(self, rows: int) -> tuple[int, int, int, list[int], list[int], dict[int, Blend],
                                        list[torch.Tensor], tuple[int, int]] | None:
        """For a batch of `rows` rows: (frames, branches, start, full rows, adapted rows, blend per adapted batch
        frame, the kept r_out tensors, the (step, pass) key), or None when the batch is not video frames (all rows
        run full, nothing kept)."""
        start, count = self._frames if self._frames is not None else (None, rows)
        key = (self.step, self._call)
        self._call += 1
        if start is None or rows % count:
            return None
        branches = rows // count
        kept = [(f, t) for f, t in self._kept.get(key, []) if t.shape[0] == branches]
        full = [self.is_full(start + f) for f in range(count)]
        if not [f for f, _ in kept if f < start]:
            full[0] = True  # nothing to adapt from: the batch's first frame runs full
        full_frames = [start + f for f in range(count) if full[f]]
        kept_frames = [f for f, _ in kept]
        blends = {f: frame_blend(start + f, full_frames, kept_frames, self.blend)
                  for f in range(count) if not full[f]}
        full_rows = [b * count + f for b in range(branches) for f in range(count) if full[f]]
        adapt_rows = [b * count + f for b in range(branches) for f in range(count) if not full[f]]
        return count, branches, start, full_rows, adapt_rows, blends, [t for _, t in kept], key

    def _keep(self, key: tuple[int, int], start: int, count: int, branches: int, full_rows: list[int],
              r_out: torch.Tensor | None) -> None:
        """Keep the batch's last full frames' r_out (with the earlier kept ones, the last KEEP of them)."""
        if r_out is None or not full_rows:
            return
        frames = sorted({row % count for row in full_rows})
        new = [(start + f, r_out[[b * count + f for b in range(branches)]].detach()) for f in frames]
        kept = {f: t for f, t in self._kept.get(key, []) + new}
        self._kept[key] = sorted(kept.items(), key=lambda x: -x[0])[: self.KEEP]

    def __call__(self, *inputs: torch.Tensor) -> torch.Tensor:
        if self.graphs is not None:
            return self._call_graphs(*inputs)
        r_in, *context = self.split.head(*inputs)
        rows = r_in.shape[0]
        plan = self._plan(rows)
        if plan is None:  # not video frames: all rows run full (counted in frames: rows are frames x branches)
            count = self._frames[1] if self._frames is not None else rows
            self.core_frames += count if rows % count == 0 else rows
            return self.split.tail(self.split.core(r_in, *context), *context)
        count, branches, start, full_rows, adapt_rows, blends, kept, key = plan

        def rows_of(t: torch.Tensor, idx: list[int]) -> torch.Tensor:
            return t[idx] if t.ndim and t.shape[0] == rows else t

        r_out = None
        if full_rows:
            core_out = self.split.core(rows_of(r_in, full_rows), *(rows_of(c, full_rows) for c in context))
            r_out = core_out.new_empty((rows, *core_out.shape[1:]))
            r_out[full_rows] = core_out
            self.core_frames += len(full_rows) // branches
        if adapt_rows:
            prev = blend_rows(adapt_rows, count, start, blends, r_out, kept)
            adapted = self.adaptor(rows_of(r_in, adapt_rows), prev, *(rows_of(c, adapt_rows) for c in context))
            if r_out is None:
                r_out = adapted.new_empty((rows, *adapted.shape[1:]))
            r_out[adapt_rows] = adapted
            self.adaptor_frames += len(adapt_rows) // branches
        assert r_out is not None
        self._keep(key, start, count, branches, full_rows, r_out)
        return self.split.tail(r_out, *context)

    def _call_graphs(self, *inputs: torch.Tensor) -> torch.Tensor:
        """The same through a backend's graphs: the full frames' rows through 'unet' (-> output, r_out), the others'
        through 'unet_adapt' with the r_out_prev made for them (rows are independent: the same result as one
        batch)."""
        rows = inputs[0].shape[0]
        plan = self._plan(rows)
        if plan is None:
            self.core_frames += rows
            return self.graphs.full(*inputs)[0]
        count, branches, start, full_rows, adapt_rows, blends, kept, key = plan

        def rows_of(idx: list[int]) -> list[torch.Tensor]:
            return [t[idx] if t.ndim and t.shape[0] == rows else t for t in inputs]

        out: torch.Tensor | None = None
        r_out: torch.Tensor | None = None
        if full_rows:
            full_out, core_out = self.graphs.full(*rows_of(full_rows))
            out = full_out.new_empty((rows, *full_out.shape[1:]))
            out[full_rows] = full_out
            r_out = core_out.new_empty((rows, *core_out.shape[1:]))
            r_out[full_rows] = core_out
            self.core_frames += len(full_rows) // branches
        if adapt_rows:
            adapted = self.graphs.adapt(*rows_of(adapt_rows),
                                        blend_rows(adapt_rows, count, start, blends, r_out, kept))
            if out is None:
                out = adapted.new_empty((rows, *adapted.shape[1:]))
            out[adapt_rows] = adapted
            self.adaptor_frames += len(adapt_rows) // branches
        assert out is not None
        self._keep(key, start, count, branches, full_rows, r_out)
        return out

    @contextlib.contextmanager
    def running(self, denoiser: Any) -> Iterator[FrameClock]:
        """Route the denoiser's 'unet' network through this clock for the duration of one batch."""
        self.on_step(0, None)
        denoiser.set_runner("unet", self)
        try:
            yield self
        finally:
            denoiser.set_runner("unet", None)
            self._frames = None

    def reset(self) -> None:
        """Forget the kept r_out (a new video)."""
        self._kept.clear()


def build_clock(pipe: Any, model: Path | None = None) -> StepClock | FrameClock | None:
    """The clock of a built pipeline (step or frame), or None when its recipe has no clock; one line when it cannot
    run. A trained adaptor must have been trained for this clock kind, sampler and step count."""
    recipe = pipe.recipe
    if not recipe.clocked:
        return None
    split = network_split(pipe.denoiser, recipe.denoiser)
    kind = "frame" if recipe.frame_clock > 1 else "step"
    if kind == "step":
        check_schedule(recipe, pipe.steps)
    adaptor = make_adaptor(recipe.adaptor, model=model, device=pipe.device, dtype=pipe.dtype)
    trained_for = getattr(adaptor, "trained_for", None)
    if trained_for is not None:
        where = adaptor_folder(recipe.adaptor, model)
        check_trained_for(trained_for, kind=kind, sampler=pipe.denoiser.describe().get("scheduler"),
                          steps=pipe.steps, where=where, blend=recipe.frame_blend if kind == "frame" else None)
    # on a routing backend the clock runs the split graphs: 'unet' (-> output, r_out) and 'unet_adapt'
    graphs = pipe.runtime.add_clock(split, adaptor) if pipe.runtime is not None else None
    if kind == "frame":
        return FrameClock(split, adaptor, recipe.frame_clock, graphs, blend=recipe.frame_blend)
    return StepClock(split, adaptor, recipe.clock, recipe.clock_schedule, graphs)
