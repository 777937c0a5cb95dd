"""Training data: the procedural generator's exact edits, the nano dataset writer, and the readers."""

from __future__ import annotations

import io
import json
import subprocess
import sys
import time

import numpy as np
import pytest
from PIL import Image

from movie_core.data import datasets as data
from movie_core.data import procedural, writer
from movie_core.data.datasets import ImageFolderDataset, ParquetDataset, VideoDataset, open_dataset
from movie_core.data.procedural import EDITS, apply_edit, make_sample, make_scene, make_video
from movie_core.errors import MovieError, UsageError

try:
    import pyarrow  # noqa: F401

    HAVE_PYARROW = True
except ImportError:
    HAVE_PYARROW = False


@pytest.fixture(scope="module")
def image():
    """A procedural scene plus a strip of every gray level, so edits see the whole range."""
    scene = make_scene(np.random.default_rng(5), 32).copy()
    ramp = np.repeat(np.arange(256, dtype=np.uint8)[None, :, None], 3, axis=2)
    rgb = np.random.default_rng(1).integers(0, 256, (1, 256, 3), dtype=np.uint8)
    return scene, np.concatenate([ramp, rgb], axis=0)


def _saturation(x: np.ndarray) -> float:
    x = x.astype(np.float64)
    return float((x.max(-1) - x.min(-1)).mean())


# ------------------------------------------------------------------------------------------------ edits


def test_every_edit_matches_its_closed_form(image):
    scene, strip = image
    for img in (scene, strip):
        x = img.astype(np.float64)
        luma = x @ np.array([0.299, 0.587, 0.114])

        gray = apply_edit("grayscale", img)
        assert (gray[..., 0] == gray[..., 1]).all() and (gray[..., 1] == gray[..., 2]).all()
        assert np.abs(gray[..., 0] - luma).max() <= 0.5 + 1e-6

        expected = np.clip(x @ procedural.SEPIA.T, 0, 255)
        assert np.abs(apply_edit("sepia", img) - expected).max() <= 0.5 + 1e-6
        assert np.array_equal(apply_edit("sepia", np.array([[[100, 150, 200]]], np.uint8))[0, 0],
                              [min(255, round(0.393 * 100 + 0.769 * 150 + 0.189 * 200)),
                               min(255, round(0.349 * 100 + 0.686 * 150 + 0.168 * 200)),
                               round(0.272 * 100 + 0.534 * 150 + 0.131 * 200)])

        assert np.array_equal(apply_edit("invert", img), 255 - img)
        assert np.array_equal(apply_edit("invert", apply_edit("invert", img)), img)

        for channel, name in enumerate(("red_tint", "green_tint", "blue_tint")):
            tinted = apply_edit(name, img).astype(np.float64)
            target = np.zeros(3)
            target[channel] = 255
            assert np.abs(tinted - (0.7 * x + 0.3 * target)).max() <= 0.5 + 1e-6
            others = [c for c in range(3) if c != channel]
            shift = tinted.mean((0, 1)) - x.mean((0, 1))
            assert shift[channel] > 0 and all(shift[c] < 0 for c in others)

        bright, dark = apply_edit("brighter", img), apply_edit("darker", img)
        assert bright.mean() > img.mean() and (bright >= img).all()
        assert dark.mean() < img.mean() and (dark <= img).all()

        more, less = apply_edit("more_contrast", img), apply_edit("less_contrast", img)
        assert more.std() > img.std() > less.std()
        assert np.abs(less - ((x - 127.5) * 0.5 + 127.5)).max() <= 0.5 + 1e-6

        poster = apply_edit("posterize", img)
        assert set(np.unique(poster)) <= {0, 85, 170, 255}
        assert np.abs(poster.astype(int) - img).max() <= 43

        dark_night = apply_edit("night", img)
        assert dark_night.mean() < 0.6 * img.mean()
        assert dark_night[..., 2].mean() > dark_night[..., 0].mean()
        gray = luma[..., None]
        expected = (gray + 0.4 * (x - gray)) * np.array([0.30, 0.40, 0.65]) + np.array([0.0, 0.02, 0.08]) * 255
        assert np.abs(dark_night - np.clip(expected, 0, 255)).max() <= 0.5 + 1e-6
    saturated = strip.max(-1).astype(int) - strip.min(-1) > 128  # strongly coloured pixels lose colour
    assert saturated.sum() > 20
    assert _saturation(apply_edit("night", strip)[saturated]) < 0.5 * _saturation(strip[saturated])


