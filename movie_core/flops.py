"""Analytic per-frame FLOPs on the meta device: no weights, full-size models in well under a second.

Two conventions: `paper` counts convolutions and linear layers (2 FLOPs per multiply-add) and
leaves out attention score/value matmuls and the once-per-video text encoder; this reproduces the
MoViE paper's Table 1. `all` is everything torch's FlopCounterMode counts for a frame.

A clocked recipe (Clockwork) counts the UNet as its split: the high-resolution path (head and tail) on
every pass, the low-resolution core on the full steps' passes, the adaptor on the others. A frame clock N is
averaged per frame over its N frames: the core on 1/N of the passes, the adaptor on the rest (the anchor's extra
full pass, once per video, is left out).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch
from torch.utils.flop_counter import FlopCounterMode

from movie_core import clockwork, flops_conventions
from movie_core.backends import active
from movie_core.composer import Composition, compose
from movie_core.errors import UsageError
from movie_core.loading import build


def _paper_flops(module: torch.nn.Module, inputs: Any, output: Any) -> int:
    """2 FLOPs per multiply-add of a convolution or linear layer (bias adds not counted)."""
    if not isinstance(output, torch.Tensor):
        return 0
    if isinstance(module, torch.nn.Linear):
        return 2 * output.numel() * module.in_features
    if isinstance(module, torch.nn.modules.conv._ConvTransposeNd):  # each input element meets the whole kernel
        kernel = 1
        for k in module.kernel_size:
            kernel *= k
        return 2 * inputs[0].numel() * (module.out_channels // module.groups) * kernel
    if isinstance(module, torch.nn.modules.conv._ConvNd):
        kernel = 1
        for k in module.kernel_size:
            kernel *= k
        return 2 * output.numel() * (module.in_channels // module.groups) * kernel
    return 0


def _measure(fn: Callable[[], Any]) -> tuple[int, int]:
    """(paper, all) FLOPs of one call: module hooks for paper, FlopCounterMode for all."""
    paper = 0

    def hook(module: torch.nn.Module, inputs: Any, output: Any) -> None:
        nonlocal paper
        paper += _paper_flops(module, inputs, output)

    handle = torch.nn.modules.module.register_module_forward_hook(hook)
    try:
        with FlopCounterMode(display=False) as counter:
            fn()
    finally:
        handle.remove()
    return paper, counter.get_total_flops()


def count(composition: Composition, height: int = 480, width: int = 480, model: Any = None,
          convention: str | None = None) -> dict[str, Any]:
    """Per-frame TFLOPs of a composed recipe at HxW, per component and in total (and in a named convention of
    movie_core.flops_conventions when given), with each component's parameter count. model: the folder whose
    trained adaptor's size to count, for `adaptor = "trained"`; without one, an adaptor of the default size."""
    if convention and convention not in flops_conventions.CONVENTIONS:
        raise UsageError(f"unknown FLOPs convention '{convention}' (known: {', '.join(flops_conventions.CONVENTIONS)})")
    pipe = build(composition, meta=True)
    enc, dec, den = pipe.encoder, pipe.decoder, pipe.denoiser
    down = enc.downscale
    if height % down or width % down:
        raise UsageError(f"height and width must be multiples of {down} (the autoencoder's downscale), "
                         f"got {height}x{width}")
    dev = torch.device("meta")
    steps = pipe.steps
    passes = {"cfg3": 3, "cfg2": 2}.get(den.guidance, 1)
    image = torch.empty(1, 3, height, width, device=dev)
    latents = torch.empty(1, enc.latent_channels, height // down, width // down, device=dev)
    nets = den.networks()
    ids = den.tokenize([""])[0].to(dev)
    with torch.no_grad():
        text_emb = nets["text_encoder"].module(ids)
    t = torch.tensor([999], device=dev)
    unet_inputs = den.graph_inputs(latents, t, latents, text_emb, 1.5, 7.5)

    def unet_pass() -> Any:
        with active(nets["unet"].module):
            return nets["unet"].module(*unet_inputs)

    recipe = composition.recipe
    parts: dict[str, tuple[Callable[[], Any], float, bool]] = {"encoder": (lambda: enc.encode(image), 1, False)}
    clock: dict[str, Any] | None = None
    if recipe.clocked:
        split = clockwork.network_split(den, recipe.denoiser)
        with torch.no_grad():
            r_in, *context = split.head(*unet_inputs)
            r_out = split.core(r_in, *context)
        adaptor = clockwork.make_adaptor(recipe.adaptor, shapes=(r_in, r_out, *context), model=model)
        evaluations = steps * passes
        if recipe.frame_clock > 1:  # per frame, averaged over the clock's N frames: one full, N - 1 adapted
            core_calls: float = evaluations / recipe.frame_clock
            clock = {"frame_clock": recipe.frame_clock, "adaptor": recipe.adaptor,
                     "full_frames": f"1 in {recipe.frame_clock} (and the anchor, once per video)"}
        else:
            full = clockwork.check_schedule(recipe, steps)
            core_calls = sum(full) * passes
            clock = {"clock": recipe.clock, "clock_schedule": recipe.clock_schedule, "adaptor": recipe.adaptor,
                     "full_steps": [i for i, f in enumerate(full) if f]}
        parts["unet_high"] = (lambda: split.tail(r_out, *split.head(*unet_inputs)[1:]), evaluations, False)
        parts["unet_core"] = (lambda: split.core(r_in, *context), core_calls, False)
        parts["adaptor"] = (lambda: adaptor(r_in, r_out, *context), evaluations - core_calls, False)
    else:
        parts["unet"] = (unet_pass, steps * passes, False)
    parts["decoder"] = (lambda: dec.decode(latents), 1, False)
    parts["text_encoder"] = (lambda: nets["text_encoder"].module(ids), 1, True)
    owners: dict[str, Any] = {"encoder": enc, "decoder": dec, "unet": nets["unet"].module,
                              "text_encoder": nets["text_encoder"].module}
    components: dict[str, Any] = {}
    per_call: dict[str, tuple[int, int]] = {}
    total_paper = total_all = total_named = 0
    with torch.no_grad():
        for name, (fn, calls, per_video) in parts.items():
            paper, all_ = _measure(fn)
            per_call[name] = (paper, all_)
            components[name] = {
                "tflops_paper": paper * calls / 1e12,
                "tflops_all": all_ * calls / 1e12,
                "calls": calls,
                "per_video": per_video,
            }
            params = flops_conventions.parameters(owners.get(name))
            if params is not None:  # torch-module components; the networks of a denoiser always are
                components[name]["params"] = params
            if convention:
                named = flops_conventions.count(convention, fn)
                components[name][f"tflops_{convention}"] = named * calls / 1e12
                components[name][f"gflops_{convention}_per_call"] = named / 1e9
                total_named += 0 if per_video else round(named * calls)
            if not per_video:
                total_paper += round(paper * calls)
                total_all += round(all_ * calls)
    result = {
        "tflops_paper": total_paper / 1e12,
        "tflops_all": total_all / 1e12,
        "height": height,
        "width": width,
        "size": recipe.size,
        "steps": steps,
        "unet_passes_per_step": passes,
        "components": components,
        "recipe": recipe.components(),
    }
    if convention:
        result["convention"] = convention
        result[f"tflops_{convention}"] = total_named / 1e12
    if clock is not None:
        for i, conv in enumerate(("paper", "all")):
            unclocked = (per_call["unet_high"][i] + per_call["unet_core"][i]) * steps * passes
            clocked = sum(components[k][f"tflops_{conv}"] for k in ("unet_high", "unet_core", "adaptor")) * 1e12
            clock[f"unet_tflops_{conv}_unclocked"] = unclocked / 1e12
            clock[f"unet_tflops_{conv}"] = clocked / 1e12
            clock[f"unet_saving_{conv}"] = 1 - clocked / unclocked
            frame = result[f"tflops_{conv}"] * 1e12
            clock[f"frame_saving_{conv}"] = (unclocked - clocked) / (frame + unclocked - clocked)
        clock["adaptor_params"] = sum(p.numel() for p in adaptor.parameters())
        result["clock"] = clock
    return result


def plot_presets(path: str, height: int = 480, width: int = 480, size: str = "full") -> list[dict[str, Any]]:
    """Bar chart of the four presets' per-frame TFLOPs (log scale), like the paper's Fig. 1."""
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        raise UsageError("--plot needs matplotlib: pip install 'movie[plot]'") from None
    from movie_core.recipe import PRESETS, preset

    rows = []
    for name in PRESETS:
        r = count(compose(preset(name).replace(size=size)), height=height, width=width)
        rows.append({"preset": name, "tflops_paper": r["tflops_paper"], "tflops_all": r["tflops_all"]})
    fig, ax = plt.subplots(figsize=(6, 3.6), dpi=120)
    bars = ax.bar([r["preset"] for r in rows], [r["tflops_paper"] for r in rows],
                  color=["#8c8c8c", "#5b8def", "#3cb371", "#e4572e"])
    ax.set_yscale("log")
    ax.set_ylabel("TFLOPs per frame (log)")
    ax.set_title(f"Per-frame cost at {height}x{width} ({size} size)")
    for bar, r in zip(bars, rows):
        ax.annotate(f"{r['tflops_paper']:.2f}", (bar.get_x() + bar.get_width() / 2, bar.get_height()),
                    ha="center", va="bottom", fontsize=9)
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)
    return rows
