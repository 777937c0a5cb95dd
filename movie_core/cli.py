"""The `movie` command line: thin click commands over the core modules."""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path
from typing import Any

import click

from movie_core import __version__
from movie_core.cleanup import Terminated, terminate_like_interrupt
from movie_core.errors import MovieError, UsageError, warnings_as_lines
from movie_core.options import recipe_options, resolve_recipe
from movie_core.recipe import DETAIL_MODES

_SLOT_OF = {"autoencoder": "vae", "denoiser": "denoiser", "backend": "backend", "distiller": "distiller"}


def _emit(data: Any) -> None:
    click.echo(json.dumps(data, indent=2, default=str))


def _save_or_emit(result: dict[str, Any], save: str | None, as_json: bool) -> bool:
    """Write the result to --save, print it with --json; True when it was printed (nothing else to show)."""
    if save:
        Path(save).write_text(json.dumps(result, indent=2) + "\n")
    if as_json:
        _emit(result)
    return as_json


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(__version__, prog_name="movie")
def cli() -> None:
    """Diffusion video editing at mobile speed: the MoViE recipe as swappable plugins."""


@cli.command()
@click.option("--json", "as_json", is_flag=True, help="Print JSON.")
def plugins(as_json: bool) -> None:
    """List installed plugins, their versions and the hooks they implement (or why one is broken)."""
    from movie_core.plugins import plugin_info

    rows = plugin_info()
    if as_json:
        _emit(rows)
        return
    for row in rows:
        what = f"BROKEN: {row['error']}" if "error" in row else ", ".join(row["hooks"])
        click.echo(f"{row['name']} {row.get('version', '')} [{row.get('source', '')}]: {what}")


@cli.command("list")
@click.argument("family", required=False)
@click.option("--edits", is_flag=True, help="List the edits the built-in model (or --model's) was trained on.")
@click.option("--model", help="With --edits: a model folder (or nano:<stage>) instead of the built-in default.")
@click.option("--json", "as_json", is_flag=True, help="Print JSON.")
def list_(family: str | None, edits: bool, model: str | None, as_json: bool) -> None:
    """List components per family (autoencoder, denoiser, distiller, backend), or with --edits what a model knows."""
    from movie_core.plugins import get_registry
    from movie_core.registry import FAMILIES, UnknownComponentError

    if edits or model:
        _list_edits(model or DEFAULT_MODEL, as_json)
        return
    if family is not None:
        family = family.rstrip("s")
        if family not in FAMILIES:
            raise UnknownComponentError("family", family, list(FAMILIES))
    registry = get_registry()
    specs = list(registry.specs(family))
    if as_json:
        _emit([
            {"family": s.family, "name": s.name, "summary": s.summary, "plugin": s.plugin, "version": s.version,
             "latent_space": s.latent_space, "base": s.base, "defaults": s.defaults, "options": s.options()}
            for s in specs
        ])
        return
    current = None
    for s in specs:
        if s.family != current:
            current = s.family
            click.echo(f"{current}s:")
        derived = f" (derived from {s.base})" if s.base else ""
        click.echo(f"  {s.name:24} {s.summary}{derived}  [{s.plugin}]")
        if family is not None:
            for opt in s.options():
                click.echo(f"      -O {_SLOT_OF.get(s.family, s.family)}.{opt['name']}={opt['default']!r}"
                           f"  ({opt['type']})")
    if family in (None, "denoiser"):
        click.echo(CLOCK_OPTIONS)


DEFAULT_MODEL = "nano:mobile-pix2pix-1step"  # what `movie edit` runs without --model (the `movie` preset's stage)


