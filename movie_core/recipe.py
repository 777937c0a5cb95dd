"""Recipe: which component fills each slot, plus the run options. Frozen, validated, TOML in/out."""

from __future__ import annotations

import numbers
import re
import sys
from importlib import resources
from pathlib import Path
from typing import Any

import attrs

from movie_core.errors import UsageError

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover
    import tomli as tomllib

SLOTS = ("encoder", "decoder", "denoiser", "backend")
PRESETS = ("base", "mobile", "mmg", "movie")
SIZES = ("full", "nano")
DTYPES = ("float32", "float16", "bfloat16")
_RESOLUTION = re.compile(r"^(auto|keep|max-side:\d+|\d+x\d+)$")
_ANCHOR = re.compile(r"^(middle|first|none|\d+)$")
_DEVICE = re.compile(r"^(cpu|auto|mps|cuda(:\d+)?)$")
_VARIANT = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_-]*$")
_SCHEDULER = re.compile(r"^[a-z0-9][a-z0-9_-]*$")  # which names exist is the denoiser's to say
# Clockwork: what stands in for the low-resolution core on the clock's other steps/frames: identity, the model
# folder's trained adaptor, or a path to an adaptor folder (anything with a path separator)
ADAPTORS = ("identity", "trained")


def _positive(instance: Any, attribute: attrs.Attribute, value: Any) -> None:
    if value is not None and (isinstance(value, bool) or not isinstance(value, numbers.Integral) or value < 1):
        raise ValueError(f"{attribute.name} must be a whole number >= 1, got {value!r}")


def _text(instance: Any, attribute: attrs.Attribute, value: Any) -> None:
    if not isinstance(value, str):
        raise ValueError(f"{attribute.name} must be a name in quotes, got {value!r}")


def _whole(value: Any) -> int:
    """An int as it is (not a bool, not a float with a fraction, not text); else a ValueError the caller names."""
    if isinstance(value, bool) or not isinstance(value, numbers.Integral):
        raise TypeError(value)
    return int(value)


def _number(value: Any) -> float:
    if isinstance(value, bool) or not isinstance(value, numbers.Real):
        raise TypeError(value)
    return float(value)


def _anchor(value: Any) -> str:
    if isinstance(value, bool) or not isinstance(value, (numbers.Integral, str)):
        raise TypeError(value)
    return str(value) if isinstance(value, str) else str(int(value))


_KINDS = {"seed": ("a whole number", _whole), "text_guidance": ("a number", _number),
          "image_guidance": ("a number", _number), "anchor": ("middle, first, none or a frame index", _anchor)}


def _typed(name: str, value: Any) -> Any:
    what, convert = _KINDS[name]
    try:
        return convert(value)
    except TypeError:
        raise ValueError(f"{name} must be {what}, got {value!r}") from None


def _seed(value: Any) -> int:
    return int(_typed("seed", value))


def _text_guidance(value: Any) -> float:
    return float(_typed("text_guidance", value))


def _image_guidance(value: Any) -> float:
    return float(_typed("image_guidance", value))


def _anchor_value(value: Any) -> str:
    return str(_typed("anchor", value))


def _non_negative(instance: Any, attribute: attrs.Attribute, value: float) -> None:
    if not value >= 0:  # also rejects NaN
        raise ValueError(f"{attribute.name} must be >= 0, got {value}")


def _matches(pattern: re.Pattern, what: str):
    def check(instance: Any, attribute: attrs.Attribute, value: str) -> None:
        if not isinstance(value, str) or not pattern.match(value):
            raise ValueError(f"{attribute.name} must be {what}, got {value!r}")

    return check


def _schedule(value: Any) -> tuple[int, ...] | None:
    """clock_schedule from a list of step indices or a comma-separated string ("0,2,3"); None: unset."""
    if value is None or isinstance(value, tuple) and all(isinstance(v, int) for v in value):
        return value
    items = value.split(",") if isinstance(value, str) else value
    try:
        steps = [int(str(v).strip()) for v in items]
    except (TypeError, ValueError):
        raise ValueError(f"clock_schedule must be step indices such as 0,2,3, got {value!r}") from None
    return tuple(steps)


def _check_schedule(instance: Any, attribute: attrs.Attribute, value: tuple[int, ...] | None) -> None:
    if value is None:
        return
    if not value or value[0] != 0 or any(b <= a for a, b in zip(value, value[1:])):
        raise ValueError(f"clock_schedule must list increasing step indices starting with 0 (the first step always "
                         f"runs the full network), got {','.join(map(str, value))}")


def _adaptor(instance: Any, attribute: attrs.Attribute, value: str) -> None:
    if value not in ADAPTORS and "/" not in value and "\\" not in value:
        raise ValueError(f"adaptor must be identity, trained (the model folder's adaptor/) or a path to an adaptor "
                         f"folder such as ./my-model/adaptor, got {value!r}")


