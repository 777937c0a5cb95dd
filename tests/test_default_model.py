"""The built-in default model as a new user meets it: the same seed gives the same video (issue 24 item 5).

Runs `movie edit` on the shipped nano weights (no --init random) at a small size, in-process through
`movie_core.cli.main`.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import attrs
import numpy as np
import pytest
from PIL import Image

from movie_core.cli import main
from movie_core.video import make_test_video, open_source


def edit(capfd, *args: object) -> tuple[int, str, str]:
    """Run `movie edit ARGS...` in-process; returns (exit status, stdout, stderr)."""
    code = 0
    try:
        main(["edit", *map(str, args)])
    except SystemExit as exc:
        code = exc.code if isinstance(exc.code, int) else (0 if exc.code is None else 1)
    out, err = capfd.readouterr()
    return code, out, err


def frames_of(path: Path) -> list[np.ndarray]:
    with open_source(path) as source:
        return list(source.frames())


@pytest.fixture(scope="module")
def clip(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A 6-frame 96x72 H.264 MP4 with audio: a moving square over a panning gradient."""
    return make_test_video(tmp_path_factory.mktemp("clip") / "clip.mp4", seconds=0.75, fps=8, width=96, height=72)


def pngs(folder: Path) -> list[np.ndarray]:
    return [np.asarray(Image.open(f).convert("RGB")).astype(int) for f in sorted(folder.glob("*.png"))]


def test_same_command_same_bytes_across_runs(tmp_path: Path, clip: Path, capfd) -> None:
    """Four runs of the same sepia command write byte-identical videos (issue 24's acceptance: four runs)."""
    outputs = [tmp_path / f"{name}.mp4" for name in "abcd"]
    for out in outputs:
        code, _, err = edit(capfd, clip, "-p", "make it sepia", "-o", out, "--no-progress")
        assert code == 0, err
    assert len(frames_of(outputs[0])) == 6
    for out in outputs[1:]:
        assert out.read_bytes() == outputs[0].read_bytes(), f"{out.name} differs from {outputs[0].name}"


def test_same_frames_at_every_batch_size(tmp_path: Path, clip: Path, capfd) -> None:
    """Batches of 4 (the default here), 1 and 3 frames give the same frames, compared losslessly (PNG frames, no
    encoder to hide a changed rounding). Before the model saw one frame per call on the CPU, a few uint8 values per
    video differed by 1 (at 256x192 they then spread to 26/255 through H.264)."""
    folders = {}
    for batch in ("4", "1", "3"):
        folders[batch] = tmp_path / f"batch{batch}"
        code, _, err = edit(capfd, clip, "-p", "make it sepia", "-o", folders[batch], "--no-progress",
                            "--batch-size", batch)
        assert code == 0, err
    reference = pngs(folders["4"])
    assert len(reference) == 6
    for batch in ("1", "3"):
        frames = pngs(folders[batch])
        assert len(frames) == len(reference)
        differing = sum(int((a != b).sum()) for a, b in zip(reference, frames))
        assert differing == 0, f"batch {batch}: {differing} uint8 values differ from batch 4"


# --- quiet runs (issue 24 item 6) ----------------------------------------------------------------

# a plain install has neither accelerate nor peft (the train extra's; peft needs accelerate, and diffusers imports
# accelerate through its peft integration whenever peft is there)
HIDE_ACCELERATE = ("import sys; sys.modules['accelerate'] = None; sys.modules['peft'] = None; "
                   "from movie_core.cli import main; main()")


def test_default_model_run_prints_only_its_own_notes(tmp_path: Path, clip: Path) -> None:
    """A plain install (no accelerate) with the libraries' warnings asked for (the user's DIFFUSERS_VERBOSITY and
    TRANSFORMERS_VERBOSITY win over movie's quiet defaults): `movie edit --no-progress` on the default model still
    writes only `note:` lines on stderr, so the warnings' causes are gone, not just hidden (the TAESD config's
    `block_out_channels`, diffusers' low_cpu_mem_usage fallback without accelerate, the "Loading weights" bar)."""
    env = {k: v for k, v in os.environ.items() if k != "HF_HUB_DISABLE_PROGRESS_BARS"}
    env |= {"DIFFUSERS_VERBOSITY": "warning", "TRANSFORMERS_VERBOSITY": "warning"}
    out = tmp_path / "out.mp4"
    proc = subprocess.run([sys.executable, "-c", HIDE_ACCELERATE, "edit", str(clip), "-p", "make it sepia",
                           "-o", str(out), "--no-progress"], capture_output=True, text=True, env=env, timeout=600)
    assert proc.returncode == 0, proc.stderr
    lines = [line for line in proc.stderr.splitlines() if line.strip()]
    assert lines and all(line.startswith("note: ") for line in lines), proc.stderr
    assert out.is_file()


def test_loading_through_the_api_is_quiet(capfd, monkeypatch) -> None:
    """load_pipeline (the API's loading layer) on the built-in model: no library warning and no "Loading weights"
    bar on stderr with both libraries at their default verbosity; the progress-bar setting is restored after."""
    import diffusers
    from transformers.utils import logging as hf_logging

    from movie_core.loading import load_pipeline, resolve_weights
    from movie_core.recipe import preset

    monkeypatch.delenv("HF_HUB_DISABLE_PROGRESS_BARS", raising=False)
    level = diffusers.utils.logging.get_verbosity()
    bars = hf_logging.is_progress_bar_enabled()
    diffusers.utils.logging.set_verbosity_warning()
    hf_logging.enable_progress_bar()
    try:
        capfd.readouterr()
        recipe = preset("movie").replace(size="nano")
        load_pipeline(recipe, resolve_weights(recipe, None))
        err = capfd.readouterr().err
        assert hf_logging.is_progress_bar_enabled()
    finally:
        diffusers.utils.logging.set_verbosity(level)
        (hf_logging.enable_progress_bar if bars else hf_logging.disable_progress_bar)()
    assert err == ""


