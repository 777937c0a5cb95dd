"""The plugin manager: built-ins from DEFAULT_PLUGINS, third parties from the `movie` entry points."""

from __future__ import annotations

import importlib
import importlib.metadata
import os
from typing import Any

import pluggy

from movie_core import hookspecs
from movie_core.errors import MovieError
from movie_core.registry import FAMILIES, Registry

ENTRY_POINT_GROUP = "movie"

DEFAULT_PLUGINS = (
    "movie_plugins.autoencoders.sd_vae",
    "movie_plugins.autoencoders.taesd",
    "movie_plugins.denoisers.instruct_pix2pix",
    "movie_plugins.denoisers.mobile_pix2pix",
    "movie_plugins.denoisers.mobile_pix2pix_mmg",
    "movie_plugins.denoisers.mobile_pix2pix_1step",
    "movie_plugins.denoisers.convert",
    "movie_plugins.backends.eager",
    "movie_plugins.backends.compile",
    "movie_plugins.backends.cuda_graphs",
    "movie_plugins.backends.onnx",
    "movie_plugins.backends.hexagon",
    "movie_plugins.backends.aihub",
    "movie_plugins.backends.tensorrt",
    "movie_plugins.backends.export_command",
    "movie_plugins.distillers.pix2pix_finetune",
    "movie_plugins.distillers.mmg",
    "movie_plugins.distillers.vpred",
    "movie_plugins.distillers.adversarial",
    "movie_plugins.data_command",
    "movie_plugins.nano_chain",
    "movie_plugins.eval_command",
    "movie_plugins.ablate_command",
)

REGISTER_HOOKS = {f"movie_register_{family}s": family for family in FAMILIES}

_state: dict[str, Any] = {}


class PluginError(MovieError):
    """A plugin that fails to load or implements a hook that does not exist."""


def _version() -> str:
    try:
        return importlib.metadata.version("movie")
    except importlib.metadata.PackageNotFoundError:
        return "0+unknown"


def _blocked() -> set[str]:
    return {name.strip() for name in os.environ.get("MOVIE_BLOCK_PLUGINS", "").split(",") if name.strip()}


def _build_manager() -> tuple[pluggy.PluginManager, dict[str, dict[str, str]]]:
    pm = pluggy.PluginManager("movie")
    pm.add_hookspecs(hookspecs)
    info: dict[str, dict[str, str]] = {}
    for name in _blocked():
        pm.set_blocked(name)
    for module_name in DEFAULT_PLUGINS:
        if pm.is_blocked(module_name):
            continue
        mod = importlib.import_module(module_name)
        pm.register(mod, name=module_name)
        info[module_name] = {"version": _version(), "source": "built-in"}
    if not os.environ.get("MOVIE_DISABLE_PLUGIN_AUTOLOAD"):
        for ep in importlib.metadata.entry_points(group=ENTRY_POINT_GROUP):
            if pm.is_blocked(ep.name) or pm.has_plugin(ep.name):
                continue
            try:
                plugin = ep.load()
            except Exception as exc:  # a broken third-party plugin must name itself
                raise PluginError(f"plugin '{ep.name}' failed to load: {type(exc).__name__}: {exc}") from exc
            pm.register(plugin, name=ep.name)
            dist = getattr(ep, "dist", None)
            info[ep.name] = {"version": dist.version if dist else "", "source": "entry point"}
    try:
        pm.check_pending()
    except pluggy.PluginValidationError as exc:
        raise PluginError(f"plugin '{pm.get_name(exc.plugin)}' implements an unknown hook: {exc}") from None
    return pm, info


def get_plugin_manager() -> pluggy.PluginManager:
    """The process-wide plugin manager, loading plugins on first use."""
    if "pm" not in _state:
        _state["pm"], _state["info"] = _build_manager()
    return _state["pm"]


def get_registry() -> Registry:
    """The registry filled by every loaded plugin's movie_register_* hooks."""
    if "registry" not in _state:
        pm = get_plugin_manager()
        registry = Registry()
        for hook_name in REGISTER_HOOKS:
            for impl in getattr(pm.hook, hook_name).get_hookimpls():
                version = _state["info"].get(impl.plugin_name, {}).get("version", "")
                impl.function(registry=registry.for_plugin(impl.plugin_name, version))
        _state["registry"] = registry
    return _state["registry"]


def plugin_info() -> list[dict[str, Any]]:
    """Installed plugins with version, source and the hooks each implements."""
    pm = get_plugin_manager()
    rows = []
    for name, plugin in sorted(pm.list_name_plugin(), key=lambda item: item[0]):
        if plugin is None:
            continue
        hooks = sorted(impl.name for impl in pm.get_hookcallers(plugin) or [])
        rows.append({"name": name, **_state["info"].get(name, {}), "hooks": hooks})
    return rows


def reset() -> None:
    """Forget loaded plugins so the next call reloads them (tests, long-lived processes)."""
    _state.clear()
