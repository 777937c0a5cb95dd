"""movie batch: the job list, and on a local Ray cluster the pool (equal to `movie edit`, resumable, a worker killed
mid-job) and one long video in sections (equal to one process, audio copied once)."""

from __future__ import annotations

import contextlib
import json
import os
import signal
import socket
from pathlib import Path

import numpy as np
import pytest

from movie_core.extras import missing
from movie_core.video import make_test_video, open_source
from movie_plugins.commands._batch import Job, list_jobs, sections

from cli_helpers import run_cli

needs_ray = pytest.mark.skipif(missing("ray"), reason="ray is not installed (pip install 'movie[ray]')")
PROMPT = "make it sepia"


def frames_of(path: Path) -> list[np.ndarray]:
    with open_source(path) as source:
        return list(source.frames())


def audio_packets(path: Path) -> list[bytes]:
    import av

    with av.open(str(path)) as c:
        return [bytes(p) for p in c.demux(c.streams.audio[0]) if p.size]


@contextlib.contextmanager
def torch_threads(n: int):
    """Run the in-process reference at the workers' thread count (the float sums then add up alike)."""
    import torch

    before = torch.get_num_threads()
    torch.set_num_threads(n)
    try:
        yield
    finally:
        torch.set_num_threads(before)


def reference(capsys, src: Path, out: Path, *extra: str) -> Path:
    """`movie edit` of src in this process, at one torch thread as each worker runs."""
    with torch_threads(1):
        code, _, err = run_cli(capsys, "edit", str(src), "-p", PROMPT, "-o", str(out), "--no-progress", *extra)
    assert code == 0, err
    return out


# --- the job list (no Ray needed) -------------------------------------------------------------------


def test_jobs_from_folder_glob_and_manifests(tmp_path: Path) -> None:
    clips = tmp_path / "clips"
    clips.mkdir()
    for name in ("b.mp4", "a.mkv", "notes.txt"):
        (clips / name).write_bytes(b"")
    jobs = list_jobs(str(clips), PROMPT, str(tmp_path / "out"))
    assert [Path(j.input).name for j in jobs] == ["a.mkv", "b.mp4"]
    assert [j.output for j in jobs] == [str(tmp_path / "out" / "a.mkv"), str(tmp_path / "out" / "b.mp4")]
    assert [Path(j.input).name for j in list_jobs(str(clips / "*.mp4"), PROMPT, str(tmp_path))] == ["b.mp4"]

    csv_file = tmp_path / "jobs.csv"
    csv_file.write_text("input,instruction,output,steps,seed\nclips/a.mkv,make it red,o/a.mp4,2,\n"
                        "clips/b.mp4,make it blue,o/b.mp4,,7\n")
    a, b = list_jobs(str(csv_file), None, None)
    assert a == Job(str(tmp_path / "clips/a.mkv"), "make it red", str(tmp_path / "o/a.mp4"), {"steps": 2})
    assert b.overrides == {"seed": 7} and b.prompt == "make it blue"
    jsonl = tmp_path / "jobs.jsonl"
    jsonl.write_text(json.dumps({"input": "/x/a.mp4", "instruction": "sepia", "output": "/y/a.mp4",
                                 "text_guidance": 5.0}) + "\n")
    assert list_jobs(str(jsonl), None, None) == [Job("/x/a.mp4", "sepia", "/y/a.mp4", {"text_guidance": 5.0})]


@pytest.mark.parametrize("content, message", [
    ("input,instruction,output,size\na.mp4,x,b.mp4,full\n", "unknown column 'size'"),
    ("input,instruction\na.mp4,x\n", "no 'output' (and no --out-dir)"),
    ("input,output\na.mp4,b.mp4\n", "no 'instruction' (and no --prompt)"),
    ("input,instruction,output\na.mp4,x,o.mp4\nb.mp4,y,o.mp4\n", "two jobs write"),
])
@needs_ray  # without it `movie batch` stops earlier, at its one line naming the extra (tests/test_extras.py)
def test_bad_manifest_is_one_line(tmp_path: Path, capsys, content: str, message: str) -> None:
    manifest = tmp_path / "jobs.csv"
    manifest.write_text(content)
    code, out, err = run_cli(capsys, "batch", str(manifest), "--no-progress")
    assert code == 2 and message in err and len(err.strip().splitlines()) == 1 and "Traceback" not in err
    assert sorted(os.listdir(tmp_path)) == ["jobs.csv"]