def _list_edits(model: str, as_json: bool) -> None:
    """The edits a model's manifest lists, each with the phrasings it was trained on."""
    from movie_core.known_edits import read_edits
    from movie_core.weights import resolve_model

    known = read_edits(resolve_model(model))
    if known is None:
        raise UsageError(f"{model} does not list its edits (its movie.json has no \"edits\"): it may know anything")
    if as_json:
        _emit(known)
        return
    click.echo(f"{model} was trained on {len(known)} global edits, asked for in these words:")
    for name, phrasings in known.items():
        click.echo(f"  {name:14} " + "; ".join(f"'{p}'" for p in phrasings))
    click.echo("an instruction far from all of these gets a warning naming the closest edits (the edit still runs)")


CLOCK_OPTIONS = """clock options (Clockwork; for every denoiser whose UNet exposes network_split; eager backend):
  --clock N                 the full UNet every N-th step, the adaptor for its low-resolution core on the others
  --clock-schedule I,J,...  the steps that run the full UNet (instead of --clock; starts at 0)
  --frame-clock N           the full UNet on every N-th video frame and the anchor, the adaptor between (not with
                            --clock; the only clock that saves anything at 1 step)
  --frame-blend linear|previous  frame clock: start the adaptor from the full frames' features on either side
                            blended by distance (default; the last one's where no later one is known), or the
                            last one's always
  --adaptor identity|trained|PATH  identity: reuse the last full features; trained: the model folder's adaptor/
                            (`movie distill clockwork`), tied to the clock kind, sampler and steps it was trained for"""


@cli.command()
@recipe_options
@click.option("-o", "--output", type=click.Path(dir_okay=False), help="Write the recipe as TOML.")
@click.option("--json", "as_json", is_flag=True, help="Print JSON.")
@click.option("--save-model", type=click.Path(file_okay=True),
              help="Build and write a loadable model folder (or .safetensors file).")
def compose(output: str | None, as_json: bool, save_model: str | None, **kw: Any) -> None:
    """Validate and describe a pipeline; optionally write its recipe or a model folder."""
    from movie_core.composer import compose as do_compose

    recipe, model, init = resolve_recipe(kw)
    comp = do_compose(recipe)
    ok, reason = comp.backend_available()
    desc = comp.describe() | {"backend_available": {"ok": ok, "reason": reason}}
    notes: list[str] = []
    if model is not None:
        desc["model"] = _check_model(comp, model)
    if save_model:
        notes = _save_model(comp, model, init, Path(save_model))
    if output:
        recipe.save(output)
    if as_json:
        _emit(desc | ({"notes": notes} if notes else {}))
    else:
        for slot in ("encoder", "decoder", "denoiser", "backend"):
            d = desc[slot]
            click.echo(f"{slot:9} {d['name']:22} plugin {d['plugin']} {d['version']}")
        click.echo(f"backend   {'available' if ok else 'NOT available'}: {reason}")
        click.echo("options   " + ", ".join(f"{k}={v}" for k, v in desc["options"].items()))
        if "model" in desc:
            click.echo(f"model     {desc['model']['path']}: {len(desc['model']['checked'])} files checked, "
                       "loads for this recipe")
        for note in notes:
            click.echo(f"note: {note}")
        if output:
            click.echo(f"wrote recipe {output}")
        if save_model:
            click.echo(f"wrote model {save_model}")


def _check_model(comp, model: Path) -> dict[str, Any]:
    """Validate a model folder for a recipe: cheap checks of every file, then a load of the recipe's components
    (so shapes are checked against the recipe); a problem is one line naming the file."""
    from movie_core.loading import load_pipeline
    from movie_core.weights import check_model_folder

    checked = check_model_folder(model, comp.recipe.variant)
    load_pipeline(comp, model)
    return {"path": str(model), "checked": checked, "loads": True}


def _save_model(comp, model: Path | None, init: str | None, dest: Path) -> list[str]:
    from movie_core.loading import build
    from movie_core.weights import save_single_file

    if model is None and init != "random":
        raise UsageError("--save-model needs weights: pass --model DIR or --init random")
    if dest.exists() and not dest.is_dir() and dest.suffix != ".safetensors":
        raise UsageError(f"{dest} exists and is not a model folder")
    pipe = build(comp, model=model, meta=False)
    if dest.suffix == ".safetensors":
        import tempfile

        with tempfile.TemporaryDirectory(dir=dest.parent if dest.parent.is_dir() else None) as tmp:
            folder = pipe.save_pretrained(Path(tmp) / "model")
            save_single_file(folder, dest)
    else:
        pipe.save_pretrained(dest)
    return pipe.notes


