"""Issue 20, items 5 and 6: the processing size and batch policy for big frames, and what the output keeps
(exact odd sizes, the source's time base, subtitle streams, complete variable-frame-rate Matroska files)."""

from __future__ import annotations

import tempfile
import warnings
from fractions import Fraction
from pathlib import Path

import av
import diffusers  # noqa: F401  (imported here, its log handler writes to the session's stderr, not a closed capture)
import pytest
import torch

from movie_core import edit as edit_mod
from movie_core.errors import MovieWarning
from movie_core.video import TEMP_TAG, CorruptVideoError, make_test_video, open_sink, open_source, probe

from cli_helpers import run_cli
from media_helpers import cut_in_half, digest, vfr_mkv, with_subtitles

MODEL = ["--model", "nano:mobile-pix2pix-1step", "--no-progress"]


def copy_frames(source_path: Path, output: Path) -> list[str]:
    """The identity transform through a sink; returns the warnings it gave."""
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        with open_source(source_path) as source, open_sink(output, source) as sink:
            for frame, pts in source.frames(with_pts=True):
                sink.write(frame, pts)
    return [str(w.message) for w in caught if issubclass(w.category, MovieWarning)]


def video_pts(path: Path) -> list[int]:
    with av.open(str(path)) as c:
        return sorted(f.pts for f in c.decode(video=0))


def subtitle_texts(path: Path) -> tuple[str, list[tuple[float, bytes]]]:
    """(codec, [(start seconds, text)]) of a file's first subtitle stream; mov_text's length prefix removed."""
    with av.open(str(path)) as c:
        stream = c.streams.subtitles[0]
        codec = {"srt": "subrip", "ssa": "ass"}.get(stream.codec_context.name, stream.codec_context.name)
        out = []
        for packet in c.demux(stream):
            if packet.size:
                data = bytes(packet)
                out.append((float(packet.pts * packet.time_base), data[2:] if codec == "mov_text" else data))
        return codec, out


def with_ass(video: Path, dst: Path) -> Path:
    """`video`'s video stream in a Matroska file beside an ASS subtitle stream (which MP4 cannot take)."""
    ass = dst.with_suffix(".ass")
    ass.write_text(
        "[Script Info]\nScriptType: v4.00+\n\n"
        "[V4+ Styles]\nFormat: Name, Fontname, Fontsize\nStyle: Default,Arial,20\n\n"
        "[Events]\nFormat: Layer, Start, End, Style, Name, MarginL, MarginR, MarginV, Effect, Text\n"
        "Dialogue: 0,0:00:00.00,0:00:00.10,Default,,0,0,0,,styled\n"
    )
    with av.open(str(video)) as v, av.open(str(ass)) as s, av.open(str(dst), "w") as out:
        pairs = [(v, v.streams.video[0]), (s, s.streams.subtitles[0])]
        made = [out.add_stream_from_template(stream) for _, stream in pairs]
        for (container, stream), target in zip(pairs, made):
            for packet in container.demux(stream):
                if packet.dts is not None and packet.size:
                    packet.stream = target
                    out.mux(packet)
    ass.unlink()
    return dst


# --- 5. big frames: processing size and batch ------------------------------------------------------------------


def test_default_size_is_the_models_working_size_on_the_long_side() -> None:
    policy, why = edit_mod.size_policy("auto", 512)
    assert policy.target(2160, 3840) == (288, 512) and "working size" in why
    assert policy.padded(288, 512) == (288, 512)
    assert policy.target(1080, 1920) == (288, 512)
    assert policy.target(2160, 1215) == (512, 288)  # portrait: the long side is the height
    assert policy.target(240, 320) == (240, 320)  # smaller frames are not enlarged


def test_flags_and_recipe_resolution_override_the_working_size() -> None:
    assert edit_mod.size_policy("auto", 512, max_side=256)[0].target(2160, 3840) == (144, 256)
    assert edit_mod.size_policy("auto", 512, height=360)[0].target(2160, 3840) == (360, 640)
    assert edit_mod.size_policy("auto", 512, height=64, width=96)[0].target(2160, 3840) == (64, 96)
    assert edit_mod.size_policy("keep", 512)[0].target(2160, 3840) == (2160, 3840)
    assert edit_mod.size_policy("max-side:1024", 512)[0].target(2160, 3840) == (576, 1024)
    assert edit_mod.size_policy("128x256", 512)[0].target(2160, 3840) == (128, 256)
    assert edit_mod.size_policy("max-side:1024", 512, max_side=128)[0].target(2160, 3840) == (72, 128)  # flag wins
    policy, why = edit_mod.size_policy("auto", None)
    assert policy.target(2160, 3840) == (2160, 3840) and "no working size" in why