@needs_ray
def test_an_unreachable_cluster_is_one_line_and_leaves_no_folder(tmp_path: Path, clips: Path, capsys) -> None:
    with socket.socket() as s:  # a port nobody listens on
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    out = tmp_path / "edited"
    code, _, err = run_cli(capsys, "batch", str(clips), "-p", PROMPT, "--out-dir", str(out), "--address",
                           f"127.0.0.1:{port}", "--no-progress")
    assert code == 1 and len(err.strip().splitlines()) == 1 and f"cannot reach a Ray cluster at 127.0.0.1:{port}" in err
    assert not out.exists()


def test_sections_start_on_batch_boundaries() -> None:
    assert sections(40, 4, 2) == [(0, 20), (20, 40)]
    assert sections(10, 4, 2) == [(0, 8), (8, 10)]
    assert sections(3, 4, 2) == [(0, 3)]  # fewer frames than one batch: one section
    assert sum(b - a for a, b in sections(2000, 4, 3)) == 2000


def test_a_retry_counts_its_own_finished_output_as_done(clips: Path, references, tmp_path: Path) -> None:
    """A worker killed after its output was renamed into place but before it reported: Ray retries the call with the
    same queued_at, and the retry finds the whole output written since then; an output older than the job is not
    this job's and stays refused."""
    import time

    from movie_core.loading import resolve_recipe
    from movie_plugins.commands._batch import Editor

    recipe, model, _ = resolve_recipe({}, builtin=True)
    editor = Editor(recipe, model, threads=1)
    clip = sorted(clips.glob("*.mp4"))[0]
    job = Job(str(clip), PROMPT, str(tmp_path / clip.name))
    sent = time.time()
    first = editor.edit(job, queued_at=sent)
    assert first["status"] == "done" and "note" not in first, first
    written = Path(job.output).read_bytes()
    assert written == references[clip.name]
    again = editor.edit(job, queued_at=sent)  # the retry of the same call
    assert again["status"] == "done" and again["frames"] == first["frames"] and "earlier attempt" in again["note"]
    assert Path(job.output).read_bytes() == written
    later = editor.edit(job, queued_at=os.lstat(job.output).st_mtime + 1)  # an output from before this job
    assert later["status"] == "failed" and "exists" in later["error"], later
    assert editor.edit(job)["status"] == "failed"  # no queued_at (a direct call): an existing output is refused
    assert Path(job.output).read_bytes() == written


# --- on a local Ray cluster ---------------------------------------------------------------------


@pytest.fixture(scope="module")
def ray_cluster():
    if missing("ray"):
        pytest.skip("ray is not installed (pip install 'movie[ray]')")
    import ray

    from movie_plugins.commands._batch import start_ray

    start_ray(None, 2)
    yield ray
    ray.shutdown()


@pytest.fixture(scope="module")
def clips(tmp_path_factory) -> Path:
    folder = tmp_path_factory.mktemp("clips")
    for i in range(4):
        make_test_video(folder / f"clip{i}.mp4", seconds=0.5, fps=8, width=32, height=32, audio=i % 2 == 0)
    return folder


@pytest.fixture(scope="module")
def references(clips: Path, tmp_path_factory) -> dict[str, bytes]:
    """Each clip's single-process `movie edit` output, by clip name (made once for the module's tests)."""
    from movie_core.cli import main

    folder = tmp_path_factory.mktemp("refs")
    out = {}
    with torch_threads(1):
        for clip in sorted(clips.glob("*.mp4")):
            with contextlib.suppress(SystemExit):
                main(["edit", str(clip), "-p", PROMPT, "-o", str(folder / clip.name), "--no-progress"])
            out[clip.name] = (folder / clip.name).read_bytes()
    return out


