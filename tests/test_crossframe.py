"""Anchor cross-frame attention: record/replay exactness, that replay is live, the K/V store, clean uninstall."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from movie_core import crossframe
from movie_core.composer import compose
from movie_core.edit import FrameEditor, SizePolicy, edit_video, to_tensor
from movie_core.loading import build
from movie_core.recipe import preset
from movie_plugins.denoisers._pix2pix import KVHookAttnProcessor

H, W = 48, 64
SIZE = PADDED = (H, W)
PROMPT = "make it sepia"
STEPS = 2

RECIPES = {
    # three UNet passes per step (paper Eq. 1): instruct-pix2pix, TAESD to keep it quick
    "cfg3": lambda: preset("base").replace(size="nano", vae="taesd", steps=STEPS),
    # guidance scales embedded, one pass per step: the MoViE denoiser
    "embedded": lambda: preset("movie").replace(size="nano", steps=STEPS),
}


@pytest.fixture(scope="module", params=list(RECIPES))
def pipe(request):
    p = build(compose(RECIPES[request.param]()))
    assert p.denoiser.guidance == request.param
    return p


def frame(index: int) -> np.ndarray:
    """A gradient panned by `index` with a white square moving across it (uint8 HxWx3)."""
    y, x = np.mgrid[0:H, 0:W]
    rgb = np.stack([(x + 4 * index) % W / W, y / H, 0.5 + 0.5 * np.sin((x + y + 4 * index) / 9)], axis=-1)
    image = (rgb * 255).astype(np.uint8)
    left = 6 + 5 * index
    image[18:30, left : left + 12] = 255
    return image


FRAMES = [frame(i) for i in range(6)]
ANCHOR = 3


def recording_editor(pipe) -> tuple[FrameEditor, list[torch.Tensor]]:
    """A FrameEditor whose every sampled batch (decoded, [-1, 1]) is also kept in a list."""
    editor = FrameEditor(pipe, PROMPT, size=SIZE, padded=PADDED)
    outputs: list[torch.Tensor] = []
    sample = editor.edit_tensor

    def keep(x: torch.Tensor) -> torch.Tensor:
        out = sample(x)
        outputs.append(out.clone())
        return out

    editor.edit_tensor = keep
    return editor, outputs


@pytest.fixture
def latents(pipe, monkeypatch) -> list[torch.Tensor]:
    """The sampled latents of every batch, as handed to the decoder (random-init decoders saturate,
    so differences show more plainly here than in pixels)."""
    seen: list[torch.Tensor] = []
    decode = pipe.decoder.decode

    def keep(z: torch.Tensor) -> torch.Tensor:
        seen.append(z.clone())
        return decode(z)

    monkeypatch.setattr(pipe.decoder, "decode", keep)
    return seen


def rel_max_diff(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """Per-item max |a - b| relative to b's mean magnitude."""
    return (a - b).abs().flatten(1).amax(1) / b.abs().mean()


def batch(frames: list[np.ndarray], pipe) -> torch.Tensor:
    return to_tensor(frames, SIZE, PADDED, pipe.device, pipe.dtype)


def attn1_names(unet) -> list[str]:
    return [name for name in unet.attn_processors if name.endswith("attn1.processor")]


def test_anchor_frame_replays_to_its_recorded_edit(pipe, latents) -> None:
    editor, outputs = recording_editor(pipe)
    try:
        editor.record_anchor(FRAMES[ANCHOR])
        recorded, recorded_z = outputs[0], latents[0]
        assert editor.anchor.mode == "replay"
        # alone, and in the middle of a batch of other frames (replay repeats K/V per guidance branch)
        alone = editor.edit_tensor(batch([FRAMES[ANCHOR]], pipe))
        mixed = editor.edit_tensor(batch([FRAMES[0], FRAMES[ANCHOR], FRAMES[5]], pipe))
    finally:
        editor.close()
    # float noise only (batched and single-frame kernels round differently; measured up to 3e-5 on [-1, 1] pixels)
    assert (alone - recorded).abs().max().item() < 1e-4
    assert (mixed[1:2] - recorded).abs().max().item() < 1e-4
    # latents too, up to float noise (cfg3 amplifies it by the guidance scales, DDIM's first step by a further
    # 1/sqrt(alpha_bar_901) ~ 10: measured up to 1.2e-4); a live anchor moves them > 1e-2
    assert rel_max_diff(latents[1], recorded_z).max().item() < 5e-4
    assert rel_max_diff(latents[2][1:2], recorded_z).max().item() < 5e-4


