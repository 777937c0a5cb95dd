"""The loading layer: flags / recipe / model -> a built pipeline, the same way for cli, api and ablation.

    recipe, model, init = resolve_recipe(flags, builtin=True)   # what the user asked for
    pipe = load_pipeline(recipe, model)                          # built and bound to its backend

Also the one KEY=VALUE option parser (`-O slot.key=value`) and the model-weights policy (which folder a
recipe runs on when none is given: the built-in nano weights of its denoiser).
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

from movie_core.errors import MovieError, UsageError
from movie_core.recipe import SLOTS, Recipe, load_recipe, make_recipe, preset, tomllib

# the recipe flags every command takes (movie_core.cli.recipe_options), in the order they are applied
RECIPE_FLAGS = (
    "preset", "recipe_file", "vae", "encoder", "decoder", "denoiser", "backend", "size", "init", "model",
    "steps", "scheduler", "text_guidance", "image_guidance", "seed", "device", "dtype", "anchor", "variant", "clock",
    "clock_schedule", "adaptor", "frame_clock", "frame_blend", "options",
)
_CHANGES = (
    "encoder",
    "decoder",
    "denoiser",
    "backend",
    "size",
    "steps",
    "scheduler",
    "text_guidance",
    "image_guidance",
    "seed",
    "device",
    "dtype",
    "anchor",
    "vae",
    "variant",
    "clock",
    "clock_schedule",
    "adaptor",
    "frame_clock",
    "frame_blend",
)


# the component folders of a diffusers Stable Diffusion / InstructPix2Pix folder that movie reads
DIFFUSERS_COMPONENTS = ("unet", "vae", "text_encoder", "tokenizer", "scheduler")


def parse_value(raw: str) -> Any:
    """A value as a TOML scalar (true, 3, 0.5, "text"), else the raw string."""
    try:
        return tomllib.loads(f"v = {raw}")["v"]
    except tomllib.TOMLDecodeError:
        return raw


def parse_options(pairs: tuple[str, ...] | list[str], flag: str = "-O") -> dict[str, Any]:
    """KEY=VALUE pairs -> {key: value}; keys with '-' read as '_', values as TOML scalars."""
    values: dict[str, Any] = {}
    for pair in pairs:
        key, sep, raw = pair.partition("=")
        if not sep or not key:
            raise UsageError(f"{flag} takes key=value, got {pair!r}")
        values[key.strip().replace("-", "_")] = parse_value(raw.strip())
    return values


def component_options(pairs: tuple[str, ...] | list[str], default_slot: str = "backend") -> dict[str, dict[str, Any]]:
    """`-O SLOT.KEY=VALUE` pairs -> {slot: {key: value}}; a key without a slot goes to `default_slot`."""
    out: dict[str, dict[str, Any]] = {}
    for key, value in parse_options(pairs).items():
        slot, dot, name = key.partition(".")
        if not dot:
            slot, name = default_slot, key
        if slot == "vae":
            for s in ("encoder", "decoder"):
                out.setdefault(s, {})[name] = value
            continue
        if slot not in SLOTS:
            raise UsageError(
                f"-O {key}: unknown slot '{slot}'; use one of {', '.join(SLOTS)} (e.g. -O backend.opset=18)"
            )
        out.setdefault(slot, {})[name] = value
    return out


def resolve_recipe(
    flags: dict[str, Any], builtin: bool = False, note: Callable[[str], None] | None = None
) -> tuple[Recipe, Path | None, str | None]:
    """Recipe flags -> (Recipe, model folder or None, init).

    The recipe starts from --preset, --recipe, the model folder's manifest, or the `movie` preset; flags
    override it. Steps stay unset unless asked for, so each denoiser runs its own default.
    builtin: with neither --model nor --init, run the recipe at nano size on the shipped nano weights of its
    denoiser (the default model), and say so through `note`."""
    from movie_core.weights import BUILTIN_PREFIX, read_manifest, recipe_from_index, resolve_model

    flags = {name: flags.get(name) for name in RECIPE_FLAGS}
    if flags["preset"] and flags["recipe_file"]:
        raise UsageError("--preset and --recipe are exclusive: pick one starting point")
    if flags["vae"] and (flags["encoder"] or flags["decoder"]):
        raise UsageError("--vae sets both encoder and decoder; use either --vae or --encoder/--decoder")
    if flags["init"] and flags["model"]:
        raise UsageError("--init random and --model are exclusive: random weights or loaded ones")
    model = resolve_model(flags["model"]) if flags["model"] else None
    manifest = read_manifest(model) if model else None
    index = recipe_from_index(model) if model and not (manifest and "recipe" in manifest) else None
    if index and note and model is not None:  # a damaged folder is its one error line, without a note before it
        from movie_core.weights import check_model_folder

        check_model_folder(model, flags["variant"], only=DIFFUSERS_COMPONENTS)
    if index and note:  # what the folder asks for, and which flags override it
        name, slots, what = index
        if flags["preset"] == name:
            pass
        elif flags["preset"] or flags["recipe_file"]:
            given = f"--preset {flags['preset']}" if flags["preset"] else f"--recipe {flags['recipe_file']}"
            note(f"{given} overrides the folder's model_index.json ({what}, recipe '{name}')")
        else:
            note(f"{model}/model_index.json: {what}: recipe '{name}'" + "".join(f", {k} {v}" for k, v in slots.items()))
            for key in ("vae", "encoder", "decoder", "denoiser"):
                if flags[key] and flags[key] != (slots.get("vae") if key != "denoiser" else preset(name).denoiser):
                    note(f"--{key} {flags[key]} overrides the folder's model_index.json ({what})")
    if flags["preset"]:
        base = preset(flags["preset"])
    elif flags["recipe_file"]:
        from movie_core.recipe import load

        base = load(flags["recipe_file"])
    elif manifest and "recipe" in manifest:
        base = make_recipe(manifest["recipe"])
    elif index:
        base = preset(index[0]).replace(**index[1])
    else:
        base = builtin_default_recipe() if builtin and model is None and not flags["init"] else preset("movie")
    changes = {key: flags[key] for key in _CHANGES if flags[key] is not None}
    if flags["options"]:
        merged = {slot: dict(v) for slot, v in base.component_options.items()}
        for slot, values in component_options(flags["options"]).items():
            merged[slot] = merged.get(slot, {}) | values
        changes["component_options"] = merged
    recipe = base.replace(**changes)
    if flags["backend"] is None and not flags["recipe_file"]:
        recipe = device_default_backend(recipe, note)
    if builtin and model is None and not flags["init"]:
        if recipe.size != "nano" and flags["size"]:
            raise UsageError(f"no built-in {recipe.size}-size weights: pass --model DIR (or --init random)")
        recipe = recipe.replace(size="nano")
        model = builtin_weights(recipe)
        if note:
            note(
                f"no --model given: using the built-in nano model {BUILTIN_PREFIX}{builtin_stage(recipe)} "
                f"({recipe.encoder} encoder, {recipe.decoder} decoder, {recipe.steps or 'default'} steps)"
            )
    return recipe, model, flags["init"]


# the default model's autoencoder (no --model, --preset or --recipe): the `movie` preset's TAESD without its
# full-resolution blocks, distilled into TAESD's latents (movie_plugins.nano.taesd_lite). At 256x256 on two CPU cores
# the autoencoders are ~95% of a frame; this pair takes the default from 8.8 to 20 frames/s there (docs/results).
DEFAULT_AUTOENCODER = "taesd-lite"
# `movie edit`'s default --detail on the built-in model (movie_core.detail; chosen on training photographs by
# scripts/detail_tune.py: one colour map per frame beat every window radius for the model's global edits)
DEFAULT_DETAIL = "global"


def builtin_default_recipe() -> Recipe:
    """The default model's recipe before any flag: the `movie` preset, with DEFAULT_AUTOENCODER as both autoencoders
    where the shipped nano family has its weights (its autoencoders/<name> folder), and DEFAULT_DETAIL: its edits
    are all global colour edits, so one colour map per frame carries them onto the full-resolution source."""
    from movie_core.weights import builtin_root

    recipe = preset("movie").replace(detail=DEFAULT_DETAIL)
    if (builtin_root() / "autoencoders" / DEFAULT_AUTOENCODER).is_dir():
        recipe = recipe.replace(encoder=DEFAULT_AUTOENCODER, decoder=DEFAULT_AUTOENCODER)
    return recipe


def device_default_backend(recipe: Recipe, note: Callable[[str], None] | None = None) -> Recipe:
    """A recipe on the `eager` default whose device a backend declares itself the default for
    (`extra={"default_for_devices": ["cuda"]}`, e.g. cuda-graphs) runs through that backend when it is available."""
    if recipe.backend != "eager" or recipe.clocked:  # a clocked recipe leaves eager only when a backend is asked for
        return recipe
    from movie_core.plugins import get_registry

    device = recipe.device.split(":")[0]
    if device == "auto":
        from movie_core.components import resolve_device

        device = resolve_device("auto").split(":")[0]
    for spec in get_registry().specs("backend"):
        if device in spec.extra.get("default_for_devices", ()):
            ok, _ = spec.load_factory().available()
            if ok:
                if note:
                    note(
                        f"--device {recipe.device}: running through the '{spec.name}' backend "
                        f"(--backend eager to run the modules as they are)"
                    )
                return recipe.replace(backend=spec.name)
    return recipe


def builtin_stage(recipe: Recipe) -> str:
    """The built-in weights a recipe's denoiser runs on: its spec's `stage` (a derived one's base's), else its name."""
    from movie_core.plugins import get_registry

    spec = get_registry().get("denoiser", recipe.denoiser)
    return str(spec.extra.get("stage") or spec.name)


def builtin_weights(recipe: Recipe) -> Path:
    """The shipped nano folder of the recipe's denoiser, or a one-line error."""
    from movie_core.weights import builtin_model

    stage = builtin_stage(recipe)
    folder = builtin_model(stage)
    if folder is None:
        raise UsageError(
            f"no weights: no built-in nano model for denoiser '{recipe.denoiser}' (stage '{stage}'); "
            "pass --model DIR (or --init random to run the recipe with random weights)"
        )
    return folder


