"""The cuda-graphs backend's logic on CPU (graphs run eagerly on their static buffers), and the frame loop's threads."""

from __future__ import annotations

import contextlib
import types

import numpy as np
import pytest
import torch

from movie_core import overlap
from movie_core.composer import compose
from movie_core.edit import FrameEditor
from movie_core.loading import build
from movie_core.recipe import preset
from movie_plugins.backends.cuda_graphs import CudaGraphsBackend, StaticGraph


def test_available_says_why_not_without_a_gpu():
    ok, reason = CudaGraphsBackend.available()
    if torch.cuda.is_available():
        pytest.skip("a CUDA GPU is present: the backend is available here")
    assert not ok and "NVIDIA GPU" in reason and torch.__version__ in reason


def test_static_graph_runs_on_its_own_buffers_and_checks_shapes():
    seen = []

    def fn(a, b):
        seen.append((a.data_ptr(), b.data_ptr()))
        return a * 2 + b

    x, y = torch.ones(2, 3), torch.zeros(2, 3)
    g = StaticGraph(fn, (x, y), capture=False)
    for k in range(3):
        torch.testing.assert_close(g(x + k, y - k), (x + k) * 2 + (y - k))
    assert len(set(seen)) == 1 and seen[0] != (x.data_ptr(), y.data_ptr())  # always the static buffers
    with pytest.raises(ValueError, match="input 0"):
        g(torch.ones(3, 3), y)
    with pytest.raises(ValueError, match="takes 2 inputs"):
        g(x)


@pytest.fixture(scope="module")
def nano_editor():
    recipe = preset("movie").replace(size="nano", device="cpu", dtype="float32", anchor="middle")
    pipe = build(compose(recipe))
    editor = FrameEditor(pipe, "make it sepia", size=(48, 64), padded=(48, 64))
    editor.record_anchor(np.random.default_rng(0).integers(0, 256, (48, 64, 3), dtype=np.uint8))
    yield editor
    editor.close()


@pytest.mark.parametrize("channels_last", [False, True])
def test_fused_frame_function_matches_the_frame_loop(nano_editor, channels_last):
    ed = nano_editor
    x = torch.rand(3, 3, 48, 64, generator=torch.Generator().manual_seed(1)) * 2 - 1
    reference = ed.edit_tensor(x)
    fused = CudaGraphsBackend().frame_function(ed.pipe, ed.prompt, ed.anchor.store, ed.pipe.steps,
                                               {"capture": False, "channels_last": channels_last})
    torch.testing.assert_close(fused(x), reference, atol=1e-4, rtol=0)
    # a shorter batch reuses the batch-3 graph, padded with its last frame
    torch.testing.assert_close(fused(x[:2]), reference[:2], atol=1e-4, rtol=0)
    assert list(fused.graphs) == [(3, 48, 64)] and not fused.error


def test_fused_frame_function_declines_what_it_cannot_fuse(nano_editor):
    ed, backend = nano_editor, CudaGraphsBackend()
    assert "1-step" in backend.frame_function(ed.pipe, ed.prompt, None, 4, {})
    assert backend.frame_function(ed.pipe, ed.prompt, None, 1, {"fuse": False}) == "fuse=false"
    cfg3 = types.SimpleNamespace(denoiser=types.SimpleNamespace(guidance="cfg3"))
    assert "embedded guidance" in backend.frame_function(cfg3, ed.prompt, None, 1, {})


def test_frame_editor_runs_through_the_bound_backends_frame_function(nano_editor, monkeypatch):
    ed = nano_editor
    x = torch.rand(2, 3, 48, 64, generator=torch.Generator().manual_seed(2)) * 2 - 1
    reference = ed.edit_tensor(x)
    runtime = types.SimpleNamespace(backend=CudaGraphsBackend(), options={"capture": False})
    monkeypatch.setattr(ed.pipe, "runtime", runtime)
    monkeypatch.setattr(ed.pipe, "_anchored", lambda anchor: contextlib.nullcontext())  # eager modules underneath
    monkeypatch.setattr(ed, "fast_reason", None)
    torch.testing.assert_close(ed.run(x), reference, atol=1e-4, rtol=0)
    assert ed.fast is not None and ed.fast_reason == ""
    monkeypatch.undo()  # eager again: no routed backend, no fused function
    monkeypatch.setattr(ed, "fast_reason", None)
    torch.testing.assert_close(ed.run(x), reference, atol=1e-4, rtol=0)
    assert ed.fast is None and "no fused frame function" in ed.fast_reason


def test_prefetch_keeps_order_and_raises_the_readers_error_in_the_caller():
    assert list(overlap.Prefetch(range(10), lambda i: i * i)) == [i * i for i in range(10)]

    def broken():
        yield 1
        raise KeyError("frame 1")

    reader = overlap.Prefetch(broken())
    with pytest.raises(KeyError, match="frame 1"):
        list(reader)
    reader.close()
    endless = overlap.Prefetch(iter(int, 1), depth=1)  # stops on close even with the queue full
    endless.close()


def test_writer_writes_in_order_and_raises_its_error_in_the_caller():
    out = []
    w = overlap.Writer(out.append)
    for i in range(20):
        w.put(i)
    w.close()
    assert out == list(range(20))

    def fail(item):
        raise OSError("disk full")

    w = overlap.Writer(fail)
    w.put(0)
    with pytest.raises(OSError, match="disk full"):
        for i in range(100):
            w.put(i)
        w.close()
    w.abort()


def test_edit_with_cuda_graphs_without_a_gpu_is_one_line(run_movie, tmp_path):
    from PIL import Image

    if torch.cuda.is_available():
        pytest.skip("a CUDA GPU is present")
    src = tmp_path / "in.png"
    Image.fromarray(np.zeros((32, 32, 3), np.uint8)).save(src)
    result = run_movie("edit", str(src), "-p", "sepia", "-o", str(tmp_path / "out.png"), "--size", "nano",
                       "--init", "random", "--backend", "cuda-graphs")
    lines = [line for line in result.stderr.splitlines() if line.strip()]
    assert result.returncode != 0 and len(lines) == 1, result.stderr
    assert "backend 'cuda-graphs' is not available here" in lines[0] and "NVIDIA GPU" in lines[0]
    assert not (tmp_path / "out.png").exists()
