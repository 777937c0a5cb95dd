"""Component specs and the registry that plugins fill through the movie_register_* hooks."""

from __future__ import annotations

import difflib
import importlib
from collections.abc import Iterator
from typing import Any

import attrs

from movie_core.errors import MovieError, UsageError

FAMILIES = ("autoencoder", "denoiser", "distiller", "backend")


class PluginError(MovieError):
    """A plugin that fails to load, implements a hook that does not exist, or names a factory that does not import."""


def one_line(exc: BaseException) -> str:
    """'Type: message' on one line, for errors that must fit the CLI's one-line report."""
    text = " ".join(str(exc).split())
    return f"{type(exc).__name__}: {text}" if text else type(exc).__name__


def _check_factory(instance: Any, attribute: attrs.Attribute, value: str) -> None:
    if not value and instance.base:
        return  # a derived component takes its base's factory
    module, _, attr = value.partition(":")
    if not module or not attr:
        raise ValueError(f"factory must be 'module:attr', got {value!r}")

# defaults a derived component may set that are sampling options of the recipe, not config fields
SAMPLING_DEFAULTS = ("steps", "text_guidance", "image_guidance")


@attrs.frozen
class ComponentSpec:
    """What a plugin registers: a named component, built lazily from a 'module:attr' factory.

    A derived component names `base` (another component of the same family) and leaves out what it
    shares: factory, config, latent space and extra (built-in weights included) come from the base;
    `defaults` are merged over the base's (config fields, and `steps` / `text_guidance` /
    `image_guidance`, used when the recipe leaves them unset)."""

    family: str = attrs.field(validator=attrs.validators.in_(FAMILIES))
    name: str = attrs.field(validator=attrs.validators.matches_re(r"^[a-z0-9][a-z0-9._-]*$"))
    summary: str
    factory: str = attrs.field(default="", validator=_check_factory)
    config: type | None = None
    latent_space: str | None = None
    plugin: str = ""
    version: str = ""
    extra: dict = attrs.field(factory=dict, converter=dict)
    base: str | None = None
    defaults: dict = attrs.field(factory=dict, converter=dict)

    def derive(self, base: ComponentSpec) -> ComponentSpec:
        """This derived spec with everything it leaves out taken from its (resolved) base."""
        return attrs.evolve(
            self,
            factory=self.factory or base.factory,
            config=self.config or base.config,
            latent_space=self.latent_space or base.latent_space,
            extra=base.extra | self.extra,
            defaults=base.defaults | self.defaults,
        )

    def config_defaults(self) -> dict[str, Any]:
        """The defaults that are config fields (not the recipe's sampling options)."""
        return {k: v for k, v in self.defaults.items() if k not in SAMPLING_DEFAULTS}

    def options(self) -> list[dict[str, Any]]:
        """The options this component takes: name, default and type, from its config class."""
        if self.config is None:
            return []
        rows = []
        for field in attrs.fields(self.config):
            default = field.default
            if isinstance(default, attrs.Factory):  # type: ignore[arg-type]
                default = default.factory()
            if field.alias in self.defaults:
                default = self.defaults[field.alias]
            rows.append({"name": field.alias, "default": default,
                         "type": getattr(field.type, "__name__", None) or str(field.type or "")})
        return rows

    def load_factory(self) -> Any:
        """Import and return the factory object (this is where torch gets imported).

        A factory that does not import raises PluginError naming the plugin, family, component and the cause."""
        module, _, attr = self.factory.partition(":")
        try:
            obj = importlib.import_module(module)
        except Exception as exc:  # the plugin's code or packaging, not the core's: name the plugin
            raise self._factory_error(one_line(exc)) from exc
        for part in attr.split("."):
            try:
                obj = getattr(obj, part)
            except AttributeError:
                raise self._factory_error(f"module '{module}' has no attribute '{attr}'") from None
        return obj

    def _factory_error(self, cause: str) -> PluginError:
        owner = f"plugin '{self.plugin}'" + (f" {self.version}" if self.version else "")
        return PluginError(f"{owner}: {self.family} '{self.name}': cannot import factory '{self.factory}': {cause}")

    def make_config(self, **values: Any) -> Any:
        """Build this component's config object (over its defaults), rejecting unknown keys by name."""
        values = self.config_defaults() | values
        if self.config is None:
            if values:
                raise UsageError(f"{self.family} '{self.name}' takes no options, got: {', '.join(sorted(values))}")
            return None
        known = {a.alias for a in attrs.fields(self.config)}
        unknown = sorted(set(values) - known)
        if unknown:
            raise UsageError(
                f"unknown option {unknown[0]!r} for {self.family} '{self.name}'; "
                f"known: {', '.join(sorted(known)) or 'none'}"
            )
        try:
            return self.config(**values)
        except (TypeError, ValueError) as exc:
            # attrs' built-in validators raise with (message, attribute, ...): keep the message only
            message = exc.args[0] if len(exc.args) > 1 and isinstance(exc.args[0], str) else exc
            raise UsageError(f"bad option for {self.family} '{self.name}': {message}") from exc