@cli.command()
@recipe_options
@click.option("--height", type=click.IntRange(min=8), default=480, show_default=True)
@click.option("--width", type=click.IntRange(min=8), default=480, show_default=True)
@click.option("--json", "as_json", is_flag=True, help="Print JSON.")
@click.option("--plot", type=click.Path(dir_okay=False), help="Bar chart of the four presets (log scale) to PNG.")
@click.option("--convention", help="Also count in a named convention (mobilediffusion: MobileDiffusion's Table 1; "
              "deepspeed: DeepSpeed's profiler rules, which the MoViE paper names).")
def flops(height: int, width: int, as_json: bool, plot: str | None, convention: str | None, **kw: Any) -> None:
    """Per-frame TFLOPs on the meta device (no weights): paper and all conventions, and parameters."""
    from movie_core import flops as fl
    from movie_core.composer import compose as do_compose

    recipe, model, _ = resolve_recipe(kw)
    result = fl.count(do_compose(recipe), height=height, width=width, model=model, convention=convention)
    if plot:
        fl.plot_presets(plot, height=height, width=width, size=recipe.size)
    if as_json:
        _emit(result)
        return
    named = f", {result[f'tflops_{convention}']:.3f} TFLOPs ({convention})" if convention else ""
    click.echo(f"{height}x{width}, per frame: {result['tflops_paper']:.3f} TFLOPs (paper), "
               f"{result['tflops_all']:.3f} TFLOPs (all){named}")
    for name, c in result["components"].items():
        per = "per video" if c.get("per_video") else "per frame"
        extra = f" {c[f'tflops_{convention}']:9.4f} {convention}" if convention else ""
        params = f", {c['params'] / 1e6:.1f}M params" if "params" in c else ""
        click.echo(f"  {name:13} {c['tflops_paper']:9.4f} paper {c['tflops_all']:9.4f} all{extra}  "
                   f"({per}, {c['calls']:g} call(s){params})")
    if "clock" in result:
        c = result["clock"]
        where = (f"1 frame in {c['frame_clock']} (average per frame)" if "frame_clock" in c else
                 f"steps {','.join(map(str, c['full_steps']))} of {result['steps']}")
        click.echo(
            f"  clock: full UNet on {where}, {c['adaptor']} adaptor ({c['adaptor_params'] / 1e6:.2f}M parameters) "
            f"on the others; UNet {c['unet_tflops_paper_unclocked']:.3f} -> "
            f"{c['unet_tflops_paper']:.3f} TFLOPs (paper), saving {100 * c['unet_saving_paper']:.1f}% "
            f"({100 * c['unet_saving_all']:.1f}% all), frame {100 * c['frame_saving_paper']:.1f}%"
        )
    if plot:
        click.echo(f"wrote {plot}")