def test_apply_edit_is_the_quantised_float_function_and_works_per_frame(image):
    scene, _ = image
    stack = np.stack([scene, 255 - scene, scene // 2])
    for name, edit in EDITS.items():
        expected = np.round(np.clip(edit(scene / 255.0), 0, 1) * 255).astype(np.uint8)
        assert np.array_equal(apply_edit(name, scene), expected), name
        per_frame = np.stack([apply_edit(name, frame) for frame in stack])
        assert np.array_equal(apply_edit(name, stack), per_frame), name
    with pytest.raises(UsageError, match="unknown edit 'sparkle'"):
        apply_edit("sparkle", scene)
    with pytest.raises(UsageError):
        apply_edit("invert", scene.astype(np.float32))


def test_phrasings_several_per_edit_unique_and_one_held_out():
    assert len(EDITS) >= 12
    assert {"grayscale", "sepia", "invert", "red_tint", "green_tint", "blue_tint", "brighter", "darker",
            "more_contrast", "less_contrast", "posterize", "night"} <= set(EDITS)
    every = [p for edit in EDITS.values() for p in edit.phrasings]
    assert len(every) == len(set(every)), "a phrasing is shared between edits or repeated"
    for edit in EDITS.values():
        assert len(edit.phrasings) >= 5 and len(edit.train_phrasings) >= 4
        assert edit.held_out not in edit.train_phrasings
        assert procedural.phrasings(edit.name, "test") == (edit.held_out,)


# ---------------------------------------------------------------------------------------------- scenes


def test_samples_are_deterministic_and_seeds_differ():
    a, b, c = make_sample(7, 48), make_sample(7, 48), make_sample(8, 48)
    assert a["source"].tobytes() == b["source"].tobytes() and a["edited"].tobytes() == b["edited"].tobytes()
    assert a["instruction"] == b["instruction"] and a["edit"] == b["edit"]
    assert a["source"].tobytes() != c["source"].tobytes()
    assert a["source"].shape == (48, 48, 3) and a["source"].dtype == np.uint8
    assert np.array_equal(a["edited"], apply_edit(a["edit"], a["source"]))
    assert a["instruction"] in EDITS[a["edit"]].phrasings
    v1, v2 = make_video(3, 4, 32), make_video(3, 4, 32)
    assert v1["source_frames"].tobytes() == v2["source_frames"].tobytes()
    assert make_scene(np.random.default_rng(0), (24, 40)).shape == (24, 40, 3)


def test_scenes_are_varied():
    scenes = [make_sample(seed, 48)["source"].astype(np.float64) for seed in range(40)]
    for scene in scenes:
        assert scene.std() > 8, "a near-flat scene"
    for i in range(len(scenes)):
        for j in range(i + 1, len(scenes)):
            assert np.abs(scenes[i] - scenes[j]).mean() > 10, (i, j)
    edits = {make_sample(seed, 16)["edit"] for seed in range(200)}
    assert edits == set(EDITS), "every edit should turn up in 200 samples"


def test_scene_exposure_reaches_night_photo_darkness(monkeypatch):
    """Dark sources must be in the data, or "make it darker" is learnt as a target brightness (generator v2)."""
    def lumas() -> np.ndarray:
        return np.array([(make_scene(np.random.default_rng(seed), 32) / 255.0 @ procedural.LUMA).mean()
                         for seed in range(150)])

    dark = (lumas() < 0.2).mean()  # a night photo's mean luma is about 0.24: scenes should go below
    monkeypatch.setattr(procedural, "EXPOSED_FRACTION", 0.0)
    unexposed = (lumas() < 0.2).mean()
    assert dark >= 0.08 and unexposed <= 0.04, (dark, unexposed)


def test_videos_move_and_are_edited_per_frame():
    for seed in range(4):
        video = make_video(seed, 8, 48)
        frames, edited = video["source_frames"], video["edited_frames"]
        assert frames.shape == (8, 48, 48, 3) and edited.shape == frames.shape
        for t in range(1, len(frames)):
            assert np.abs(frames[t].astype(int) - frames[t - 1]).mean() > 0.5, (seed, t)
        for t in range(len(frames)):
            assert np.array_equal(edited[t], apply_edit(video["edit"], frames[t]))
        assert video["instruction"] in EDITS[video["edit"]].phrasings


def test_generation_is_fast():
    started = time.perf_counter()
    for seed in range(100):
        make_sample(seed, 64)
    per_sample = (time.perf_counter() - started) / 100
    assert per_sample < 0.05, f"{per_sample * 1000:.1f} ms per 64x64 sample"


# ------------------------------------------------------------------------------------------ the writer


def test_split_seeds_are_disjoint_and_counts_sane():
    for seed in (0, 1, 12):
        train, test = procedural.sample_seeds(seed, "train", 5000), procedural.sample_seeds(seed, "test", 5000)
        assert not set(train) & set(test)
    assert procedural.split_counts(2000, 0.1) == (1800, 200)
    assert procedural.split_counts(3, 0.1) == (2, 1)
    assert procedural.split_counts(1, 0.1) == (1, 0)
    assert procedural.split_counts(10, 0.0) == (10, 0)


@pytest.fixture(scope="module")
def nano(tmp_path_factory):
    """A small dataset written by the real CLI in a subprocess."""
    out = tmp_path_factory.mktemp("nano") / "ds"
    cmd = [sys.executable, "-c", "import sys; from movie_core.cli import main; main(sys.argv[1:])",
           "data", "nano", "--out", str(out), "--count", "40", "--videos", "3", "--frames", "4",
           "--size", "32", "--seed", "3", "--test-fraction", "0.25"]
    result = subprocess.run(cmd, capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr
    return out, result


def test_cli_writes_the_layout(nano):
    out, result = nano
    lines = result.stdout.strip().splitlines()
    assert len(lines) == 1 and "30 train + 10 test images" in lines[0], result.stdout
    summary = json.loads((out / "dataset.json").read_text())
    assert summary["generator_version"] == procedural.GENERATOR_VERSION
    assert summary["images"] == {"train": 30, "test": 10}
    assert summary["videos"]["train"] + summary["videos"]["test"] == 3 and summary["videos"]["test"] >= 1
    assert summary["size"] == [32, 32] and summary["seed"] == 3 and set(summary["edits"]) == set(EDITS)
    assert sorted(p.name for p in out.iterdir()) == ["dataset.json", "test", "train", "videos"]
    assert not [p for p in out.parent.iterdir() if p.name.startswith(".")], "a temp folder was left behind"
    sample = out / "videos" / "train" / "0000"
    assert {"source.mp4", "edited.mp4", "meta.json", "source", "edited"} <= {p.name for p in sample.iterdir()}
    assert len(list((sample / "source").glob("frame_*.png"))) == 4


def test_held_out_split_has_disjoint_seeds_and_unseen_phrasings(nano):
    out, _ = nano
    rows = {split: [json.loads(line) for line in (out / split / "metadata.jsonl").read_text().splitlines()]
            for split in ("train", "test")}
    train_seeds, test_seeds = {r["seed"] for r in rows["train"]}, {r["seed"] for r in rows["test"]}
    assert len(train_seeds) == 30 and len(test_seeds) == 10 and not train_seeds & test_seeds
    held_out = {edit.held_out for edit in EDITS.values()}
    assert not {r["edit_prompt"] for r in rows["train"]} & held_out
    assert {r["edit_prompt"] for r in rows["test"]} <= held_out
    for split in ("train", "test"):
        for meta_path in (out / "videos" / split).glob("*/meta.json"):
            meta = json.loads(meta_path.read_text())
            assert meta["split"] == split and (meta["instruction"] in held_out) == (split == "test")
    train_videos = {json.loads(p.read_text())["seed"] for p in (out / "videos" / "train").glob("*/meta.json")}
    test_videos = {json.loads(p.read_text())["seed"] for p in (out / "videos" / "test").glob("*/meta.json")}
    assert train_videos and test_videos and not train_videos & test_videos


def test_readers_read_the_written_dataset_back_identical(nano):
    out, _ = nano
    for split in ("train", "test"):
        dataset = ImageFolderDataset(out, split)
        rows = [json.loads(line) for line in (out / split / "metadata.jsonl").read_text().splitlines()]
        assert len(dataset) == len(rows)
        for item, row in zip(dataset, rows):
            expected = make_sample(row["seed"], 32, split=split)
            assert set(item) == {"source", "edited", "instruction"}
            assert np.array_equal(item["source"], expected["source"])
            assert np.array_equal(item["edited"], expected["edited"])
            assert item["instruction"] == expected["instruction"]
    assert isinstance(open_dataset(out, "test"), ImageFolderDataset)
    for split in ("train", "test"):
        videos = VideoDataset(out, split)
        for index in range(len(videos)):
            item, meta = videos[index], videos.meta(index)
            expected = make_video(meta["seed"], 4, 32, split=split)
            assert np.array_equal(item["source"], expected["source_frames"])
            assert np.array_equal(item["edited"], expected["edited_frames"])
            assert item["instruction"] == expected["instruction"]
            decoded = data._read_video(videos.samples[index][0] / "edited.mp4").astype(np.float64)
            mse = ((decoded - expected["edited_frames"]) ** 2).mean()
            assert decoded.shape == expected["edited_frames"].shape and 10 * np.log10(255**2 / max(mse, 1e-9)) > 45


def test_cli_refuses_an_existing_folder_and_overwrites_on_request(nano, run_movie, tmp_path):
    out, _ = nano
    before = (out / "train" / "metadata.jsonl").read_text()
    result = run_movie("data", "nano", "--out", str(out), "--count", "4", "--videos", "0")
    assert result.returncode == 2 and result.stderr.count("\n") == 1
    assert result.stderr.startswith("movie: error: ") and "--overwrite" in result.stderr
    assert (out / "train" / "metadata.jsonl").read_text() == before

    other = tmp_path / "mine"
    other.mkdir()
    (other / "notes.txt").write_text("keep me")
    result = run_movie("data", "nano", "--out", str(other), "--count", "4", "--videos", "0", "--overwrite")
    assert result.returncode == 2 and "not a movie dataset" in result.stderr and result.stderr.count("\n") == 1
    assert (other / "notes.txt").read_text() == "keep me"

    target = tmp_path / "again"
    writer.write_nano(target, count=4, videos=0, size=16)
    writer.write_nano(target, count=6, videos=0, size=16, overwrite=True)
    assert len(ImageFolderDataset(target, "train")) + len(ImageFolderDataset(target, "test")) == 6
    assert sorted(p.name for p in tmp_path.iterdir()) == ["again", "mine"]

    result = run_movie("data", "nano", "--out", str(tmp_path / "bad"), "--test-fraction", "1.5")
    assert result.returncode != 0 and result.stderr.count("\n") == 1 and not (tmp_path / "bad").exists()


@pytest.mark.parametrize("error", [RuntimeError, KeyboardInterrupt])
def test_output_is_atomic(tmp_path, monkeypatch, error):
    real, calls = procedural.make_sample, []

    def failing(*args, **kwargs):
        calls.append(1)
        if len(calls) == 6:
            raise error("boom")
        return real(*args, **kwargs)

    monkeypatch.setattr(procedural, "make_sample", failing)
    with pytest.raises(error):
        writer.write_nano(tmp_path / "ds", count=10, videos=1, size=16)
    assert list(tmp_path.iterdir()) == [], "a half-written dataset or temp folder was left behind"

    monkeypatch.setattr(procedural, "make_sample", real)
    writer.write_nano(tmp_path / "ds", count=4, videos=0, size=16)
    before = (tmp_path / "ds" / "dataset.json").read_text()
    calls.clear()
    monkeypatch.setattr(procedural, "make_sample", failing)
    with pytest.raises(error):
        writer.write_nano(tmp_path / "ds", count=10, videos=0, size=16, overwrite=True)
    assert [p.name for p in tmp_path.iterdir()] == ["ds"]
    assert (tmp_path / "ds" / "dataset.json").read_text() == before, "the old dataset must survive a failed overwrite"


# ----------------------------------------------------------------------------------------- the readers


def _png(array: np.ndarray) -> bytes:
    buffer = io.BytesIO()
    Image.fromarray(array).save(buffer, format="PNG")
    return buffer.getvalue()


def _one_line_error(fn, *match: str) -> str:
    with pytest.raises(MovieError) as info:
        fn()
    message = str(info.value)
    assert "\n" not in message
    for part in match:
        assert part in message, message
    return message


def test_imagefolder_errors_name_the_file_and_line(tmp_path):
    _one_line_error(lambda: ImageFolderDataset(tmp_path / "nope"), "no such dataset folder", "nope")
    _one_line_error(lambda: ImageFolderDataset(tmp_path), "has no metadata.jsonl", str(tmp_path))
    img = make_sample(0, 16)
    Image.fromarray(img["source"]).save(tmp_path / "a.png")
    Image.fromarray(img["edited"]).save(tmp_path / "b.png")
    good = json.dumps({"input_image": "a.png", "edited_image": "b.png", "edit_prompt": "x"})
    meta = tmp_path / "metadata.jsonl"
    meta.write_text(good + "\n{not json\n")
    _one_line_error(lambda: ImageFolderDataset(tmp_path), str(meta), "line 2", "bad JSON")
    meta.write_text(good + "\n" + json.dumps({"input_image": "a.png", "edited_image": "gone.png", "edit_prompt": "x"}))
    _one_line_error(lambda: ImageFolderDataset(tmp_path), "line 2", "missing image", "gone.png")
    meta.write_text(json.dumps({"input_image": "a.png", "edit_prompt": "x"}))
    _one_line_error(lambda: ImageFolderDataset(tmp_path), "line 1", "input_image, edited_image, edit_prompt")
    (tmp_path / "c.png").write_bytes(b"not a png")
    meta.write_text(json.dumps({"input_image": "a.png", "edited_image": "c.png", "edit_prompt": "x"}))
    _one_line_error(lambda: ImageFolderDataset(tmp_path)[0], "cannot read image", "c.png")
    _one_line_error(lambda: VideoDataset(tmp_path / "nope"), "nope")
    _one_line_error(lambda: open_dataset(tmp_path / "nope"), "no such dataset")


def test_imagefolder_other_columns_and_split_field(tmp_path):
    rows = []
    samples = [make_sample(seed, 16) for seed in range(4)]
    for index, sample in enumerate(samples):
        Image.fromarray(sample["source"]).save(tmp_path / f"{index}.png")
        Image.fromarray(sample["edited"]).save(tmp_path / f"{index}_edited.png")
        rows.append({"file_name": f"{index}.png", "edited_file_name": f"{index}_edited.png",
                     "text": sample["instruction"], "split": "test" if index == 3 else "train"})
    (tmp_path / "metadata.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows) + "\n")
    everything = ImageFolderDataset(tmp_path)
    train, test = ImageFolderDataset(tmp_path, "train"), ImageFolderDataset(tmp_path, "test")
    assert (len(everything), len(train), len(test)) == (4, 3, 1)
    assert np.array_equal(test[0]["edited"], samples[3]["edited"])
    assert test[-1]["instruction"] == samples[3]["instruction"]
    _one_line_error(lambda: ImageFolderDataset(tmp_path, "validation"), "no samples", "validation")


def test_to_torch_batch(nano):
    out, _ = nano
    dataset = ImageFolderDataset(out, "train")
    batch = data.to_torch_batch([dataset[0], dataset[1]])
    assert tuple(batch["source"].shape) == (2, 3, 32, 32) and batch["edited"].dtype.is_floating_point
    assert -1.0 <= float(batch["source"].min()) and float(batch["source"].max()) <= 1.0
    assert batch["instruction"] == [dataset[0]["instruction"], dataset[1]["instruction"]]
    source = (batch["source"][0].permute(1, 2, 0).numpy() + 1) * 127.5
    assert np.abs(source - dataset[0]["source"]).max() < 1e-3


def test_parquet_without_pyarrow_is_one_clear_line(tmp_path, monkeypatch):
    monkeypatch.setitem(sys.modules, "pyarrow", None)
    monkeypatch.setitem(sys.modules, "pyarrow.parquet", None)
    (tmp_path / "train-00000-of-00001.parquet").write_bytes(b"")
    message = _one_line_error(lambda: ParquetDataset(tmp_path))
    assert message == data.PYARROW_MISSING == "parquet needs pyarrow: pip install 'movie[data]'"


@pytest.mark.skipif(not HAVE_PYARROW, reason=data.PYARROW_MISSING)
def test_parquet_round_trip_in_the_instructpix2pix_layout(tmp_path):
    import pyarrow as pa
    import pyarrow.parquet as pq

    samples = [make_sample(seed, 24) for seed in range(5)]
    image_type = pa.struct([("bytes", pa.binary()), ("path", pa.string())])
    table = pa.table({
        "original_prompt": pa.array(["a scene"] * 5),
        "original_image": pa.array([{"bytes": _png(s["source"]), "path": None} for s in samples], image_type),
        "edit_prompt": pa.array([s["instruction"] for s in samples]),
        "edited_prompt": pa.array(["an edited scene"] * 5),
        "edited_image": pa.array([{"bytes": _png(s["edited"]), "path": None} for s in samples], image_type),
    })
    (tmp_path / "data").mkdir()
    pq.write_table(table, tmp_path / "data" / "train-00000-of-00001.parquet", row_group_size=2)
    pq.write_table(table.slice(0, 1), tmp_path / "data" / "test-00000-of-00001.parquet")
    train = open_dataset(tmp_path, "train")
    assert isinstance(train, ParquetDataset) and len(train) == 5
    for item, sample in zip(train, samples):
        assert np.array_equal(item["source"], sample["source"]) and np.array_equal(item["edited"], sample["edited"])
        assert item["instruction"] == sample["instruction"]
    assert np.array_equal(train[3]["edited"], samples[3]["edited"])
    assert len(ParquetDataset(tmp_path, "test")) == 1 and len(ParquetDataset(tmp_path)) == 6
    pq.write_table(table.drop(["edit_prompt"]), tmp_path / "bad.parquet")
    _one_line_error(lambda: ParquetDataset(tmp_path / "bad.parquet"), "bad.parquet", "edit_prompt")


def test_nothing_imports_torch():
    code = ("import sys, movie_core, movie_core.data.datasets, movie_core.data.procedural, "
            "movie_plugins.commands.data; assert 'torch' not in sys.modules, 'torch imported'")
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert result.returncode == 0, result.stderr


def test_parquet_reader_logic_with_a_stand_in_pyarrow(tmp_path, monkeypatch):
    """Row-group indexing, split selection and struct/binary image columns, without pyarrow installed."""
    import types

    samples = [make_sample(seed, 16) for seed in range(5)]
    tables = {  # file name -> row groups -> columns
        "train-00000-of-00002.parquet": [
            {"original_image": [{"bytes": _png(s["source"]), "path": None} for s in samples[:2]],
             "edited_image": [{"bytes": _png(s["edited"]), "path": None} for s in samples[:2]],
             "edit_prompt": [s["instruction"] for s in samples[:2]]},
            {"original_image": [], "edited_image": [], "edit_prompt": []},
            {"original_image": [{"bytes": _png(samples[2]["source"])}],
             "edited_image": [{"bytes": _png(samples[2]["edited"])}], "edit_prompt": [samples[2]["instruction"]]},
        ],
        "train-00001-of-00002.parquet": [
            {"input_image": [_png(s["source"]) for s in samples[3:]],
             "edited_image": [_png(s["edited"]) for s in samples[3:]],
             "edit_prompt": [s["instruction"] for s in samples[3:]]},
        ],
        "test-00000-of-00001.parquet": [
            {"original_image": [None], "edited_image": [None], "edit_prompt": ["x"]},
        ],
    }

    class Column(list):
        def to_pylist(self):
            return list(self)

    class ParquetFile:
        def __init__(self, path):
            if path.name not in tables:
                raise OSError("not parquet")
            groups = tables[path.name]
            self.schema_arrow = types.SimpleNamespace(names=list(groups[0]))
            self.metadata = types.SimpleNamespace(
                num_row_groups=len(groups),
                row_group=lambda g: types.SimpleNamespace(num_rows=len(groups[g]["edit_prompt"])),
            )
            self._groups = groups

        def read_row_group(self, group, columns):
            cols = {name: Column(self._groups[group][name]) for name in columns}
            return types.SimpleNamespace(column_names=list(cols), column=cols.__getitem__)

    fake = types.ModuleType("pyarrow.parquet")
    fake.ParquetFile = ParquetFile
    parent = types.ModuleType("pyarrow")
    parent.parquet = fake
    monkeypatch.setitem(sys.modules, "pyarrow", parent)
    monkeypatch.setitem(sys.modules, "pyarrow.parquet", fake)
    for name in tables:
        (tmp_path / name).write_bytes(b"")
    train = ParquetDataset(tmp_path, "train")
    assert len(train) == 5
    for index in (4, 0, 2, 1, 3, -1):
        item, sample = train[index], samples[index]
        assert np.array_equal(item["source"], sample["source"]) and np.array_equal(item["edited"], sample["edited"])
        assert item["instruction"] == sample["instruction"]
    test = ParquetDataset(tmp_path, "test")
    _one_line_error(lambda: test[0], "test-00000-of-00001.parquet row 0", "no image bytes")
    _one_line_error(lambda: ParquetDataset(tmp_path, "validation"), "no 'validation' parquet files")
    (tmp_path / "junk.parquet").write_bytes(b"")
    _one_line_error(lambda: ParquetDataset(tmp_path), "junk.parquet", "not a readable parquet file")