def _component_options(instance: Any, attribute: attrs.Attribute, value: dict) -> None:
    for slot, opts in value.items():
        if slot not in SLOTS:
            raise ValueError(f"component_options: unknown slot '{slot}'; slots are {', '.join(SLOTS)}")
        if not isinstance(opts, dict):
            raise ValueError(f"component_options.{slot} must be a table of key = value")


# how a frame clock's adaptor gets r_out_prev (movie_core.clockwork.frame_blend); the first is the default
FRAME_BLENDS = ("linear", "previous")
DETAIL_MODES = ("none", "global", "local")  # movie_core.detail

@attrs.frozen(kw_only=True)
class Recipe:
    """A pipeline configuration: component names per slot and the options they run with."""

    encoder: str = attrs.field(default="taesd", validator=_text)
    decoder: str = attrs.field(default="taesd", validator=_text)
    denoiser: str = attrs.field(default="mobile-pix2pix-1step", validator=_text)
    backend: str = attrs.field(default="eager", validator=_text)
    steps: int | None = attrs.field(default=None, validator=_positive)
    scheduler: str | None = attrs.field(
        default=None,
        validator=attrs.validators.optional(
            _matches(_SCHEDULER, "a sampler name such as ddim, euler, euler-ancestral or lcm")
        ),
    )
    text_guidance: float = attrs.field(default=7.5, converter=_text_guidance, validator=_non_negative)
    image_guidance: float = attrs.field(default=1.5, converter=_image_guidance, validator=_non_negative)
    seed: int = attrs.field(default=0, converter=_seed)
    size: str = attrs.field(default="full", validator=[_text, attrs.validators.in_(SIZES)])
    # processing size: auto (the model's working size on the long side), keep (the source's), max-side:N or HxW
    resolution: str = attrs.field(default="auto", validator=_matches(_RESOLUTION, "auto, keep, max-side:N or HxW"))
    anchor: str = attrs.field(
        default="middle",
        converter=_anchor_value,
        validator=_matches(_ANCHOR, "middle, first, none or a frame index"),
    )
    # how the edit reaches the output size (movie_core.detail): 'none' resizes the model's frames back; 'global' /
    # 'local' fit the colour map that took the source to the edit at the working size (one per frame / per window)
    # and apply it to the full-resolution source, so its detail survives (for colour edits only)
    detail: str = attrs.field(default="none", validator=[_text, attrs.validators.in_(DETAIL_MODES)])
    device: str = attrs.field(default="cpu", validator=_matches(_DEVICE, "cpu, auto, mps, cuda or cuda:N"))
    dtype: str = attrs.field(default="float32", validator=[_text, attrs.validators.in_(DTYPES)])
    # which weight files of a model folder: "fp16" reads *.fp16.safetensors
    # (None: the plain ones, else the only variant)
    variant: str | None = attrs.field(
        default=None, validator=attrs.validators.optional(_matches(_VARIANT, "a weights variant such as fp16"))
    )
    # Clockwork: the full network runs every clock-th step (or on the steps clock_schedule lists), the adaptor
    # stands in for its low-resolution core on the others (movie_core.clockwork)
    clock: int = attrs.field(default=1, validator=_positive)
    clock_schedule: tuple[int, ...] | None = attrs.field(default=None, converter=_schedule, validator=_check_schedule)
    adaptor: str = attrs.field(default="identity", validator=[_text, _adaptor])
    # Clockwork across video frames (beyond the paper): frames 0, N, 2N, ... and the anchor run the full network
    frame_clock: int = attrs.field(default=1, validator=_positive)
    # how a frame between full frames gets the r_out its adaptor starts from: 'linear' (between the full frames on
    # either side where the later one is known, else the last one's) or 'previous' (the last full frame's, as the
    # step clock does)
    frame_blend: str = attrs.field(default="linear", validator=[_text, attrs.validators.in_(FRAME_BLENDS)])
    # per slot, the component's own options: {"backend": {"dynamic_batch": False}, "denoiser": {...}}
    component_options: dict = attrs.field(factory=dict, converter=dict, validator=_component_options)

    def __attrs_post_init__(self) -> None:
        if self.clock_schedule is not None and self.clock != 1:
            raise ValueError(
                f"give clock or clock_schedule, not both (clock {self.clock}, clock_schedule "
                f"{','.join(map(str, self.clock_schedule))})"
            )
        if self.frame_clock != 1 and (self.clock != 1 or self.clock_schedule is not None):
            raise ValueError(f"give a step clock (clock, clock_schedule) or frame_clock, not both (frame_clock "
                             f"{self.frame_clock}, clock {self.clock})")

    @property
    def clocked(self) -> bool:
        """Whether Clockwork is on: some steps run the adaptor instead of the low-resolution core."""
        return self.clock > 1 or self.clock_schedule is not None or self.frame_clock > 1

    def replace(self, **changes: Any) -> Recipe:
        """A copy with some fields changed; `vae=X` sets encoder and decoder together."""
        vae = changes.pop("vae", None)
        if vae is not None:
            changes.setdefault("encoder", vae)
            changes.setdefault("decoder", vae)
        return make_recipe(attrs.asdict(self) | changes)

    def components(self) -> dict[str, str]:
        """Slot -> component name."""
        return {slot: getattr(self, slot) for slot in SLOTS}

    def options(self) -> dict[str, Any]:
        """Everything that is not a slot."""
        return {k: v for k, v in attrs.asdict(self).items() if k not in SLOTS}

    def to_toml(self) -> str:
        """TOML text with [components] and [options] tables (unset options are left out)."""
        lines = ["[components]"]
        lines += [f'{slot} = "{name}"' for slot, name in self.components().items()]
        lines += ["", "[options]"]
        for key, value in self.options().items():
            if value is None or key == "component_options":
                continue
            lines.append(f"{key} = {_toml_value(value)}")
        for slot, opts in self.component_options.items():
            if opts:
                lines += ["", f"[component_options.{slot}]"]
                lines += [f"{key} = {_toml_value(value)}" for key, value in opts.items()]
        return "\n".join(lines) + "\n"

    def save(self, path: str | Path) -> None:
        """Write the recipe as TOML."""
        Path(path).write_text(self.to_toml())