@cli.command()
@click.argument("input_path", metavar="INPUT", type=click.Path())
@click.option("-p", "--prompt", required=True, help="Edit instruction, e.g. 'make it sepia' (the edits above).")
@click.option("-o", "--output", required=True, type=click.Path(), help="Output video, image or frames folder.")
@recipe_options
@click.option("--height", type=click.IntRange(min=8), help="Processing height (aspect kept when --width is not given).")
@click.option("--width", type=click.IntRange(min=8), help="Processing width.")
@click.option(
    "--max-side",
    type=click.IntRange(min=8),
    help="Shrink frames whose longer side exceeds this (default: the model's working size, e.g. 512).",
)
@click.option(
    "--batch-size", type=click.IntRange(min=1), help="Frames per batch (default: as many as fit memory, at most 4)."
)
@click.option(
    "--crf", type=click.IntRange(0, 51), default=18, show_default=True,
    help="H.264 quality (lower is better; x264 without mbtree, so that the same frames give the same file).",
)
@click.option("--overwrite", is_flag=True, help="Replace an existing output.")
@click.option("--preview", type=click.Path(dir_okay=False), help="Write a contact sheet PNG (source above edited).")
@click.option("--fps", type=click.FloatRange(min=0, min_open=True), help="Frame rate for a folder of frames.")
@click.option("--progress/--no-progress", default=True, help="Show a progress bar.")
@click.option(
    "--strength",
    type=click.FloatRange(0, 1, min_open=True),
    help="img2img (SDEdit) with a text-to-image denoiser: noise each frame's latent this far into the schedule "
    "and denoise it with the prompt (same as -O denoiser.strength=S).",
)
@click.option(
    "--detail",
    type=click.Choice(DETAIL_MODES),
    help="How the edit reaches the output size: none resizes the model's frames back; global (the built-in "
    "model's default) / local apply the colour map the model made, one per frame / per window, to the source's own "
    "pixels, keeping its detail (colour edits only: what adds content is smoothed away).",
)
def edit(
    input_path: str,
    prompt: str,
    output: str,
    strength: float | None,
    detail: str | None,
    height: int | None,
    width: int | None,
    max_side: int | None,
    batch_size: int | None,
    crf: int,
    overwrite: bool,
    preview: str | None,
    fps: float | None,
    progress: bool,
    **kw: Any,
) -> None:
    """Edit a video (or an image, or a folder of frames) with a text instruction.

    \b
    The built-in model knows twelve global edits: grayscale, sepia, invert, red/green/blue tint, brighter,
    darker, more/less contrast, posterize, night ('make it sepia', 'tint it blue', 'invert the colors',
    'make it night'; `movie list --edits` lists every phrasing it was trained on). An instruction far from
    all of them gets a warning naming the closest edits. Open-ended edits ('make it look like a Van Gogh
    painting') need a model trained for them: --model DIR.
    """
    from fractions import Fraction

    from movie_core import edit as edit_mod
    from movie_core import video
    from movie_core.composer import compose as do_compose
    from movie_core.known_edits import far_warning, read_edits
    from movie_core.loading import load_pipeline

    if not prompt.strip():
        raise UsageError("the prompt is empty: say what the edit should do, e.g. -p 'make it sepia'")
    if max_side and (height or width):
        raise UsageError("--max-side and --height/--width are exclusive")
    if strength is not None:
        if any(o.split("=", 1)[0].strip() == "denoiser.strength" for o in kw.get("options") or ()):
            raise UsageError("--strength and -O denoiser.strength are the same setting: give one")
        kw["options"] = (*(kw.get("options") or ()), f"denoiser.strength={strength}")
    recipe, model, _ = resolve_recipe(kw, builtin=True)
    if detail is not None:
        recipe = recipe.replace(detail=detail)
    try:
        comp = do_compose(recipe)
    except UsageError as exc:
        if strength is not None and "strength" in str(exc) and "option" in str(exc):
            raise UsageError(f"--strength is img2img for text-to-image denoisers (e.g. --denoiser stable-diffusion); "
                             f"denoiser '{recipe.denoiser}' edits by instruction and has no strength") from None
        raise
    with video.open_source(input_path, fps=Fraction(fps).limit_denominator(1001) if fps else None) as source:
        video.check_output(output, input_path, overwrite)
        if preview:
            video.check_output(preview, input_path, overwrite=True)
        pipe = load_pipeline(comp, model)
        for note in pipe.notes:
            click.echo(f"note: {note}", err=True)
        facts = pipe.denoiser.describe()
        if facts.get("task") == "text-to-image" and facts.get("strength") is None:
            raise UsageError(
                f"denoiser '{recipe.denoiser}' is text-to-image: without --strength it would ignore the video and "
                "draw every frame from noise; pass --strength S (e.g. 0.5) to stylize it, or use `movie generate`"
            )
        ids, truncated = pipe.denoiser.tokenize([prompt])
        if truncated[0]:
            click.echo(f"warning: prompt truncated to the text encoder's {ids.shape[-1]} tokens", err=True)
        known = read_edits(model)
        far = far_warning(prompt, known) if known else None
        if far:
            click.echo(f"warning: {far}", err=True)
        policy, why_size = edit_mod.size_policy(
            recipe.resolution, edit_mod.working_side(pipe), height=height, width=width, max_side=max_side,
            multiple=int(pipe.encoder.downscale),
        )
        size = policy.target(source.height, source.width)
        per_frame = edit_mod.frame_bytes(recipe.size, pipe.dtype, policy.padded(*size), (source.height, source.width))
        batch, why_batch = edit_mod.choose_batch(per_frame, edit_mod.available_memory(pipe.device), batch_size)
        # say what was chosen for the user (not what they asked for): a resize to the model's size, a smaller batch
        resized = size != (source.height, source.width) and why_size.startswith("the model's")
        if resized or recipe.detail != "none" or (why_batch == "memory" and batch < edit_mod.DEFAULT_MAX_BATCH):
            click.echo("note: " + edit_mod.plan_line((source.height, source.width), size, why_size, batch, why_batch,
                                                     recipe.detail), err=True)
        with video.open_sink(output, source, crf=crf, overwrite=overwrite) as sink:
            summary = edit_mod.edit_video(
                pipe,
                source,
                sink,
                prompt,
                policy=policy,
                batch_size=batch,
                preview=Path(preview) if preview else None,
                progress=progress,
            )
    click.echo(
        f"edited {summary['frames']} frames in {summary['seconds']:.1f} s ({summary['frames_per_s']:.2f} frames/s) "
        f"at {summary['size'][1]}x{summary['size'][0]} -> {output}"
    )


