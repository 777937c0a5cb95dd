"""The frame loop: size policy, anchor cross-frame attention, batches of frames, streaming in and out."""

from __future__ import annotations

import math
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import attrs
import numpy as np
import torch
import torch.nn.functional as F

from movie_core import crossframe, detail, overlap
from movie_core.errors import MovieError, UsageError
from movie_core.pipeline import Pipeline
from movie_core.video import CorruptVideoError


@attrs.frozen
class SizePolicy:
    """Processing size: explicit height/width, a longest side, or the source size; aspect kept, padded to `multiple`."""

    height: int | None = None
    width: int | None = None
    max_side: int | None = None
    multiple: int = 8
    min_side: int = 32  # below it a nano UNet reaches 1x1 maps with one value per norm group (fails at batch 1)

    def target(self, src_h: int, src_w: int) -> tuple[int, int]:
        """(height, width) frames are resized to before padding."""
        if self.height and self.width:
            return self.height, self.width
        if self.height:
            return self.height, max(1, round(src_w * self.height / src_h))
        if self.width:
            return max(1, round(src_h * self.width / src_w)), self.width
        if self.max_side and max(src_h, src_w) > self.max_side:
            scale = self.max_side / max(src_h, src_w)
            return max(1, round(src_h * scale)), max(1, round(src_w * scale))
        return src_h, src_w

    def padded(self, h: int, w: int) -> tuple[int, int]:
        m = self.multiple
        return max(math.ceil(h / m) * m, self.min_side), max(math.ceil(w / m) * m, self.min_side)


DEFAULT_MAX_BATCH = 4  # frames per batch when memory allows (more gains little on a CPU)
# Peak resident bytes one more frame in a batch adds, per processed pixel, at float32 (half for 16-bit dtypes),
# for the shipped components at each model size, rounded up to a safe bound: scripts/measure_memory.py on the CPU
# (docs/results/memory-*.json) gave nano 870 (base) and 1680 (movie) at 256x256, full 660 and 213 at 128x128 (too
# small to show the SD VAE's 128-channel full-resolution layers, about 1 kB per pixel at 512x512); `movie edit` of
# 1920x1080 at full size took 1.03 GB more at batch 2 than at batch 1 (nano, about 500 per pixel).
PEAK_BYTES_PER_PIXEL = {"nano": 2048, "full": 4096}
# and per source pixel: the frame as uint8 queued ahead and behind, and as float32 around the resize in and out
# (a 4K 2-frame edit at 256x144, batch 4, peaked at 1.34 GB: about 25 bytes per source pixel per frame over the rest)
SOURCE_BYTES_PER_PIXEL = 48
MEMORY_SHARE = 0.5  # the share of the available memory a batch's frames may take (the rest: slack, other programs)


def working_side(pipe: Pipeline) -> int | None:
    """The longest side, in pixels, the model works at: its denoiser's native latent size (DenoiserContract's
    optional `native_latent_size()`; a model folder's unet `sample_size`) times the encoder's downscale."""
    native = getattr(pipe.denoiser, "native_latent_size", None)
    latent = native() if callable(native) else None
    return int(latent) * int(pipe.encoder.downscale) if latent else None


def size_policy(recipe_resolution: str, working: int | None, *, height: int | None = None,
                width: int | None = None, max_side: int | None = None, multiple: int = 8) -> tuple[SizePolicy, str]:
    """The processing size policy and why: --height/--width, else --max-side, else the recipe's `resolution`
    (HxW, max-side:N, keep: the source size), else (auto) the model's working size as the longest side."""
    if height or width:
        return SizePolicy(height=height, width=width, multiple=multiple), "--height/--width"
    if max_side:
        return SizePolicy(max_side=max_side, multiple=multiple), "--max-side"
    if recipe_resolution == "keep":
        return SizePolicy(multiple=multiple), "resolution = keep"
    if recipe_resolution.startswith("max-side:"):
        return SizePolicy(max_side=int(recipe_resolution.split(":")[1]), multiple=multiple), "the recipe's resolution"
    if "x" in recipe_resolution:
        h, w = (int(v) for v in recipe_resolution.split("x"))
        return SizePolicy(height=h, width=w, multiple=multiple), "the recipe's resolution"
    if working:
        return SizePolicy(max_side=working, multiple=multiple), f"the model's working size, {working} on the long side"
    return SizePolicy(multiple=multiple), "the model states no working size"


