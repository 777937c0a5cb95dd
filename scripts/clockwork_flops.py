"""Clockwork FLOPs at full size on the meta device (issue 21's acceptance figures); prints and saves JSON.

    python scripts/clockwork_flops.py [--out docs/results/clockwork_flops.json]

1. The paper's Table 1 setting (8 steps, 512x512, latents 64x64, batch 2 for guidance, FLOPs = 2 x MACs):
   the SD-1.5 UNet, 10.8 TFLOPs -> 7.3 with Clockwork (677.8 GFLOPs per pass). No text-to-image SD-1.5
   denoiser exists here, so this counts the InstructPix2Pix UNet (8 input channels: conv_in sees the image
   latents too) with 2 passes per step instead of its own 3, identity adaptor (the paper's trained adaptor
   adds its own FLOPs on the adaptor steps).
   Counted again with the trained adaptor's FLOPs (movie_core.clockwork.ClockworkAdaptor, sized from the split).
2. `movie flops` for the presets base, mobile, mmg at 480x480, without and with clock 2.
3. `movie flops` for the `movie` preset (1 step) at 480x480 with frame clock 2 and 3, identity and trained
   adaptor: per frame, averaged over the clock's frames.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from movie_core import flops
from movie_core.composer import compose
from movie_core.recipe import preset

PAPER = {"unet_gflops_per_pass": 677.8, "tflops_8_steps": 10.8, "tflops_clock_2": 7.3}


def table1(steps: int = 8, passes: int = 2, clock: int = 2, adaptor: str = "identity") -> dict:
    recipe = preset("base").replace(size="full", steps=steps, clock=clock, adaptor=adaptor)
    counted = flops.count(compose(recipe), height=512, width=512)
    comps = counted["components"]
    per_pass = {k: {conv: comps[k][f"tflops_{conv}"] / comps[k]["calls"] * 1e3 if comps[k]["calls"] else 0.0
                    for conv in ("paper", "all")} for k in ("unet_high", "unet_core", "adaptor")}
    n_full = len(counted["clock"]["full_steps"])
    out: dict = {"denoiser": recipe.denoiser, "steps": steps, "passes_per_step": passes, "clock": clock,
                 "adaptor": adaptor, "adaptor_params": counted["clock"]["adaptor_params"],
                 "full_steps": counted["clock"]["full_steps"], "gflops_per_pass": per_pass}
    for conv in ("paper", "all"):
        full_pass = per_pass["unet_high"][conv] + per_pass["unet_core"][conv]
        unclocked = full_pass * steps * passes / 1e3
        clocked = (per_pass["unet_high"][conv] * steps + per_pass["unet_core"][conv] * n_full
                   + per_pass["adaptor"][conv] * (steps - n_full)) * passes / 1e3
        out[conv] = {"unet_gflops_per_pass": full_pass, "tflops": unclocked, "tflops_clocked": clocked,
                     "saving": 1 - clocked / unclocked, "core_share_of_a_pass": per_pass["unet_core"][conv] / full_pass}
    return out


def presets(height: int = 480, width: int = 480, clock: int = 2) -> list[dict]:
    rows = []
    for name in ("base", "mobile", "mmg"):
        plain = flops.count(compose(preset(name).replace(size="full")), height=height, width=width)
        clocked = flops.count(compose(preset(name).replace(size="full", clock=clock)), height=height, width=width)
        rows.append({"preset": name, "steps": plain["steps"], "clock": clock,
                     "tflops_paper": plain["tflops_paper"], "tflops_paper_clocked": clocked["tflops_paper"],
                     "tflops_all": plain["tflops_all"], "tflops_all_clocked": clocked["tflops_all"],
                     "frame_saving_paper": 1 - clocked["tflops_paper"] / plain["tflops_paper"],
                     "unet_saving_paper": clocked["clock"]["unet_saving_paper"],
                     "unet_saving_all": clocked["clock"]["unet_saving_all"]})
    return rows


def frame_clocks(height: int = 480, width: int = 480) -> list[dict]:
    plain = flops.count(compose(preset("movie").replace(size="full")), height=height, width=width)
    rows = []
    for every in (2, 3):
        for adaptor in ("identity", "trained"):
            recipe = preset("movie").replace(size="full", frame_clock=every, adaptor=adaptor)
            c = flops.count(compose(recipe), height=height, width=width)
            comps = c["components"]
            rows.append({"preset": "movie", "frame_clock": every, "adaptor": adaptor,
                         "adaptor_params": c["clock"]["adaptor_params"],
                         "tflops_paper": plain["tflops_paper"], "tflops_paper_clocked": c["tflops_paper"],
                         "tflops_all": plain["tflops_all"], "tflops_all_clocked": c["tflops_all"],
                         "frame_saving_paper": 1 - c["tflops_paper"] / plain["tflops_paper"],
                         "frame_saving_all": 1 - c["tflops_all"] / plain["tflops_all"],
                         "unet_saving_paper": c["clock"]["unet_saving_paper"],
                         "unet_saving_all": c["clock"]["unet_saving_all"],
                         "per_frame_tflops_paper": {k: comps[k]["tflops_paper"]
                                                    for k in ("unet_high", "unet_core", "adaptor")}})
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=Path("docs/results/clockwork_flops.json"))
    args = parser.parse_args()
    t1 = table1()
    t1_trained = table1(adaptor="trained")
    rows = presets()
    frames = frame_clocks()
    p = t1["paper"]
    print(f"Table 1 setting ({t1['denoiser']} UNet, 512x512, {t1['steps']} steps x {t1['passes_per_step']} passes, "
          f"clock {t1['clock']}, identity adaptor):")
    print(f"  per pass {p['unet_gflops_per_pass']:.1f} GFLOPs (paper {PAPER['unet_gflops_per_pass']}); "
          f"{p['tflops']:.2f} -> {p['tflops_clocked']:.2f} TFLOPs (paper {PAPER['tflops_8_steps']} -> "
          f"{PAPER['tflops_clock_2']}), saving {100 * p['saving']:.1f}%; the core is "
          f"{100 * p['core_share_of_a_pass']:.1f}% of a pass")
    a = t1["all"]
    print(f"  'all' convention: per pass {a['unet_gflops_per_pass']:.1f} GFLOPs; {a['tflops']:.2f} -> "
          f"{a['tflops_clocked']:.2f} TFLOPs, saving {100 * a['saving']:.1f}%")
    tp = t1_trained["paper"]
    print(f"  with the trained adaptor ({t1_trained['adaptor_params'] / 1e6:.2f}M parameters, "
          f"{t1_trained['gflops_per_pass']['adaptor']['paper']:.1f} GFLOPs per call): {tp['tflops']:.2f} -> "
          f"{tp['tflops_clocked']:.2f} TFLOPs, saving {100 * tp['saving']:.1f}%")
    print("movie flops at 480x480, clock 2 (full size):")
    for r in rows:
        print(
            f"  {r['preset']:7} {r['steps']} steps: {r['tflops_paper']:.3f} -> "
            f"{r['tflops_paper_clocked']:.3f} TFLOPs/frame "
            f"(paper conv.), frame -{100 * r['frame_saving_paper']:.1f}%, UNet -{100 * r['unet_saving_paper']:.1f}% "
            f"(all: {r['tflops_all']:.3f} -> {r['tflops_all_clocked']:.3f}, UNet -{100 * r['unet_saving_all']:.1f}%)"
        )
    print("movie flops at 480x480, frame clock (the 1-step `movie` preset, full size, average per frame):")
    for r in frames:
        print(f"  frame clock {r['frame_clock']}, {r['adaptor']:8} adaptor: {r['tflops_paper']:.3f} -> "
              f"{r['tflops_paper_clocked']:.3f} TFLOPs/frame (paper conv.), "
              f"frame -{100 * r['frame_saving_paper']:.1f}%, "
              f"UNet -{100 * r['unet_saving_paper']:.1f}% (all: frame -{100 * r['frame_saving_all']:.1f}%, "
              f"UNet -{100 * r['unet_saving_all']:.1f}%)")
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps({"paper": PAPER, "table1": t1, "table1_trained_adaptor": t1_trained,
                                    "presets_480": rows, "frame_clock_480": frames}, indent=2) + "\n")
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