@cli.command()
@recipe_options
@click.option("--height", type=click.IntRange(min=8), default=256, show_default=True)
@click.option("--width", type=click.IntRange(min=8), default=256, show_default=True)
@click.option("--frames", type=click.IntRange(min=1), default=4, show_default=True, help="Frames per repeat.")
@click.option("--batch-size", type=click.IntRange(min=1), default=4, show_default=True)
@click.option(
    "--repeats", type=click.IntRange(min=1), default=3, show_default=True, help="Timed repeats after one warm-up."
)
@click.option("--compare", type=click.Choice(["diffusers"]), help="Also time diffusers' InstructPix2Pix pipeline.")
@click.option("--json", "as_json", is_flag=True, help="Print JSON.")
@click.option("--save", type=click.Path(dir_okay=False), help="Also write the JSON result to this file.")
def bench(
    height: int,
    width: int,
    frames: int,
    batch_size: int,
    repeats: int,
    compare: str | None,
    as_json: bool,
    save: str | None,
    **kw: Any,
) -> None:
    """Per-component and per-frame latency, frames/s and peak memory of a recipe.

    --backend A,B,C times the same recipe through each backend in one run (e.g. eager,onnx,compile),
    in three interleaved rounds; each backend reports its median round.
    """
    from movie_core import bench as bench_mod
    from movie_core.composer import compose as do_compose

    backend_names = [b.strip() for b in (kw.pop("backend", None) or "").split(",") if b.strip()]
    recipe, model, _ = resolve_recipe(kw, builtin=True)
    if len(backend_names) > 1:
        if compare:
            raise UsageError("--compare diffusers times one backend; pass a single --backend with it")
        result = bench_mod.compare_backends(
            recipe,
            backend_names,
            model,
            height=height,
            width=width,
            frames=frames,
            batch_size=batch_size,
            repeats=repeats,
        )
        if _save_or_emit(result, save, as_json):
            return
        r = result["recipe"]
        click.echo(
            f"{height}x{width}, batch {batch_size}, "
            f"{r['denoiser']} + {r['encoder']}/{r['decoder']} ({r['size']}), "
            f"median of {result['rounds']} interleaved rounds:"
        )
        for name, r in result["backends"].items():
            click.echo(
                f"  {name:9} {r['ms_per_frame']:8.1f} ms/frame  {r['frames_per_s']:7.2f} frames/s  "
                f"x{r['speedup_vs_' + backend_names[0]]:.2f} vs {backend_names[0]}"
            )
        return
    if backend_names:
        recipe = recipe.replace(backend=backend_names[0])
    result = bench_mod.run(
        do_compose(recipe),
        model,
        height=height,
        width=width,
        frames=frames,
        batch_size=batch_size,
        repeats=repeats,
        compare=compare,
    )
    if _save_or_emit(result, save, as_json):
        return
    c = result["components"]
    click.echo(
        f"{height}x{width}, batch {batch_size}: {result['ms_per_frame']:.1f} ms/frame, "
        f"{result['frames_per_s']:.2f} frames/s, peak {result['peak_mem_mb']:.0f} MB"
    )
    click.echo(
        f"  encoder {c['encoder_ms_per_frame']:.1f} ms/frame, "
        f"denoiser {c['denoiser_ms_per_frame']:.1f} ms/frame, "
        f"decoder {c['decoder_ms_per_frame']:.1f} ms/frame, "
        f"text encoder {c['text_encoder_ms_per_video']:.1f} ms/video"
    )
    if "compare" in result:
        cmp_ = result["compare"]
        click.echo(
            f"  diffusers InstructPix2Pix: {cmp_['diffusers_ms_per_frame']:.1f} ms/frame; "
            f"speedup {cmp_['speedup']:.2f}x"
        )