def test_replay_changes_the_other_frames(pipe, latents) -> None:
    """The mechanism is live: other frames' outputs move when they attend to the anchor's K/V."""
    x = batch([FRAMES[0], FRAMES[5]], pipe)
    without = FrameEditor(pipe, PROMPT, size=SIZE, padded=PADDED).edit_tensor(x)
    editor = FrameEditor(pipe, PROMPT, size=SIZE, padded=PADDED)
    try:
        editor.record_anchor(FRAMES[ANCHOR])
        with_anchor = editor.edit_tensor(x)
    finally:
        editor.close()
    z_without, z_with = latents[0], latents[2]
    assert rel_max_diff(z_with, z_without).min().item() > 1e-2  # both frames moved, by well over float noise
    assert (with_anchor - without).abs().flatten(1).amax(1).min().item() > 1e-4  # and so did their pixels
    # after close() the same settings give the no-anchor result again
    again = FrameEditor(pipe, PROMPT, size=SIZE, padded=PADDED).edit_tensor(x)
    assert (again - without).abs().max().item() < 1e-6


def test_processor_off_matches_the_stock_attention(pipe) -> None:
    """With the controller off (and in record mode) the cross-frame processor is plain self-attention."""
    x = batch([FRAMES[1], FRAMES[2]], pipe)
    stock = FrameEditor(pipe, PROMPT, size=SIZE, padded=PADDED).edit_tensor(x)
    controller = crossframe.AnchorController()  # mode off: the hook returns the layer's own K/V
    previous = pipe.denoiser.set_kv_hook(controller.kv)
    try:
        ours = FrameEditor(pipe, PROMPT, size=SIZE, padded=PADDED).edit_tensor(x)
    finally:
        pipe.denoiser.set_kv_hook(previous)
    assert (ours - stock).abs().max().item() < 1e-5


def test_processors_are_restored_after_close(pipe) -> None:
    unet = pipe.denoiser.unet
    before = dict(unet.attn_processors)
    seen: dict[str, type] = {}
    editor = FrameEditor(pipe, PROMPT, size=SIZE, padded=PADDED)
    editor.record_anchor(FRAMES[ANCHOR])
    replay = editor.anchor.kv

    def hook(name, key, value):  # what is installed while a frame is sampled
        seen.update({k: type(v) for k, v in unet.attn_processors.items()})
        return replay(name, key, value)

    editor.anchor.kv = hook
    editor.edit_tensor(batch([FRAMES[0]], pipe))
    assert seen
    for name, proc in seen.items():
        if name.endswith("attn1.processor"):
            assert proc is KVHookAttnProcessor
        else:
            assert proc is type(before[name])  # cross-attention (attn2) is left alone
    anchor = editor.anchor
    editor.close()
    after = unet.attn_processors
    assert {k: type(v) for k, v in after.items()} == {k: type(v) for k, v in before.items()}
    assert all(after[k] is before[k] for k in before)
    assert anchor.store == {} and anchor.mode == "off" and editor.anchor is None
    editor.close()  # a second close is harmless


def test_processors_are_restored_when_the_frame_loop_fails(pipe) -> None:
    unet = pipe.denoiser.unet
    before = {k: type(v) for k, v in unet.attn_processors.items()}

    class Source:
        height, width, frame_count, is_seekable = H, W, len(FRAMES), True

        def frame(self, index):
            return FRAMES[index]

        def frames(self, with_pts=False):
            return ((f, i) for i, f in enumerate(FRAMES))

    class FailingSink:
        def write(self, frame, pts):
            raise OSError("disk full")

    with pytest.raises(OSError, match="disk full"):
        edit_video(pipe, Source(), FailingSink(), PROMPT, policy=SizePolicy(),
                   progress=False)
    assert {k: type(v) for k, v in unet.attn_processors.items()} == before


def test_store_holds_one_entry_per_step_and_attn1_layer(pipe) -> None:
    unet = pipe.denoiser.unet
    names = attn1_names(unet)
    assert names  # the nano UNets do have self-attention layers
    editor = FrameEditor(pipe, PROMPT, size=SIZE, padded=PADDED)
    try:
        editor.record_anchor(FRAMES[ANCHOR])
        store = editor.anchor.store
        assert pipe.steps == STEPS
        assert len(store) == STEPS * len(names)
        assert set(store) == {(step, name) for step in range(STEPS) for name in names}
        branches = 3 if pipe.denoiser.guidance == "cfg3" else 1
        for key, value in store.values():
            assert key.shape[0] == value.shape[0] == branches
            assert key.shape == value.shape
    finally:
        editor.close()


@pytest.mark.parametrize("anchored", [False, True])
def test_frames_in_a_batch_get_identical_noise(pipe, anchored: bool) -> None:
    editor = FrameEditor(pipe, PROMPT, size=SIZE, padded=PADDED)
    try:
        if anchored:
            editor.record_anchor(FRAMES[ANCHOR])
        out = editor.edit_tensor(batch([FRAMES[2]] * 3, pipe))
        frames = editor.edit([FRAMES[2]] * 3, (H, W))
    finally:
        editor.close()
    # equal up to float noise from batching (a different noise draw would move them by ~0.1 or more)
    assert (out[1:] - out[0]).abs().max().item() < 1e-5
    assert all(np.abs(f.astype(int) - frames[0].astype(int)).max() <= 1 for f in frames[1:])
    gens = pipe.generators(3)
    draws = [torch.randn(4, generator=g) for g in gens]
    assert all(torch.equal(draws[0], d) for d in draws[1:])