def _toml_value(value: Any) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, (int, float)):
        return repr(value)
    if isinstance(value, (list, tuple)):
        return "[" + ", ".join(_toml_value(v) for v in value) + "]"
    return '"' + str(value).replace("\\", "\\\\").replace('"', '\\"') + '"'


def make_recipe(values: dict[str, Any]) -> Recipe:
    """Build a Recipe from flat keys, turning bad keys and values into one-line UsageErrors."""
    known = {a.name for a in attrs.fields(Recipe)}
    unknown = sorted(set(values) - known)
    if unknown:
        raise UsageError(f"unknown recipe key '{unknown[0]}'; known keys: {', '.join(sorted(known))}")
    try:
        return Recipe(**values)
    except (TypeError, ValueError) as exc:
        raise UsageError(f"bad recipe value: {exc}") from None


def from_toml(text: str, source: str = "recipe") -> Recipe:
    """Parse recipe TOML ([components] and [options] tables); unknown keys are rejected by name."""
    try:
        data = tomllib.loads(text)
    except tomllib.TOMLDecodeError as exc:
        raise UsageError(f"{source}: not valid TOML: {exc}") from None
    flat: dict[str, Any] = {}
    if "component_options" in data:
        flat["component_options"] = data.pop("component_options")
    for table, allowed in (("components", set(SLOTS)), ("options", None)):
        section = data.pop(table, {})
        if not isinstance(section, dict):
            raise UsageError(f"{source}: '{table}' must be a table")
        for key, value in section.items():
            if allowed is not None and key not in allowed:
                raise UsageError(f"{source}: unknown recipe key '{table}.{key}'; slots are {', '.join(SLOTS)}")
            if allowed is None and key in SLOTS:
                raise UsageError(f"{source}: '{key}' belongs in [components], not [options]")
            flat[key] = value
    if data:
        raise UsageError(
            f"{source}: unknown recipe key '{sorted(data)[0]}'; expected tables [components] and [options]"
        )
    try:
        return make_recipe(flat)
    except UsageError as exc:
        raise UsageError(f"{source}: {exc}") from None


def load(path: str | Path) -> Recipe:
    """Read a recipe TOML file."""
    path = Path(path)
    try:
        text = path.read_text()
    except OSError as exc:
        raise UsageError(f"cannot read recipe {path}: {exc.strerror or exc}") from None
    return from_toml(text, source=str(path))


def preset(name: str) -> Recipe:
    """One of the shipped presets: base, mobile, mmg, movie (the rows of the paper's Table 1)."""
    if name not in PRESETS:
        from movie_core.registry import UnknownComponentError

        raise UnknownComponentError("preset", name, list(PRESETS))
    text = (resources.files("movie_core") / "presets" / f"{name}.toml").read_text()
    return from_toml(text, source=f"preset {name}")


def load_recipe(spec: Recipe | str | Path) -> Recipe:
    """A Recipe from a preset name (base, mobile, mmg, movie), a recipe TOML file, or a Recipe (returned as is)."""
    if isinstance(spec, Recipe):
        return spec
    if str(spec) in PRESETS:
        return preset(str(spec))
    if Path(spec).suffix == ".toml" or Path(spec).exists():
        return load(spec)
    return preset(str(spec))  # not a file either: the error names the presets