class UnknownComponentError(UsageError):
    """A name that no plugin registered."""

    def __init__(self, family: str, name: str, available: list[str]):
        self.family, self.name, self.available = family, name, available
        close = difflib.get_close_matches(name, available, n=1, cutoff=0.0)
        hint = f"; did you mean '{close[0]}'?" if close else ""
        names = ", ".join(available) if available else "none registered"
        super().__init__(f"unknown {family} '{name}'; available: {names}{hint}")


class DuplicateComponentError(UsageError):
    """Two plugins registered the same family and name."""

    def __init__(self, family: str, name: str, first: str, second: str):
        super().__init__(
            f"duplicate {family} '{name}': registered by plugin '{first}' and by plugin '{second}'"
        )


class Registry:
    """All component specs, per family. Duplicates are errors so ablations stay reproducible."""

    def __init__(self) -> None:
        self._specs: dict[str, dict[str, ComponentSpec]] = {f: {} for f in FAMILIES}

    def register(self, spec: ComponentSpec) -> ComponentSpec:
        """Add a spec; a second spec with the same family and name is an error."""
        existing = self._specs[spec.family].get(spec.name)
        if existing is not None:
            raise DuplicateComponentError(spec.family, spec.name, existing.plugin, spec.plugin)
        self._specs[spec.family][spec.name] = spec
        return spec

    def for_plugin(self, plugin: str, version: str = "") -> PluginRegistry:
        """A view that stamps the owning plugin on every spec registered through it."""
        return PluginRegistry(self, plugin, version)

    def get(self, family: str, name: str) -> ComponentSpec:
        """The spec for a name (a derived one resolved through its base).

        An unknown name raises UnknownComponentError, naming what exists.
        """
        if family not in self._specs:
            raise UsageError(f"unknown family '{family}'; available: {', '.join(FAMILIES)}")
        return self._resolve(family, name, ())

    def _resolve(self, family: str, name: str, seen: tuple[str, ...]) -> ComponentSpec:
        try:
            spec = self._specs[family][name]
        except KeyError:
            if seen:
                raise UsageError(f"{family} '{seen[-1]}' derives from '{name}', which no plugin registered; "
                                 f"available: {', '.join(self.names(family))}") from None
            raise UnknownComponentError(family, name, self.names(family)) from None
        if spec.base is None:
            return spec
        if spec.base in seen or spec.base == name:
            raise UsageError(f"{family} '{name}' derives from itself through: {' -> '.join(seen + (name, spec.base))}")
        return spec.derive(self._resolve(family, spec.base, seen + (name,)))

    def names(self, family: str) -> list[str]:
        """Registered names of one family, sorted."""
        return sorted(self._specs[family])

    def specs(self, family: str | None = None) -> Iterator[ComponentSpec]:
        """All specs, or those of one family, in family then name order."""
        for fam in (family,) if family else FAMILIES:
            for name in self.names(fam):
                yield self.get(fam, name)


class PluginRegistry:
    """What a hook implementation receives: register() stamps the plugin's name and version."""

    def __init__(self, registry: Registry, plugin: str, version: str) -> None:
        self._registry, self.plugin, self.version = registry, plugin, version

    def register(self, spec: ComponentSpec | None = None, **fields: Any) -> ComponentSpec:
        """Register a ComponentSpec (or build one from keyword fields)."""
        if spec is None:
            spec = ComponentSpec(**fields)
        return self._registry.register(attrs.evolve(spec, plugin=self.plugin, version=spec.version or self.version))

    def __getattr__(self, name: str) -> Any:
        return getattr(self._registry, name)