def available_memory(device: torch.device) -> int | None:
    """Bytes free for this run: the GPU's free memory, else the system's available memory (within a cgroup's
    limit where one is set); None when unknown."""
    if device.type == "cuda":
        try:
            return int(torch.cuda.mem_get_info(device)[0])
        except (RuntimeError, AssertionError):
            return None
    free: int | None = None
    try:
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemAvailable:"):
                free = int(line.split()[1]) * 1024
    except OSError:
        return None
    try:
        limit = Path("/sys/fs/cgroup/memory.max").read_text().strip()
        used = int(Path("/sys/fs/cgroup/memory.current").read_text())
        if limit != "max" and free is not None:
            free = min(free, int(limit) - used)
    except (OSError, ValueError):
        pass
    return free


def frame_bytes(size: str, dtype: torch.dtype, padded: tuple[int, int], source: tuple[int, int] = (0, 0)) -> int:
    """Estimated peak memory one frame of a batch adds at the padded processing size (and its source size)."""
    per_pixel = PEAK_BYTES_PER_PIXEL.get(size, max(PEAK_BYTES_PER_PIXEL.values()))
    scale = torch.finfo(dtype).bits / 32 if dtype.is_floating_point else 1.0
    return int(per_pixel * scale * padded[0] * padded[1]) + SOURCE_BYTES_PER_PIXEL * source[0] * source[1]