@cli.command()
@click.argument("strategy")
@click.option(
    "--teacher",
    required=True,
    type=click.Path(),
    help="Teacher model folder (written by compose --save-model, convert or distill).",
)
@click.option(
    "--data",
    required=True,
    type=click.Path(),
    help="Dataset: imagefolder with metadata.jsonl, parquet, or `movie data nano` output.",
)
@click.option("--out", required=True, type=click.Path(), help="Student model folder to write.")
@click.option("--steps", type=click.IntRange(min=1), default=1000, show_default=True)
@click.option("--batch-size", type=click.IntRange(min=1), default=8, show_default=True, help="Per process.")
@click.option("--lr", type=click.FloatRange(min=0, min_open=True), help="Learning rate (default: the strategy's).")
@click.option("--warmup-steps", type=click.IntRange(min=0), help="Linear LR warm-up (default: the strategy's).")
@click.option("--grad-accum", type=click.IntRange(min=1), default=1, show_default=True)
@click.option("--mixed-precision", type=click.Choice(["no", "fp16", "bf16"]), default="no", show_default=True)
@click.option(
    "--ema", "ema_decay", type=click.FloatRange(0, 1, min_open=True, max_open=True), help="EMA decay (off by default)."
)
@click.option("--resolution", type=click.IntRange(min=8), default=64, show_default=True)
@click.option(
    "--extra-resolution",
    "extra_resolutions",
    type=click.IntRange(min=8),
    multiple=True,
    help="Also train at this size (repeatable): steps cycle through the sizes, a step at a larger size "
    "draws proportionally fewer samples.",
)
@click.option(
    "--cache-latents",
    is_flag=True,
    help="Encode each sample once with the frozen teacher encoder (much faster on CPU; a resumed run "
    "then matches an uninterrupted one up to float rounding, not bit for bit).",
)
@click.option("--checkpoint-every", type=click.IntRange(min=1), default=200, show_default=True)
@click.option("--log-every", type=click.IntRange(min=1), default=10, show_default=True)
@click.option("--seed", type=int, default=0, show_default=True)
@click.option(
    "-O", "--option", "options", multiple=True, help="Strategy option key=value (see `movie list distiller`)."
)
@click.option("--resume", is_flag=True, help="Continue the run that writes --out from its last checkpoint.")
@click.option("--overwrite", is_flag=True, help="Replace an existing output (and start the run over).")
@click.option("--progress/--no-progress", default=True)
@click.option("--json", "as_json", is_flag=True, help="Print the run summary as JSON.")
def distill(
    strategy: str,
    teacher: str,
    data: str,
    out: str,
    steps: int,
    batch_size: int,
    lr: float | None,
    warmup_steps: int | None,
    grad_accum: int,
    mixed_precision: str,
    ema_decay: float | None,
    resolution: int,
    extra_resolutions: tuple[int, ...],
    cache_latents: bool,
    checkpoint_every: int,
    log_every: int,
    seed: int,
    options: tuple[str, ...],
    resume: bool,
    overwrite: bool,
    progress: bool,
    as_json: bool,
) -> None:
    """Run one training stage (a distiller) from a teacher model on a dataset; writes the student model."""
    from movie_core.extras import require

    require("accelerate", "distill")
    from movie_core.loading import parse_options
    from movie_core.plugins import get_registry
    from movie_core.training.loop import run, train_config

    spec = get_registry().get("distiller", strategy)
    cls = spec.load_factory()
    distiller = cls(spec.make_config(**parse_options(options)))
    cfg = train_config(
        cls,
        steps=steps,
        batch_size=batch_size,
        lr=lr,
        warmup_steps=warmup_steps,
        grad_accum=grad_accum,
        mixed_precision=mixed_precision,
        ema_decay=ema_decay,
        resolution=resolution,
        extra_resolutions=extra_resolutions,
        checkpoint_every=checkpoint_every,
        log_every=log_every,
        seed=seed,
        cache_latents=cache_latents,
    )
    summary = run(
        distiller, Path(teacher), Path(data), Path(out), cfg, resume=resume, overwrite=overwrite, progress=progress
    )
    if as_json:
        _emit(summary)
    else:
        losses = ", ".join(f"{k}={v:.4g}" for k, v in summary["final_losses"].items())
        click.echo(
            f"{strategy}: {summary['steps']} steps on {summary['world_size']} process(es) "
            f"in {summary['seconds']:.1f} s ({losses}) -> {out}"
        )