def test_working_side_comes_from_the_denoiser_and_the_encoder() -> None:
    from movie_core.composer import compose
    from movie_core.loading import build
    from movie_core.recipe import preset

    pipe = build(compose(preset("movie").replace(size="nano")))
    assert pipe.denoiser.native_latent_size() == pipe.denoiser.unet.config.sample_size == 32
    assert edit_mod.working_side(pipe) == 32 * pipe.encoder.downscale == 256
    pipe.denoiser.unet.register_to_config(sample_size=64)  # what an SD-1.5 folder's unet config says
    assert edit_mod.working_side(pipe) == 512

    class Silent:  # a third-party denoiser without the optional member
        pass

    pipe.denoiser = Silent()
    assert edit_mod.working_side(pipe) is None


def test_batch_fits_the_memory_available() -> None:
    gib = 2**30
    four_k = edit_mod.frame_bytes("nano", torch.float32, (2160, 3840))
    working = edit_mod.frame_bytes("nano", torch.float32, (288, 512))
    assert four_k == 2160 * 3840 * edit_mod.PEAK_BYTES_PER_PIXEL["nano"]
    assert edit_mod.frame_bytes("nano", torch.float16, (288, 512)) == working // 2
    with_source = edit_mod.frame_bytes("nano", torch.float32, (288, 512), (2160, 3840))
    assert with_source == working + 2160 * 3840 * edit_mod.SOURCE_BYTES_PER_PIXEL  # the resize buffers count too
    most = max(edit_mod.PEAK_BYTES_PER_PIXEL.values())
    assert edit_mod.frame_bytes("unknown-size", torch.float32, (8, 8)) == 64 * most
    assert edit_mod.choose_batch(working, 8 * gib) == (4, "memory")  # capped at the default
    assert edit_mod.choose_batch(four_k, 100 * gib) == (int(0.5 * 100 * gib // four_k), "memory")
    assert 1 < edit_mod.choose_batch(four_k, 100 * gib)[0] < 4
    assert edit_mod.choose_batch(four_k, 1 * gib) == (1, "memory")  # never below one frame
    assert edit_mod.choose_batch(four_k, 1 * gib, requested=6) == (6, "--batch-size")
    assert edit_mod.choose_batch(working, None) == (4, "memory unknown")
    assert edit_mod.available_memory(torch.device("cpu")) is None or edit_mod.available_memory(
        torch.device("cpu")) > 0


def test_plan_line_says_size_batch_and_resize() -> None:
    line = edit_mod.plan_line((2160, 3840), (288, 512), "the model's working size", 4, "memory")
    assert line == ("processing 3840x2160 at 512x288 (the model's working size), batch 4 (memory); "
                    "output resized back to 3840x2160")
    same = edit_mod.plan_line((48, 64), (48, 64), "x", 2, "memory")
    assert same == "processing 64x48 at its own size, batch 2 (memory)"


def test_edit_of_a_frame_above_the_working_size_runs_smaller_and_comes_back_full_size(
        tmp_path: Path, capfd, monkeypatch) -> None:
    src = make_test_video(tmp_path / "wide.mp4", seconds=0.25, fps=8, width=320, height=192, audio=False)
    out = tmp_path / "out" / "edited.mp4"
    out.parent.mkdir()
    code, stdout, err = run_cli(capfd, "edit", str(src), "-p", "make it sepia", "-o", str(out), *MODEL)
    assert code == 0, err
    assert ("note: processing 320x192 at 256x154 (the model's working size, 256 on the long side), batch 4 "
            "(memory); output resized back to 320x192") in err.splitlines()
    assert "at 256x154" in stdout
    info = probe(out)
    assert (info["width"], info["height"], info["frame_count"]) == (320, 192, 2)
    # little memory: fewer frames per batch, said on the same line
    monkeypatch.setattr(edit_mod, "available_memory", lambda device: 1)
    code, _, err = run_cli(capfd, "edit", str(src), "-p", "make it sepia", "-o", str(out), "--overwrite",
                           "--max-side", "64", *MODEL)
    assert code == 0, err
    assert "note: processing 320x192 at 64x38 (--max-side), batch 1 (memory); output resized back to 320x192" in err
    assert (probe(out)["width"], probe(out)["height"]) == (320, 192)


# --- 6. what the output keeps -----------------------------------------------------------------------------------


@pytest.mark.parametrize(("width", "height"), [(7, 5), (1, 1), (65, 48)])
def test_odd_sizes_come_back_exactly(tmp_path: Path, width: int, height: int) -> None:
    src = make_test_video(tmp_path / "odd.mp4", seconds=0.25, width=width, height=height, audio=False)
    out = tmp_path / "out.mp4"
    copy_frames(src, out)
    info = probe(out)
    assert (info["width"], info["height"], info["frame_count"]) == (width, height, 6)


def test_matroska_time_base_and_timestamps_are_kept_in_mp4(tmp_path: Path) -> None:
    src = make_test_video(tmp_path / "in.mkv", seconds=0.5, audio=False)
    assert probe(src)["time_base"] == Fraction(1, 1000)
    for ext in (".mp4", ".mov", ".mkv"):
        out = tmp_path / f"out{ext}"
        copy_frames(src, out)
        assert probe(out)["time_base"] == Fraction(1, 1000), ext
        assert video_pts(out) == video_pts(src), ext


def test_subtitles_are_copied_where_the_container_takes_them(tmp_path: Path) -> None:
    video = make_test_video(tmp_path / "v.mp4", seconds=0.5, audio=False)
    src = with_subtitles(video, tmp_path / "subbed.mkv")
    expected = [(0.0, b"hello"), (0.1, b"world")]
    assert subtitle_texts(src) == ("subrip", expected)
    assert copy_frames(src, tmp_path / "out.mkv") == []
    assert subtitle_texts(tmp_path / "out.mkv") == ("subrip", expected)
    assert copy_frames(src, tmp_path / "out.mp4") == []
    assert subtitle_texts(tmp_path / "out.mp4") == ("mov_text", expected)
    assert copy_frames(tmp_path / "out.mp4", tmp_path / "back.mkv") == []  # mov_text back to SubRip
    assert subtitle_texts(tmp_path / "back.mkv") == ("subrip", expected)
    assert copy_frames(tmp_path / "out.mp4", tmp_path / "again.mp4") == []  # mov_text as it is
    assert subtitle_texts(tmp_path / "again.mp4") == ("mov_text", expected)


def test_subtitles_a_container_cannot_take_are_said_in_one_line(tmp_path: Path) -> None:
    src = with_ass(make_test_video(tmp_path / "v.mp4", seconds=0.5, audio=False), tmp_path / "styled.mkv")
    said = copy_frames(src, tmp_path / "out.mp4")
    assert len(said) == 1 and "1 subtitle stream(s)" in said[0] and "(ass)" in said[0] and "\n" not in said[0]
    with av.open(str(tmp_path / "out.mp4")) as c:
        assert not c.streams.subtitles
    assert copy_frames(src, tmp_path / "out.mkv") == []  # Matroska takes ASS as it is
    assert subtitle_texts(tmp_path / "out.mkv")[0] == "ass"


def test_complete_variable_frame_rate_mkv_is_read_whole(tmp_path: Path) -> None:
    src = vfr_mkv(tmp_path / "vfr.mkv", [33] * 10 + [200] * 10)  # declared 30 fps over 2.16 s: "65 frames"
    with open_source(src) as source:
        assert source.frame_count == 20
        frames = list(source.frames(with_pts=True))
        assert len(frames) == 20 and source.frame(15).shape == (16, 16, 3)
    out = tmp_path / "out.mp4"
    copy_frames(src, out)
    assert video_pts(out) == [pts for _, pts in frames]  # the irregular timing is kept


def test_truncated_mkv_is_still_refused_by_its_timestamps(tmp_path: Path) -> None:
    src = cut_in_half(make_test_video(tmp_path / "cut.mkv", seconds=2, audio=False))
    with pytest.raises(CorruptVideoError, match=r"truncated video: .*cut.mkv \(stream ends at [\d.]+ s of 2.00 s"):
        copy_frames(src, tmp_path / "out.mp4")
    assert not (tmp_path / "out.mp4").exists()


# --- the CLI over these media: exit code, one line for errors, no leftovers, input unchanged ----------------------


def battery(d: Path) -> dict[str, tuple[Path, str, int, str]]:
    """case -> (input, output name, exit code, a fragment of stdout (success) or of the one stderr line)."""
    clip = make_test_video(d / "clip.mp4", seconds=0.25, fps=8, width=32, height=24, audio=False)
    return {
        "odd-7x5": (make_test_video(d / "odd.mp4", seconds=0.25, fps=8, width=7, height=5, audio=False),
                    "out.mp4", 0, "edited 2 frames"),
        "one-pixel": (make_test_video(d / "one.mp4", seconds=0.125, fps=8, width=1, height=1, audio=False),
                      "out.mp4", 0, "edited 1 frames"),
        "vfr-mkv": (vfr_mkv(d / "vfr.mkv", [33, 33, 200]), "out.mp4", 0, "edited 3 frames"),
        "subtitles-mkv": (with_subtitles(clip, d / "subbed.mkv"), "out.mkv", 0, "edited 2 frames"),
        "subtitles-mp4": (with_subtitles(clip, d / "subbed2.mkv"), "out.mp4", 0, "edited 2 frames"),
        "ass-into-mp4": (with_ass(clip, d / "styled.mkv"), "out.mp4", 0, "edited 2 frames"),
        "big-frame": (make_test_video(d / "big.mp4", seconds=0.125, fps=8, width=300, height=40, audio=False),
                      "out.mp4", 0, "at 256x34"),
        "truncated-mkv": (cut_in_half(make_test_video(d / "cut.mkv", seconds=2, width=32, height=24, audio=False)),
                          "out.mp4", 1, "truncated video"),
    }


EXPECTED_SIZE = {"odd-7x5": (7, 5), "one-pixel": (1, 1), "big-frame": (300, 40), "vfr-mkv": (16, 16)}


@pytest.fixture(scope="module")
def media(tmp_path_factory: pytest.TempPathFactory) -> dict[str, tuple[Path, str, int, str]]:
    return battery(tmp_path_factory.mktemp("media"))


@pytest.mark.parametrize("case", ["odd-7x5", "one-pixel", "vfr-mkv", "subtitles-mkv", "subtitles-mp4",
                                  "ass-into-mp4", "big-frame", "truncated-mkv"])
def test_cli_media_battery(media, case: str, tmp_path: Path, capfd) -> None:
    src, name, code_expected, fragment = media[case]
    before = digest(src)
    temp = Path(tempfile.gettempdir())
    temp_before = {p.name for p in temp.iterdir() if TEMP_TAG in p.name}
    out = tmp_path / name
    code, stdout, err = run_cli(capfd, "edit", str(src), "-p", "make it sepia", "-o", str(out), *MODEL)
    assert code == code_expected, err
    assert "Traceback" not in err
    lines = err.strip().splitlines()
    if code_expected:
        assert len(lines) == 1 and lines[0].startswith("movie: error:") and fragment in lines[0], err
    else:
        assert fragment in stdout, stdout
        said = [line for line in lines if line.startswith("warning:")]
        if case == "ass-into-mp4":  # the one thing this output cannot keep, in one line
            assert len(said) == 1 and "1 subtitle stream(s)" in said[0] and "(ass)" in said[0], err
        else:
            assert said == [], err
        info = probe(out)
        if case in EXPECTED_SIZE:
            assert (info["width"], info["height"]) == EXPECTED_SIZE[case]
        if case == "vfr-mkv":
            assert video_pts(out) == video_pts(src)
        if case.startswith("subtitles"):
            assert subtitle_texts(out)[1] == [(0.0, b"hello"), (0.1, b"world")]
        with open_source(out) as result:
            assert sum(1 for _ in result.frames()) == probe(src)["frame_count"]
    assert [p.name for p in tmp_path.iterdir()] == ([] if code_expected else [name])  # nothing else, no temp files
    assert {p.name for p in temp.iterdir() if TEMP_TAG in p.name} <= temp_before
    assert digest(src) == before


def test_plan_line_says_how_the_detail_transfer_reaches_the_source_size() -> None:
    line = edit_mod.plan_line((240, 320), (192, 256), "the model's working size", 4, "memory", "global")
    assert line.endswith("output: the edit's one colour map per frame applied to the source's own 320x240 pixels "
                         "(--detail global)")
    assert "colour maps per window" in edit_mod.plan_line((48, 64), (48, 64), "x", 2, "memory", "local")
