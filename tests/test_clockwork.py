"""Clockwork (issue 21): the denoiser's network split, the step clock in the sampler, and its FLOPs.

The split must reproduce the whole network exactly (the cut moves work, it changes no arithmetic); the clock
must run the low-resolution core only on its full steps, and a clock that runs every step full must equal
no clock at all.
"""

from __future__ import annotations

import pytest
import torch

from movie_core import plugins
from movie_core.components import BuildContext

pytestmark = pytest.mark.usefixtures("one_thread")

STAGES = ("instruct-pix2pix", "mobile-pix2pix", "mobile-pix2pix-mmg", "mobile-pix2pix-1step")


def nano_denoiser(stage: str):
    spec = plugins.get_registry().get("denoiser", stage)
    return spec.load_factory()(BuildContext(size="nano", seed=3), spec.make_config())


def unet_inputs(den, batch: int, h: int, w: int) -> list[torch.Tensor]:
    g = torch.Generator().manual_seed(0)
    x = torch.randn(batch, 4, h, w, generator=g)
    img = torch.randn(batch, 4, h, w, generator=g)
    text = torch.randn(batch, 77, den.unet.config.cross_attention_dim, generator=g)
    return den.graph_inputs(x, torch.tensor(501), img, text, 1.5, 7.5)