def test_saved_taesd_folder_loads_without_the_config_warning(tmp_path: Path, capfd, caplog) -> None:
    """TAESD.save_pretrained leaves out AutoencoderTiny's `block_out_channels` copy; a folder diffusers saved with it
    loads without diffusers' line about it, while another unexpected key still warns."""
    import diffusers

    from movie_core.components import BuildContext
    from movie_plugins.autoencoders._sd1 import TAESD, build_taesd

    ctx = BuildContext(size="nano")
    tae = build_taesd(ctx, None)
    tae.save_pretrained(tmp_path)
    config = json.loads((tmp_path / "taesd" / "config.json").read_text())
    assert "block_out_channels" not in config and config["decoder_block_out_channels"]
    level = diffusers.utils.logging.get_verbosity()
    diffusers.utils.logging.set_verbosity_warning()
    try:
        for extra, warns in [({"block_out_channels": config["decoder_block_out_channels"]}, False),
                             ({"block_out_channels": config["decoder_block_out_channels"], "colour": 1}, True)]:
            (tmp_path / "taesd" / "config.json").write_text(json.dumps(config | extra))
            capfd.readouterr()
            caplog.clear()
            loaded = build_taesd(attrs.evolve(ctx, weights=tmp_path), None)
            assert isinstance(loaded, TAESD)
            # diffusers' handler writes to stderr; when an earlier test let its records propagate, pytest's log
            # capture holds them instead
            said = capfd.readouterr().err + caplog.text
            assert ("were passed to AutoencoderTiny" in said) == warns, extra
    finally:
        diffusers.utils.logging.set_verbosity(level)


# --- what the model knows (issue 24 item 4) --------------------------------------------------------

def test_builtin_manifests_list_the_training_phrasings() -> None:
    """Every shipped nano stage lists the procedural edits with the phrasings of their training split (the
    held-out phrasing, kept for evaluation, is not among them)."""
    from movie_core.data import procedural
    from movie_core.known_edits import read_edits
    from movie_core.weights import builtin_model

    for stage in ("instruct-pix2pix", "mobile-pix2pix", "mobile-pix2pix-mmg", "vpred", "mobile-pix2pix-1step"):
        known = read_edits(builtin_model(stage))
        assert known is not None, stage
        assert set(known) == set(procedural.EDIT_NAMES)
        for name, phrasings in known.items():
            assert phrasings == list(procedural.phrasings(name, "train"))
            assert procedural.EDITS[name].held_out not in phrasings


def test_closest_edits_by_word_overlap() -> None:
    from movie_core.data import procedural
    from movie_core.known_edits import NEAR, closest, far_warning

    known = {name: list(procedural.phrasings(name, "train")) for name in procedural.EDIT_NAMES}
    for instruction, edit in [("make it sepia", "sepia"), ("Make it SEPIA!", "sepia"), ("tint it blue", "blue_tint"),
                              ("make it greyscale", "grayscale"), ("black and white please", "grayscale"),
                              ("make it look like a film negative", "invert")]:
        best = closest(instruction, known)[0]
        assert (best["edit"], best["score"] >= NEAR) == (edit, True), instruction
        assert far_warning(instruction, known) is None
    for instruction in ["make it look like a Van Gogh painting", "add fireworks to the sky", "do nothing"]:
        line = far_warning(instruction, known)
        assert line is not None and instruction in line
        names = [r["edit"] for r in closest(instruction, known)]
        assert len(names) == 3 and all(f"{name} ('" in line for name in names)


def test_far_instruction_warns_in_one_line_and_still_runs(tmp_path: Path, clip: Path, capfd) -> None:
    out = tmp_path / "out.mp4"
    code, stdout, err = edit(capfd, clip, "-p", "add fireworks to the sky", "-o", out, "--no-progress")
    assert code == 0, err
    warnings = [line for line in err.splitlines() if line.startswith("warning: ")]
    assert len(warnings) == 1 and "'add fireworks to the sky' is far from every instruction" in warnings[0], err
    assert out.is_file() and stdout.startswith("edited 6 frames")
    code, _, err = edit(capfd, clip, "-p", "make it sepia", "-o", tmp_path / "known.mp4", "--no-progress")
    assert code == 0 and "warning" not in err, err


def test_list_edits(capfd) -> None:
    from movie_core.data import procedural

    code = 0
    try:
        main(["list", "--edits", "--json"])
    except SystemExit as exc:
        code = exc.code if isinstance(exc.code, int) else 1
    listed = json.loads(capfd.readouterr().out)
    assert code == 0
    assert listed["sepia"] == list(procedural.phrasings("sepia", "train"))
    try:
        main(["list", "--edits"])
    except SystemExit as exc:
        code = exc.code if isinstance(exc.code, int) else 1
    text = capfd.readouterr().out
    assert code == 0 and "'make it sepia'" in text and text.count("\n  ") == len(procedural.EDIT_NAMES)


def test_list_edits_of_a_model_that_lists_none(tmp_path: Path, capfd) -> None:
    (tmp_path / "movie.json").write_text(json.dumps({"format": "movie-model/1"}))
    with pytest.raises(SystemExit) as exc:
        main(["list", "--edits", "--model", str(tmp_path)])
    err = capfd.readouterr().err
    assert exc.value.code != 0 and len(err.strip().splitlines()) == 1 and "does not list its edits" in err, err
