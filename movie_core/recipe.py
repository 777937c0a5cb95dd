"""Recipe: which component fills each slot, plus the run options. Frozen, validated, TOML in/out."""

from __future__ import annotations

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
_RESOLUTION = re.compile(r"^(keep|max-side:\d+|\d+x\d+)$")
_ANCHOR = re.compile(r"^(middle|first|none|\d+)$")
_DEVICE = re.compile(r"^(cpu|auto|mps|cuda(:\d+)?)$")
_SCHEDULER = re.compile(r"^[a-z0-9][a-z0-9_-]*$")  # which names exist is the denoiser's to say


def _positive(instance: Any, attribute: attrs.Attribute, value: Any) -> None:
    if value is not None and value < 1:
        raise ValueError(f"{attribute.name} must be >= 1, got {value}")


def _non_negative(instance: Any, attribute: attrs.Attribute, value: float) -> None:
    if not value >= 0:  # also rejects NaN
        raise ValueError(f"{attribute.name} must be >= 0, got {value}")


def _matches(pattern: re.Pattern, what: str):
    def check(instance: Any, attribute: attrs.Attribute, value: str) -> None:
        if not pattern.match(value):
            raise ValueError(f"{attribute.name} must be {what}, got {value!r}")

    return check


def _component_options(instance: Any, attribute: attrs.Attribute, value: dict) -> None:
    for slot, opts in value.items():
        if slot not in SLOTS:
            raise ValueError(f"component_options: unknown slot '{slot}'; slots are {', '.join(SLOTS)}")
        if not isinstance(opts, dict):
            raise ValueError(f"component_options.{slot} must be a table of key = value")


@attrs.frozen(kw_only=True)
class Recipe:
    """A pipeline configuration: component names per slot and the options they run with."""

    encoder: str = "taesd"
    decoder: str = "taesd"
    denoiser: str = "mobile-pix2pix-1step"
    backend: str = "eager"
    steps: int | None = attrs.field(default=None, validator=_positive)
    scheduler: str | None = attrs.field(default=None, validator=attrs.validators.optional(
        _matches(_SCHEDULER, "a sampler name such as ddim, euler, euler-ancestral or lcm")))
    text_guidance: float = attrs.field(default=7.5, converter=float, validator=_non_negative)
    image_guidance: float = attrs.field(default=1.5, converter=float, validator=_non_negative)
    seed: int = attrs.field(default=0, converter=int)
    size: str = attrs.field(default="full", validator=attrs.validators.in_(SIZES))
    resolution: str = attrs.field(default="keep", validator=_matches(_RESOLUTION, "keep, max-side:N or HxW"))
    anchor: str = attrs.field(default="middle", converter=str,
                              validator=_matches(_ANCHOR, "middle, first, none or a frame index"))
    device: str = attrs.field(default="cpu", validator=_matches(_DEVICE, "cpu, auto, mps, cuda or cuda:N"))
    dtype: str = attrs.field(default="float32", validator=attrs.validators.in_(DTYPES))
    # per slot, the component's own options: {"backend": {"dynamic_batch": False}, "denoiser": {...}}
    component_options: dict = attrs.field(factory=dict, converter=dict, validator=_component_options)

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
        raise UsageError(f"{source}: unknown recipe key '{sorted(data)[0]}'; "
                         "expected tables [components] and [options]")
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