@pytest.mark.parametrize("stage", STAGES)
@pytest.mark.parametrize("hw", [(16, 16), (12, 20)])  # 12x20: not a multiple of 8, the upsamplers get sizes
def test_split_reproduces_the_network_exactly(stage, hw):
    den = nano_denoiser(stage)
    split = den.network_split()
    assert split is not None
    inputs = unet_inputs(den, 3, *hw)
    net = den.networks()["unet"].module
    with torch.no_grad(), net.active():
        full = net(*inputs)
    with torch.no_grad():
        r_in, *context = split.head(*inputs)
        r_out = split.core(r_in, *context)
        out = split.tail(r_out, *context)
    top = den.unet.config.block_out_channels
    assert r_in.shape[1] == top[0] and r_in.shape[-2:] == tuple((d + 1) // 2 for d in hw)
    assert r_out.shape[-2:] == hw and r_out.shape[1] == top[1]
    assert torch.equal(out, full)  # the same operations in the same order: bit for bit
    # the cut is real: the tail reads r_out (another r_out gives another output)
    with torch.no_grad():
        other = split.tail(torch.zeros_like(r_out), *context)
    assert (other - full).abs().max() > 1e-3


def test_base_class_says_not_supported():
    from movie_core.components import Denoiser

    assert Denoiser().network_split() is None


# --- the step clock in the sampler ----------------------------------------------------------------------


def nano_pipe(name: str = "mmg", **changes):
    from movie_core.composer import compose
    from movie_core.loading import build
    from movie_core.recipe import preset

    return build(compose(preset(name).replace(size="nano", **changes)))


def images(n: int = 2, h: int = 32, w: int = 32) -> torch.Tensor:
    return torch.rand(n, 3, h, w, generator=torch.Generator().manual_seed(1)) * 2 - 1


@pytest.mark.parametrize("name", ["base", "mmg"])  # 3-pass guidance in one batch, and one embedded pass
def test_every_step_full_through_the_split_equals_no_clock(name):
    plain = nano_pipe(name, steps=3)
    assert plain.step_clock is None
    clocked = nano_pipe(name, steps=3, clock_schedule=[0, 1, 2])
    ref = plain.edit_batch(images(), "make it sepia", seed=5)
    out = clocked.edit_batch(images(), "make it sepia", seed=5)
    assert clocked.step_clock.core_calls == 3 and clocked.step_clock.adaptor_calls == 0  # it did go through
    assert torch.equal(out, ref)


@pytest.mark.parametrize("name", ["base", "mmg"])
def test_clock_2_runs_the_core_on_even_steps_and_stays_close(name):
    plain = nano_pipe(name, steps=5)
    clocked = nano_pipe(name, steps=5, clock=2)
    clock = clocked.step_clock
    core_steps: list[int] = []
    clock.split.core.register_forward_hook(lambda *_: core_steps.append(clock.step))
    ref = plain.edit_batch(images(), "make it sepia", seed=5)
    out = clocked.edit_batch(images(), "make it sepia", seed=5)
    assert core_steps == [0, 2, 4] and clock.adaptor_calls == 2
    other_noise = plain.edit_batch(images(), "make it sepia", seed=6)
    changed = (out - ref).abs().mean().item()
    assert changed > 0  # the adaptor steps reused stale features
    # ...but the identity adaptor moves the result far less than another starting noise does
    assert changed < 0.5 * (other_noise - ref).abs().mean().item()
    # a second batch starts a new trajectory: the core runs on its step 0 again
    clocked.edit_batch(images(), "make it sepia", seed=5)
    assert core_steps == [0, 2, 4, 0, 2, 4]


def test_explicit_schedule_and_anchor_attention():
    from movie_core.crossframe import AnchorController

    pipe = nano_pipe("base", steps=4, clock_schedule="0,1,3")
    anchor = AnchorController()
    anchor.record()
    pipe.edit_batch(images(1), "make it sepia", anchor=anchor, seed=5)
    assert pipe.step_clock.core_calls == 3 and pipe.step_clock.adaptor_calls == 1
    # the base model has self-attention at the top level, which runs on every step; the core's only on full ones
    high = {layer for (step, layer) in anchor.store if step == 2}
    assert high and high < {layer for (step, layer) in anchor.store if step == 0}
    anchor.replay()
    out = pipe.edit_batch(images(2), "make it sepia", anchor=anchor, seed=5)
    assert out.shape == (2, 3, 32, 32) and torch.isfinite(out).all()


def test_clock_refusals():
    from movie_core import clockwork
    from movie_core.errors import UsageError
    from movie_core.recipe import preset

    with pytest.raises(UsageError, match="clock_schedule names step 7, but the recipe samples 4 steps"):
        nano_pipe("mmg", steps=4, clock_schedule=[0, 7])
    with pytest.raises(UsageError, match="starting with 0"):
        preset("mmg").replace(clock_schedule=[1, 2])
    with pytest.raises(UsageError, match="not both"):
        preset("mmg").replace(clock=2, clock_schedule=[0, 2])
    with pytest.raises(UsageError, match="adaptor"):
        preset("mmg").replace(adaptor="learned")
    with pytest.raises(UsageError, match="does not expose a network split"):
        clockwork.network_split(object(), "tiny")
    assert clockwork.full_steps(8, 2) == [True, False] * 4
    assert clockwork.full_steps(4, 1, (0, 3)) == [True, False, False, True]


def test_clock_on_a_routing_backend_runs_the_split_graphs(monkeypatch, tmp_path):
    """On a routing backend the clock calls the split graphs (parity with eager: tests/test_clockwork_export.py)."""
    pytest.importorskip("onnxruntime", reason="the onnx backend needs onnxruntime (the test extra installs it)")
    from movie_core import backends

    monkeypatch.setenv("MOVIE_CACHE_DIR", str(tmp_path))
    pipe = nano_pipe("mmg", steps=2, clock=2, backend="onnx")
    assert isinstance(pipe.step_clock.graphs, backends.ClockGraphs)
    assert pipe.runtime.graphs["unet"].io_names()[1][:2] == ("noise", "r_out")
    assert backends.frame_function(pipe, None, None, 2)[0] is None  # no fused frame function bypasses the clock
    assert nano_pipe("mmg", steps=2, clock=2).step_clock.graphs is None  # eager: the split's parts


def test_cli_takes_the_clock_flags(run_movie, tmp_path):
    out = tmp_path / "r.toml"
    ok = run_movie("compose", "--preset", "mmg", "--clock-schedule", "0,1,3", "--adaptor", "identity", "-o", str(out))
    assert ok.returncode == 0, ok.stderr
    assert "clock_schedule = [0, 1, 3]" in out.read_text()
    again = run_movie("compose", "--recipe", str(out), "--json")
    assert again.returncode == 0, again.stderr
    assert '"clock_schedule": [\n' in again.stdout or '"clock_schedule": [0, 1, 3]' in again.stdout
    bad = run_movie("compose", "--preset", "mmg", "--clock", "2", "--clock-schedule", "0,2")
    assert bad.returncode == 2 and "not both" in bad.stderr and "Traceback" not in bad.stderr
    assert len(bad.stderr.strip().splitlines()) == 1


# --- FLOPs ----------------------------------------------------------------------------------------------


@pytest.mark.parametrize("name", ["base", "mmg"])
def test_flops_count_the_clock_exactly(name):
    from movie_core import flops
    from movie_core.composer import compose
    from movie_core.recipe import preset

    plain = flops.count(compose(preset(name).replace(size="nano", steps=5)), height=64, width=96)
    clocked = flops.count(compose(preset(name).replace(size="nano", steps=5, clock=2)), height=64, width=96)
    passes = plain["unet_passes_per_step"]
    comps, unet = clocked["components"], plain["components"]["unet"]
    assert "unet" not in comps and clocked["clock"]["full_steps"] == [0, 2, 4]
    assert (comps["unet_high"]["calls"], comps["unet_core"]["calls"], comps["adaptor"]["calls"]) == (
        5 * passes, 3 * passes, 2 * passes)
    for conv in ("paper", "all"):
        key = f"tflops_{conv}"
        high, core = comps["unet_high"], comps["unet_core"]
        per_pass = high[key] / high["calls"] + core[key] / core["calls"]
        assert per_pass == pytest.approx(unet[key] / unet["calls"], rel=1e-9)  # the split costs what the network does
        assert comps["adaptor"][key] == 0  # identity
        saved = comps["unet_core"][key] / 3 * 2  # two core runs skipped
        assert clocked[key] == pytest.approx(plain[key] - saved, rel=1e-9)
        assert clocked["clock"][f"unet_saving_{conv}"] == pytest.approx(saved / unet[key], rel=1e-9)


def test_flops_cli_prints_the_clock(run_movie):
    out = run_movie("flops", "--preset", "mmg", "--size", "nano", "--clock", "3", "--height", "64", "--width", "64")
    assert out.returncode == 0, out.stderr
    assert "clock: full UNet on steps 0,3,6,9 of 10" in out.stdout and "unet_core" in out.stdout


# --- the trained adaptor ----------------------------------------------------------------------------------


def split_tensors(pipe, batch: int = 2, hw: int = 8):
    den = pipe.denoiser
    inputs = unet_inputs(den, batch, hw, hw)
    split = den.network_split()
    with torch.no_grad():
        r_in, *context = split.head(*inputs)
        r_out = split.core(r_in, *context)
    return r_in, r_out, context


def test_adaptor_starts_as_identity_and_round_trips(tmp_path):
    from movie_core import clockwork

    pipe = nano_pipe("mmg", steps=4)
    r_in, r_out, context = split_tensors(pipe)
    adaptor = clockwork.ClockworkAdaptor.for_tensors(r_in, r_out, *context[:2])
    with torch.no_grad():
        assert torch.equal(adaptor(r_in, r_out, *context), r_out)  # zero-initialised up conv: the identity adaptor
        for p in adaptor.parameters():
            p.add_(0.01 * torch.randn_like(p))
        moved = adaptor(r_in, r_out, *context)
    assert moved.shape == r_out.shape and (moved - r_out).abs().max() > 1e-4
    folder = clockwork.save_adaptor(adaptor, tmp_path, {"kind": "step", "clock": 2, "sampler": "x", "steps": 4})
    assert (folder / "adaptor.safetensors").is_file() and folder.name == "adaptor"
    loaded = clockwork.load_adaptor(folder)
    assert loaded.trained_for["clock"] == 2
    with torch.no_grad():
        assert torch.equal(loaded(r_in, r_out, *context), moved)
    # odd sizes: the transposed conv lands on r_out's size
    r_in, r_out, context = split_tensors(pipe, hw=6)
    with torch.no_grad():
        assert loaded(r_in, r_out, *context).shape == r_out.shape


def test_trained_adaptor_in_a_recipe_and_its_sampler_check(tmp_path):
    from movie_core import clockwork
    from movie_core.errors import UsageError

    probe = nano_pipe("mmg", steps=4)
    sampler = probe.denoiser.describe()["scheduler"]
    r_in, r_out, context = split_tensors(probe)
    adaptor = clockwork.ClockworkAdaptor.for_tensors(r_in, r_out, *context[:2])
    clockwork.save_adaptor(adaptor, tmp_path, {"kind": "step", "clock": 2, "sampler": sampler, "steps": 4})
    plain = nano_pipe("mmg", steps=4, clock=2)
    trained = nano_pipe("mmg", steps=4, clock=2, adaptor=str(tmp_path))  # the model folder holding adaptor/
    assert isinstance(trained.step_clock.adaptor, clockwork.ClockworkAdaptor)
    out = trained.edit_batch(images(), "make it sepia", seed=5)
    assert trained.step_clock.adaptor_calls == 2
    assert torch.equal(out, plain.edit_batch(images(), "make it sepia", seed=5))  # untrained == identity
    with pytest.raises(UsageError, match=f"trained for the step clock 2 with the {sampler} sampler at 4 step"):
        nano_pipe("mmg", steps=6, clock=2, adaptor=str(tmp_path / "adaptor"))
    with pytest.raises(UsageError, match="trained for the step clock"):
        nano_pipe("movie", frame_clock=2, adaptor=str(tmp_path))
    with pytest.raises(UsageError, match="no trained adaptor in"):
        nano_pipe("mmg", steps=4, clock=2, adaptor=str(tmp_path / "nothing"))
    with pytest.raises(UsageError, match="without one"):
        nano_pipe("mmg", steps=4, clock=2, adaptor="trained")


# --- the frame clock ----------------------------------------------------------------------------------------


def video(frames: int = 6, size: int = 32):
    from movie_core.data.procedural import make_video

    return make_video(4, frames=frames, size=size)


def edit_clip(pipe, clip, anchor: int | None, batch: int = 4):
    import numpy as np

    from movie_core.edit import FrameEditor

    frames = clip["source_frames"]
    h, w = frames.shape[1:3]
    editor = FrameEditor(pipe, clip["instruction"], size=(h, w), padded=(h, w))
    if anchor is not None:
        editor.record_anchor(frames[anchor], anchor)
    out = []
    for start in range(0, len(frames), batch):
        out += editor.run(editor.tensor(list(frames[start:start + batch])))
    editor.close()
    return torch.stack(out), np.stack(frames)


@pytest.mark.parametrize("name", ["movie", "base"])  # one embedded pass, and 3 guidance branches per frame
def test_frame_clock_runs_the_core_on_every_nth_frame_and_the_anchor(name):
    changes = {"steps": 2} if name == "base" else {}
    plain = nano_pipe(name, **changes)
    clocked = nano_pipe(name, frame_clock=3, **changes)
    clock = clocked.frame_clock
    assert clocked.step_clock is None and clock is not None
    clip = video(7)
    core_rows: list[int] = []
    clock.split.core.register_forward_hook(lambda m, inp, out: core_rows.append(out.shape[0]))
    ref, _ = edit_clip(plain, clip, anchor=4)
    out, _ = edit_clip(clocked, clip, anchor=4)
    steps, passes = clocked.steps, 3 if name == "base" else 1
    # full: the anchor's own pass, then frames 0, 3, 4 (the anchor), 6 of 7; adapted: 1, 2, 5
    assert clock.core_frames == 5 * steps and clock.adaptor_frames == 3 * steps
    assert sum(core_rows) == 5 * steps * passes
    # streaming: per (step, pass) the r_out of the last few full frames (at most KEEP), one row per guidance branch
    assert len(clock._kept) == steps
    assert all(0 < len(kept) <= clock.KEEP and all(t.shape[0] == passes for _, t in kept)
               for kept in clock._kept.values())
    assert [f for f, _ in clock._kept[(0, 0)]] == [6, 4, 3, 0]  # latest first
    full_same = (out[[0, 3, 4, 6]] - ref[[0, 3, 4, 6]]).abs().max().item()
    adapted = (out[[1, 2, 5]] - ref[[1, 2, 5]]).abs().max().item()
    assert full_same < 1e-5 < adapted  # full frames are exactly the unclocked ones; the others move


def test_frame_clock_1_and_no_video_frames_run_full():
    plain = nano_pipe("movie")
    clocked = nano_pipe("movie", frame_clock=2)
    ref = plain.edit_batch(images(3), "make it sepia", seed=5)
    out = clocked.edit_batch(images(3), "make it sepia", seed=5)  # lone images: frame=None, all full
    assert torch.equal(out, ref) and clocked.frame_clock.adaptor_frames == 0


def test_frame_blend_weights():
    from movie_core.clockwork import frame_blend

    # between two full frames: by distance; the later one may be kept from a call run before (FrameClock.order)
    assert frame_blend(1, [0, 3], [], "linear") == [(1 - 1 / 3, ("batch", 0)), (1 / 3, ("batch", 3))]
    assert frame_blend(5, [], [6, 4], "linear") == [(0.5, ("kept", 1)), (0.5, ("kept", 0))]
    # no later full frame known: the earlier one as it is; 'previous' always so
    assert frame_blend(7, [6], [4, 3], "linear") == [(1.0, ("batch", 6))]
    assert frame_blend(1, [0, 3], [], "previous") == [(1.0, ("batch", 0))]
    with pytest.raises(ValueError, match="no earlier full frame"):
        frame_blend(1, [3], [], "linear")


@pytest.mark.parametrize("blend", ["linear", "previous"])
def test_frame_clock_blends_the_full_frames_r_out(blend):
    """The identity adaptor hands the tail exactly the blend of the full frames' r_out; one batch call and the
    frame-by-frame order of a CPU edit give the same frames."""
    clocked = nano_pipe("movie", frame_clock=3, frame_blend=blend)
    clock = clocked.frame_clock
    tail_in: list[torch.Tensor] = []
    clock.split.tail.register_forward_pre_hook(lambda m, args: tail_in.append(args[0].detach().clone()))
    x = images(4)
    whole = clocked.edit_batch(x, "make it sepia", seed=3, frame=0)  # one call: frames 0 (full) 1 2 (adapted) 3
    r = tail_in[0]
    start = r[0] + (r[3] - r[0]) * torch.tensor([1 / 3, 2 / 3])[:, None, None, None] if blend == "linear" else r[[0, 0]]
    torch.testing.assert_close(r[1:3], start, rtol=1e-5, atol=1e-5)
    assert float((r[1] - r[2]).abs().max()) > 1e-4 if blend == "linear" else torch.equal(r[1], r[2])
    # the CPU editor's path: one frame per call, full frames first
    assert clock.order(0, 4) == [0, 3, 1, 2]
    clock.reset()
    single = {i: clocked.edit_batch(x[i:i + 1], "make it sepia", seed=3, frame=i) for i in clock.order(0, 4)}
    torch.testing.assert_close(torch.cat([single[i] for i in range(4)]), whole, rtol=1e-4, atol=1e-4)


def test_frame_adaptor_is_tied_to_its_blend(tmp_path):
    from movie_core import clockwork
    from movie_core.errors import UsageError

    with pytest.raises(UsageError, match="frame_blend previous; this recipe runs .* frame_blend linear"):
        clockwork.check_trained_for({"kind": "frame", "clock": 2, "sampler": "lcm", "steps": 1},  # no blend: old
                                    kind="frame", sampler="lcm", steps=1, where=tmp_path, blend="linear")
    clockwork.check_trained_for({"kind": "frame", "clock": 2, "sampler": "lcm", "steps": 1, "blend": "linear"},
                                kind="frame", sampler="lcm", steps=1, where=tmp_path, blend="linear")


def test_frame_clock_refusals_and_notes(run_movie):
    from movie_core.errors import UsageError
    from movie_core.recipe import preset

    with pytest.raises(UsageError, match="not both"):
        preset("mmg").replace(clock=2, frame_clock=2)
    with pytest.raises(UsageError, match="frame_clock must be a whole number"):
        preset("movie").replace(frame_clock=0)
    one_step = nano_pipe("movie", clock=2)
    assert any("saves nothing" in n for n in one_step.notes)
    ok = run_movie("compose", "--preset", "movie", "--frame-clock", "3", "--json")
    assert ok.returncode == 0, ok.stderr
    assert '"frame_clock": 3' in ok.stdout


@pytest.mark.parametrize("every", [2, 3])
def test_flops_average_the_frame_clock_per_frame(every):
    from movie_core import flops
    from movie_core.composer import compose
    from movie_core.recipe import preset

    recipe = preset("movie").replace(size="nano")
    plain = flops.count(compose(recipe), height=64, width=64)
    clocked = flops.count(compose(recipe.replace(frame_clock=every, adaptor="trained")), height=64, width=64)
    comps, unet = clocked["components"], plain["components"]["unet"]
    evaluations = unet["calls"]
    assert comps["unet_high"]["calls"] == evaluations
    assert comps["unet_core"]["calls"] == pytest.approx(evaluations / every)
    assert comps["adaptor"]["calls"] == pytest.approx(evaluations * (every - 1) / every)
    assert clocked["clock"]["adaptor_params"] > 0 and comps["adaptor"]["tflops_paper"] > 0  # a trained adaptor costs
    for conv in ("paper", "all"):
        key = f"tflops_{conv}"
        core_per_call = comps["unet_core"][key] / comps["unet_core"]["calls"]
        adaptor_per_call = comps["adaptor"][key] / comps["adaptor"]["calls"]
        saved = (core_per_call - adaptor_per_call) * evaluations * (every - 1) / every
        assert clocked[key] == pytest.approx(plain[key] - saved, rel=1e-6)
        assert clocked["clock"][f"unet_saving_{conv}"] == pytest.approx(saved / unet[key], rel=1e-6)


def test_adaptor_paper_flops_count_the_transposed_conv_by_its_input():
    from movie_core import flops

    up = torch.nn.ConvTranspose2d(8, 16, 4, stride=2, padding=1)
    h = torch.zeros(1, 8, 5, 5)
    paper, all_ = flops._measure(lambda: up(h, output_size=[10, 10]))
    assert paper == 2 * (8 * 5 * 5) * 16 * 16 == all_  # input elements x output channels x 4x4 kernel, as torch counts


def test_list_shows_the_clock_options(run_movie):
    out = run_movie("list", "denoiser")
    assert out.returncode == 0, out.stderr
    assert "--frame-clock N" in out.stdout and "--adaptor identity|trained|PATH" in out.stdout


def test_adaptor_without_r_out_ignores_the_last_full_features_and_round_trips(tmp_path):
    """The paper's ablation (r_in, time and text only): r_out_prev gives the output its shape and nothing else; the
    choice is recorded in adaptor.json and read back; the default adaptor depends on r_out_prev."""
    from movie_core import clockwork

    pipe = nano_pipe("mmg", steps=4)
    r_in, r_out, context = split_tensors(pipe)
    ablated = clockwork.ClockworkAdaptor.for_tensors(r_in, r_out, *context[:2], use_r_out=False)
    full = clockwork.ClockworkAdaptor.for_tensors(r_in, r_out, *context[:2])
    assert ablated.down is None and ablated.config["use_r_out"] is False
    assert sum(p.numel() for p in ablated.parameters()) < sum(p.numel() for p in full.parameters())
    with torch.no_grad():
        for p in (*ablated.parameters(), *full.parameters()):
            p.add_(0.01 * torch.randn_like(p))
        other = torch.randn_like(r_out)
        assert torch.equal(ablated(r_in, r_out, *context), ablated(r_in, other, *context))
        assert not torch.equal(full(r_in, r_out, *context), full(r_in, other, *context))
        folder = clockwork.save_adaptor(ablated, tmp_path, {"kind": "step", "clock": 2, "sampler": "x", "steps": 4})
        loaded = clockwork.load_adaptor(folder)
        assert loaded.down is None
        assert torch.equal(loaded(r_in, r_out, *context), ablated(r_in, r_out, *context))
