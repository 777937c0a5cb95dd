#!/usr/bin/env python3
"""End to end on a GPU: `movie edit` of a real clip with audio, eager vs cuda-graphs, against the CPU path.

    python scripts/gpu_e2e.py --out e2e.json

Writes a clip (H.264 + AAC, the project's own test-video maker) at --width x --height, then runs the
`movie edit` command on it, each in its own process with the time left of --budget: the full-size
`movie` recipe (random init, fp16) eager and with `--backend cuda-graphs` on --device, and the
built-in nano model on the CPU at a small processing size (the CPU path). Reports each command's
wall time and frames/s (the whole command: model build, decode, edit, encode, mux) beside the frame
loop's own frames/s, and checks that every output has the input's frame count, fps, time base,
size and audio (the same audio packets, copied).
"""

from __future__ import annotations

import argparse
import hashlib
import json
import re
import subprocess
import sys
import tempfile
import time
from pathlib import Path

PROMPT = "make it look like a watercolor painting"


def parse_args(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--out", required=True, help="JSON file to write.")
    p.add_argument("--width", type=int, default=512)
    p.add_argument("--height", type=int, default=384)
    p.add_argument("--seconds", type=float, default=8.0)
    p.add_argument("--fps", type=int, default=30)
    p.add_argument("--batch-size", type=int, default=8)
    p.add_argument("--device", default="cuda")
    p.add_argument("--size", default="full", choices=["full", "nano"], help="Model size of the device runs.")
    p.add_argument("--runs", default="cpu,eager,cuda-graphs", help="Which commands, in this order.")
    p.add_argument("--budget", type=float, default=150.0, help="Seconds for the whole script.")
    return p.parse_args(argv)


def audio_digest(path: Path) -> dict:
    """sha256 of the audio stream's packet payloads, and their count (the audio is copied, so they match)."""
    import av

    with av.open(str(path)) as c:
        if not c.streams.audio:
            return {"packets": 0, "sha256": None}
        h, n = hashlib.sha256(), 0
        for packet in c.demux(c.streams.audio[0]):
            if packet.size:
                h.update(bytes(packet))
                n += 1
        return {"packets": n, "sha256": h.hexdigest()}


def facts(path: Path) -> dict:
    from movie_core.video import probe

    f = probe(path)
    f = {k: str(v) if k in ("fps", "time_base") else v for k, v in f.items()}
    f["audio"] = audio_digest(path)
    return f


def main(argv=None) -> int:
    args = parse_args(argv)
    start = time.perf_counter()
    out = Path(args.out)
    report: dict = {"script": "scripts/gpu_e2e.py", "settings": vars(args), "runs": {}}

    def save() -> None:
        tmp = out.with_name(out.name + ".tmp")
        tmp.write_text(json.dumps(report, indent=2, default=str) + "\n")
        tmp.replace(out)

    try:
        import av  # noqa: F401
    except ImportError:
        report.update(status="skipped", reason="PyAV (av) is not importable here: no video files to edit")
        save()
        print(f"e2e skipped: {report['reason']}")
        return 0
    from movie_core.video import make_test_video

    work = Path(tempfile.mkdtemp(prefix="movie-e2e-"))
    clip = make_test_video(work / "clip.mp4", seconds=args.seconds, fps=args.fps, width=args.width,
                           height=args.height, audio=True)
    report["input"] = facts(clip)
    save()
    common = ["-p", PROMPT, "--batch-size", str(args.batch_size), "--no-progress", "--preset", "movie"]
    commands = {
        "cpu": ["--device", "cpu", "--max-side", "96", "--size", "nano", "--init", "random"],  # the CPU path, nano
        "eager": ["--size", args.size, "--init", "random", "--device", args.device, "--dtype", "float16",
                  "--height", str(args.height), "--width", str(args.width)],
        "cuda-graphs": ["--size", args.size, "--init", "random", "--device", args.device, "--dtype", "float16",
                        "--height", str(args.height), "--width", str(args.width), "--backend", "cuda-graphs"],
    }
    for name in [r.strip() for r in args.runs.split(",") if r.strip()]:
        left = args.budget - (time.perf_counter() - start)
        if left < 15:
            report["runs"][name] = {"status": "skipped", "reason": f"the {args.budget:.0f} s budget is spent"}
            save()
            continue
        dest = work / f"out-{name}.mp4"
        cmd = [sys.executable, "-c", "import sys; from movie_core.cli import main; main(sys.argv[1:])", "edit",
               str(clip), "-o", str(dest), *common, *commands[name]]
        t0 = time.perf_counter()
        try:
            proc = subprocess.run(cmd, capture_output=True, text=True, timeout=left)
        except subprocess.TimeoutExpired:
            report["runs"][name] = {"status": "timeout", "seconds": time.perf_counter() - t0}
            save()
            continue
        wall = time.perf_counter() - t0
        r: dict = {"command": "movie " + " ".join(cmd[3:]), "wall_s": wall, "returncode": proc.returncode,
                   "stderr_tail": proc.stderr[-1500:]}
        m = re.search(r"edited (\d+) frames in ([\d.]+) s \(([\d.]+) frames/s\)", proc.stdout)
        if proc.returncode == 0 and m and dest.is_file():
            frames = int(m.group(1))
            r.update(status="ok", frames=frames, loop_s=float(m.group(2)), loop_frames_per_s=float(m.group(3)),
                     command_frames_per_s=frames / wall, output=facts(dest))
            same = {k: r["output"][k] == report["input"][k] for k in
                    ("frame_count", "fps", "time_base", "width", "height", "audio_codec", "audio")}
            same["audio_duration_s"] = abs((r["output"]["audio_duration_s"] or 0)
                                           - (report["input"]["audio_duration_s"] or 0)) < 1e-3
            r["matches_input"] = same
        else:
            r.update(status="error", stdout_tail=proc.stdout[-1500:])
        report["runs"][name] = r
        save()
        print(f"{name:12} {r['status']}: " + (f"{r['frames']} frames, command {wall:.1f} s "
              f"({r['command_frames_per_s']:.1f} frames/s), loop {r['loop_frames_per_s']:.1f} frames/s, "
              f"matches input: {all(r['matches_input'].values())}" if r["status"] == "ok"
              else r["stderr_tail"][-300:]), flush=True)
    ok = {n: r for n, r in report["runs"].items() if r.get("status") == "ok"}
    keys = ("frame_count", "fps", "time_base", "width", "height", "audio_codec", "audio_duration_s", "audio")
    report["outputs_agree"] = (len({json.dumps({k: r["output"][k] for k in keys}, default=str, sort_keys=True)
                                    for r in ok.values()}) == 1) if len(ok) > 1 else None
    report["total_s"] = time.perf_counter() - start
    report["status"] = "ok"
    save()
    print(f"outputs agree (frames/fps/time base/size/audio): {report['outputs_agree']}; wrote {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