@needs_ray
@pytest.mark.slow  # a local Ray cluster and two workers, each loading the pipeline
def test_batch_equals_edit_skips_on_rerun_and_reports_a_bad_video(ray_cluster, clips: Path, references, tmp_path: Path,
                                                                    capsys) -> None:
    bad = tmp_path / "broken.mp4"
    bad.write_bytes(b"\x00" * 64)
    rows = [{"input": str(c), "instruction": PROMPT, "output": str(tmp_path / "out" / c.name)}
            for c in sorted(clips.glob("*.mp4"))]
    rows.append({"input": str(bad), "instruction": PROMPT, "output": str(tmp_path / "out" / "broken.mp4")})
    (tmp_path / "out").mkdir()
    manifest = tmp_path / "jobs.jsonl"
    manifest.write_text("".join(json.dumps(r) + "\n" for r in rows))
    code, out, err = run_cli(capsys, "batch", str(manifest), "--workers", "2", "--no-progress", "--json")
    assert code == 1 and out, err  # one video failed: the job says so, the others are done
    summary = json.loads(out)
    assert (summary["done"], summary["failed"], summary["skipped"]) == (4, 1, 0)
    failed = [r for r in summary["rows"] if r["status"] == "failed"]
    assert failed[0]["input"] == str(bad) and "\n" not in failed[0]["error"] and "broken.mp4" in failed[0]["error"]
    assert f"failed: {bad}" in err
    for clip in sorted(clips.glob("*.mp4")):  # the same frames, timing and audio as movie edit, byte for byte
        assert (tmp_path / "out" / clip.name).read_bytes() == references[clip.name]
    assert sorted(os.listdir(tmp_path / "out")) == sorted(c.name for c in clips.glob("*.mp4"))  # no temps left

    code, out, err = run_cli(capsys, "batch", str(manifest), "--workers", "2", "--no-progress", "--json")
    summary = json.loads(out)
    assert (summary["skipped"], summary["done"]) == (4, 0)  # rerun: the finished ones are skipped


@needs_ray
@pytest.mark.slow  # a local Ray cluster and two workers, each loading the pipeline
def test_a_worker_killed_mid_job_and_every_output_is_right(ray_cluster, clips: Path, references,
                                                            tmp_path: Path) -> None:
    from movie_core.loading import resolve_recipe
    from movie_plugins.commands._batch import Pool

    recipe, model, _ = resolve_recipe({}, builtin=True)
    sources = sorted(clips.glob("*.mp4")) * 2
    jobs = [Job(str(s), PROMPT, str(tmp_path / f"{i}-{s.name}")) for i, s in enumerate(sources)]
    pool = Pool(2, 0, (recipe, model), {})
    before = pool.pids()
    killed: list[int] = []
    results: list[dict] = []

    def on_result(job: Job, result: dict) -> None:
        results.append(result)
        if not killed:  # the other worker is busy with its video: kill it outright, mid-edit
            victim = next(p for p in before if p != result.get("worker"))
            os.kill(victim, signal.SIGKILL)
            killed.append(victim)

    pool.run(jobs, on_result)
    assert killed and killed[0] not in pool.pids()  # it was replaced
    assert any(r["worker"] not in before for r in results)  # and the new worker took on videos
    assert [r["status"] for r in results] == ["done"] * len(jobs), [r.get("error") for r in results]
    for job in jobs:
        assert Path(job.output).read_bytes() == references[Path(job.input).name]
    assert not [n for n in os.listdir(tmp_path) if n.startswith(".")]  # the killed worker's temp file is gone


@needs_ray
@pytest.mark.slow  # a local Ray cluster and two workers, each loading the pipeline
def test_long_video_in_sections_equals_one_process(ray_cluster, tmp_path: Path, capsys) -> None:
    src = make_test_video(tmp_path / "long.mp4", seconds=5, fps=8, width=32, height=32)  # 40 frames, AAC audio
    ref = reference(capsys, src, tmp_path / "ref.mp4", "--batch-size", "4")
    out = tmp_path / "split.mp4"
    code, stdout, err = run_cli(capsys, "batch", str(src), "-p", PROMPT, "-o", str(out), "--split", "2",
                                "--workers", "2", "--batch-size", "4", "--no-progress", "--json")
    assert code == 0, err
    row = json.loads(stdout)["rows"][0]
    assert row["sections"] == [[0, 20], [20, 40]] and row["frames"] == 40
    got, want = frames_of(out), frames_of(ref)
    assert len(got) == len(want) == 40
    assert all(np.array_equal(a, b) for a, b in zip(got, want))
    assert audio_packets(out) == audio_packets(src)  # copied once, untouched