def resolve_weights(recipe: Recipe, model: str | Path | None) -> Path | None:
    """The model folder a recipe runs with: `model` (a folder, .safetensors file, `nano:<stage>`, a cached repo id),
    None for `model="random"`, and without a model the built-in nano weights of the recipe's denoiser
    (nano size only). A nano model folder serves both autoencoders, so hybrids need nothing else."""
    from movie_core.weights import read_manifest, resolve_model

    if model is not None and str(model) == "random":
        return None
    if model is None:
        if recipe.size != "nano":
            raise UsageError(
                f"no built-in weights at {recipe.size} size: pass model=DIR, model='random', "
                "or run the recipe at size='nano' (the built-in nano models)"
            )
        return builtin_weights(recipe)
    folder = resolve_model(model)
    size = ((read_manifest(folder) or {}).get("recipe") or {}).get("size")
    if size and size != recipe.size:
        raise UsageError(
            f"model {model} is {size}-size but the recipe is {recipe.size}: use recipe.replace(size='{size}')"
        )
    return folder


def build(
    composition: Any,
    model: str | Path | None = None,
    meta: bool = False,
    backend_options: dict[str, Any] | None = None,
    cache: Any = None,
) -> Any:
    """Build the pipeline of a composition, bound to its backend.

    Weights: random, from a model folder, or none (the meta device).
    """
    from movie_core.pipeline import Pipeline

    return Pipeline.build(
        composition, model=Path(model) if model else None, meta=meta, backend_options=backend_options, cache=cache
    )


def load_pipeline(recipe_or_composition: Any, weights: Path | None, **kw: Any) -> Any:
    """Build the pipeline of a recipe (or composition) on a model folder (None: random init); a folder that does
    not fit the recipe is one line naming it."""
    from movie_core.composer import Composition, compose

    comp = recipe_or_composition
    if not isinstance(comp, Composition):
        comp = compose(load_recipe(comp))
    try:
        return build(comp, model=weights, **kw)
    except MovieError:
        raise
    except Exception as exc:  # a folder that does not fit the recipe: diffusers/transformers raise many kinds
        if weights is None:
            raise
        reason = " ".join(str(exc).split())[:300] or type(exc).__name__
        raise MovieError(f"cannot load model {weights} for this recipe: {type(exc).__name__}: {reason}") from None