def choose_batch(per_frame: int, available: int | None, requested: int | None = None,
                 most: int = DEFAULT_MAX_BATCH) -> tuple[int, str]:
    """Frames per batch and why: the requested number, else as many as fit MEMORY_SHARE of the available memory
    (at least 1, at most `most`)."""
    if requested:
        return requested, "--batch-size"
    if available is None:
        return most, "memory unknown"
    fits = int(MEMORY_SHARE * available // max(per_frame, 1))
    return max(1, min(most, fits)), "memory"


def plan_line(source_hw: tuple[int, int], size: tuple[int, int], why_size: str, batch: int, why_batch: str,
              detail_mode: str = "none") -> str:
    """The one line that says what size and batch an edit runs at, and how its output reaches the source size."""
    (sh, sw), (h, w) = source_hw, size
    where = "at its own size" if (h, w) == (sh, sw) else f"at {w}x{h} ({why_size})"
    if detail_mode != "none":
        maps = "one colour map per frame" if detail_mode == "global" else "colour maps per window"
        back = f"; output: the edit's {maps} applied to the source's own {sw}x{sh} pixels (--detail {detail_mode})"
    else:
        back = f"; output resized back to {sw}x{sh}" if (h, w) != (sh, sw) else ""
    return f"processing {sw}x{sh} {where}, batch {batch} ({why_batch}){back}"


def to_tensor(frames: list[np.ndarray], size: tuple[int, int], padded: tuple[int, int], device, dtype) -> torch.Tensor:
    """uint8 HxWx3 frames -> NCHW in [-1, 1], resized to `size` and edge-padded to `padded`."""
    x = torch.from_numpy(np.stack(frames)).permute(0, 3, 1, 2).to(torch.float32) / 127.5 - 1.0
    if tuple(x.shape[-2:]) != size:
        x = F.interpolate(x, size=size, mode="bicubic", align_corners=False, antialias=True).clamp(-1, 1)
    ph, pw = padded[0] - size[0], padded[1] - size[1]
    if ph or pw:
        x = F.pad(x, (0, pw, 0, ph), mode="replicate")
    return x.to(device=device, dtype=dtype)


def to_frames(x: torch.Tensor, size: tuple[int, int], out_size: tuple[int, int]) -> list[np.ndarray]:
    """NCHW in [-1, 1] -> uint8 HxWx3 frames: padding cropped, resized back to the source size."""
    x = x[:, :, : size[0], : size[1]].float()
    if tuple(x.shape[-2:]) != out_size:
        x = F.interpolate(x, size=out_size, mode="bicubic", align_corners=False, antialias=True)
    frames = ((x.clamp(-1, 1) + 1) * 127.5).round().to(torch.uint8).permute(0, 2, 3, 1).cpu().numpy()
    return list(frames)


def anchor_index(policy: str, frame_count: int | None, seekable: bool) -> int | None:
    """The anchor frame for a policy: middle (first when the count is unknown or not seekable), first, N, none."""
    if policy == "none":
        return None
    if policy == "first" or not seekable or not frame_count:
        return 0 if policy in ("first", "middle") else int(policy)
    if policy == "middle":
        return frame_count // 2
    index = int(policy)
    if index >= frame_count:
        raise UsageError(f"--anchor {index} is past the last frame ({frame_count - 1})")
    return index


class FrameEditor:
    """Edits frames batch by batch with one prompt, the same initial noise, and anchor K/V replay."""

    def __init__(self, pipe: Pipeline, prompt: str, *, size: tuple[int, int], padded: tuple[int, int]):
        self.pipe, self.size, self.padded = pipe, size, padded
        self.prompt = pipe.prompt(prompt)
        self.anchor: crossframe.AnchorController | None = None
        self.fast: Any = None  # the backend's fused frame function (backends.frame_function), found on first use
        self.fast_reason: str | None = None
        self.next_frame = 0  # the video index of the next frame `run` edits (the frame clock counts on it)

    def tensor(self, frames: list[np.ndarray]) -> torch.Tensor:
        """uint8 frames -> the pipeline's input batch at this editor's size."""
        return to_tensor(frames, self.size, self.padded, self.pipe.device, self.pipe.dtype)

    def record_anchor(self, frame: np.ndarray, index: int | None = None) -> None:
        """Sample the anchor frame (video index `index`, if known) once, storing its self-attention K/V for every
        step. The frame clock runs the anchor full, here and where the stream reaches it."""
        if self.pipe.frame_clock is not None:
            self.pipe.frame_clock.anchor = index
        self.anchor = crossframe.AnchorController()
        self.anchor.record()
        self.edit_tensor(self.tensor([frame]))
        if not self.anchor.store:  # a denoiser whose anchor layers ignore the KV hook: say so, not a traceback
            raise MovieError(f"denoiser '{self.pipe.recipe.denoiser}' recorded no anchor keys/values: its anchor "
                             "layers never called the KV hook (set_kv_hook); run with --anchor none")
        self.anchor.replay()

    def edit_tensor(self, x: torch.Tensor, timings: dict[str, float] | None = None,
                    frame: int | None = None) -> torch.Tensor:
        """Edit a batch; frame: the video index of its first frame (the frame clock), None for a lone image."""
        return self.pipe.edit_batch(x, self.prompt, anchor=self.anchor, timings=timings, frame=frame)

    def edit(self, frames: list[np.ndarray], out_size: tuple[int, int]) -> list[np.ndarray]:
        """Edit a batch of uint8 frames; returns uint8 frames at out_size."""
        x = self.tensor(frames)
        return self.output(frames, x, self.run(x), out_size)

    def output(self, frames: list[np.ndarray], x: torch.Tensor, y: torch.Tensor,
               out_size: tuple[int, int]) -> list[np.ndarray]:
        """uint8 frames at out_size from the model's input x and output y (working size, padded) for the source
        `frames`: y resized back, or with the recipe's `detail` the colour map x -> y applied to the frames
        themselves at out_size (movie_core.detail)."""
        mode = self.pipe.recipe.detail
        if mode == "none":
            return to_frames(y, self.size, out_size)
        h, w = self.size
        full = torch.from_numpy(np.stack(frames)).permute(0, 3, 1, 2).to(torch.float32) / 127.5 - 1.0
        if tuple(full.shape[-2:]) != out_size:
            full = F.interpolate(full, size=out_size, mode="bicubic", align_corners=False, antialias=True)
        small = [t[:, :, :h, :w].float().cpu() for t in (x, y)]
        return to_frames(detail.transfer(mode, full.clamp(-1, 1), *small), out_size, out_size)

    def run(self, x: torch.Tensor) -> torch.Tensor:
        """Edit a batch on the device: through the backend's fused frame function where it offers one."""
        if self.fast_reason is None:
            from movie_core import backends

            store = self.anchor.store if self.anchor is not None else None
            self.fast, self.fast_reason = backends.frame_function(self.pipe, self.prompt, store, self.pipe.steps)
        frame, self.next_frame = self.next_frame, self.next_frame + x.shape[0]
        out = self.fast(x) if self.fast is not None else None
        if out is None and self.fast is not None:  # it could not be built for this batch (say, capture failed)
            self.fast, self.fast_reason = None, getattr(self.fast, "error", "") or "the fused frame function declined"
        if out is not None:
            return out
        if not self.frame_by_frame or x.shape[0] == 1:
            return self.edit_tensor(x, frame=frame)
        clock = self.pipe.frame_clock  # its full frames first, so the frames between can blend both sides
        order = clock.order(frame, x.shape[0]) if clock is not None else range(x.shape[0])
        outs = {i: self.edit_tensor(x[i:i + 1], frame=frame + i) for i in order}
        return torch.cat([outs[i] for i in range(x.shape[0])])

    @property
    def frame_by_frame(self) -> bool:
        """Whether the model sees one frame per call: on the CPU with the torch modules run as they are (eager).
        There a kernel's summation order depends on the batch (oneDNN picks another convolution blocking, MKL another
        GEMM for the time and guidance embeddings' 1-row vs 4-row matmuls), so a frame batched with others differs
        from itself alone by about 3e-6; that flips a few uint8 roundings and the encoder's choices spread them (up
        to 26/255 after H.264). One frame per call makes each frame's output independent of the batch it came in,
        hence of --batch-size and of the memory-based batch choice; on the CPU batching gains little."""
        return self.pipe.device.type == "cpu" and self.pipe.runtime is None

    def close(self) -> None:
        if self.anchor is not None:
            self.anchor.clear()
            self.anchor = None


def batched(it: Iterator[Any], n: int) -> Iterator[list[Any]]:
    batch: list[Any] = []
    for item in it:
        batch.append(item)
        if len(batch) == n:
            yield batch
            batch = []
    if batch:
        yield batch


def contact_sheet(pairs: list[tuple[np.ndarray, np.ndarray]], path: Path, height: int = 160) -> None:
    """Source frames above edited frames, several across the video, written atomically as PNG."""
    from PIL import Image

    tiles = []
    for src, out in pairs:
        h, w = src.shape[:2]
        tw = max(1, round(w * height / h))
        col = [np.asarray(Image.fromarray(a).resize((tw, height), Image.Resampling.LANCZOS)) for a in (src, out)]
        tiles.append(np.concatenate(col, axis=0))
    sheet = np.concatenate(tiles, axis=1)
    tmp = path.with_name(f".{path.name}.movie-tmp.png")
    try:
        Image.fromarray(sheet).save(tmp)
        tmp.replace(path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise


def edit_video(pipe: Pipeline, source, sink, prompt: str, *, policy: SizePolicy, batch_size: int = 4,
               preview: Path | None = None, preview_count: int = 6, progress: bool = True,
               on_progress: Callable[[int, int | None], None] | None = None) -> dict[str, Any]:
    """Stream `source` through the pipeline into `sink`; returns a summary (frames, seconds, frames/s).

    on_progress(frames edited, total or None) is called in the caller's thread after each batch (a web page's bar)."""
    from tqdm import tqdm

    out_size = (source.height, source.width)
    size = policy.target(*out_size)
    padded = policy.padded(*size)
    editor = FrameEditor(pipe, prompt, size=size, padded=padded)
    total = source.frame_count
    keep = (set(np.linspace(0, total - 1, min(preview_count, total)).round().astype(int).tolist())
            if preview and total else set())
    pairs: list[tuple[np.ndarray, np.ndarray]] = []
    start = time.perf_counter()
    done = 0
    try:
        index = anchor_index(pipe.recipe.anchor, total, source.is_seekable)
        if index is not None:
            try:
                anchor = source.frame(index)
            except (IndexError, StopIteration) as e:  # the file holds fewer frames than its header claims
                raise CorruptVideoError(
                    f"truncated video: {source.path} (anchor frame {index}: {e or 'not found'})") from None
            editor.record_anchor(anchor, index)
        bar = tqdm(total=total, unit="frame", disable=not progress, dynamic_ncols=True, desc="editing")

        def write(item: tuple[list, torch.Tensor, torch.Tensor]) -> None:  # the writer thread: to uint8, encode
            nonlocal done
            batch, x, y = item
            for (src, pts), out in zip(batch, editor.output([f for f, _ in batch], x, y, out_size)):
                sink.write(out, pts)
                if done in keep:
                    pairs.append((src, out))
                done += 1
            bar.update(len(batch))

        # decode + upload run ahead in a reader thread and download + encode behind in a writer thread,
        # so the model's device works while the CPU decodes and encodes
        reader = overlap.Prefetch(batched(source.frames(with_pts=True), batch_size),
                                  lambda batch: (batch, editor.tensor([f for f, _ in batch])))
        writer = overlap.Writer(write)
        try:
            with bar:
                edited = 0
                for batch, x in reader:
                    writer.put((batch, x, editor.run(x)))
                    edited += len(batch)
                    if on_progress is not None:
                        on_progress(edited, total)
                writer.close()
        finally:
            reader.close()
            writer.abort()
    finally:
        editor.close()
    seconds = time.perf_counter() - start
    if preview and pairs:
        contact_sheet(pairs, preview)
    return {"frames": done, "seconds": seconds, "frames_per_s": done / seconds if seconds else float("inf"),
            "size": list(size), "padded": list(padded), "anchor": pipe.recipe.anchor,
            "fused": editor.fast is not None, "fused_reason": editor.fast_reason or ""}