def _add_plugin_commands() -> None:
    from movie_core.plugins import get_plugin_manager

    get_plugin_manager().hook.movie_register_commands(cli=cli)


def quiet_libraries() -> None:
    """The command line's stderr carries movie's own lines: the model libraries' info/warning logs and their loading
    progress bars are off unless the user sets their variables (DIFFUSERS_VERBOSITY, TRANSFORMERS_VERBOSITY,
    HF_HUB_DISABLE_PROGRESS_BARS) otherwise. Set before those libraries are imported, which read them then."""
    for var, value in (("DIFFUSERS_VERBOSITY", "error"), ("TRANSFORMERS_VERBOSITY", "error"),
                       ("HF_HUB_DISABLE_PROGRESS_BARS", "1")):
        os.environ.setdefault(var, value)


def main(argv: list[str] | None = None) -> None:
    """Entry point: plugin commands added, user errors as one line with a non-zero exit."""
    quiet_libraries()
    try:
        with terminate_like_interrupt(), warnings_as_lines():
            _add_plugin_commands()
            cli.main(args=argv, prog_name="movie", standalone_mode=False)
    except Terminated as exc:
        click.echo("movie: terminated", err=True)
        sys.exit(exc.exit_code)
    except MovieError as exc:
        click.echo(f"movie: error: {exc}", err=True)
        sys.exit(exc.exit_code)
    except click.exceptions.Abort:
        click.echo("movie: interrupted", err=True)
        sys.exit(130)
    except click.ClickException as exc:
        click.echo(f"movie: error: {' '.join(exc.format_message().split())}", err=True)
        sys.exit(exc.exit_code)
    except KeyboardInterrupt:
        click.echo("movie: interrupted", err=True)
        sys.exit(130)
    except click.exceptions.Exit as exc:
        sys.exit(exc.exit_code)


if __name__ == "__main__":
    main()
