"""The plugin manager: built-ins from DEFAULT_PLUGINS, third parties from the `movie` entry points."""

from __future__ import annotations

import difflib
import importlib
import importlib.metadata
import os
import sys
from typing import Any

import pluggy

from movie_core import hookspecs
from movie_core.registry import FAMILIES, PluginError, Registry, one_line

ENTRY_POINT_GROUP = "movie"

DEFAULT_PLUGINS = (
    "movie_plugins.autoencoders.sd_vae",
    "movie_plugins.autoencoders.taesd",
    "movie_plugins.autoencoders.md_vae",
    "movie_plugins.denoisers.instruct_pix2pix",
    "movie_plugins.denoisers.mobile_pix2pix",
    "movie_plugins.denoisers.mobile_pix2pix_mmg",
    "movie_plugins.denoisers.mobile_pix2pix_1step",
    "movie_plugins.denoisers.stable_diffusion",
    "movie_plugins.denoisers.mobile_diffusion",
    "movie_plugins.denoisers.mobile_diffusion_lite",
    "movie_plugins.denoisers.mobile_diffusion_pix2pix",
    "movie_plugins.denoisers.mobile_diffusion_pix2pix_mmg",
    "movie_plugins.denoisers.mobile_diffusion_pix2pix_1step",
    "movie_plugins.backends.eager",
    "movie_plugins.backends.compile",
    "movie_plugins.backends.cuda_graphs",
    "movie_plugins.backends.onnx",
    "movie_plugins.backends.hexagon",
    "movie_plugins.backends.aihub",
    "movie_plugins.backends.tensorrt",
    "movie_plugins.distillers.pix2pix_finetune",
    "movie_plugins.distillers.mmg",
    "movie_plugins.distillers.vpred",
    "movie_plugins.distillers.adversarial",
    "movie_plugins.distillers.clockwork",
    "movie_plugins.distillers.ufogen",
    "movie_plugins.distillers.t2i_train",
    "movie_plugins.commands.convert",
    "movie_plugins.commands.export",
    "movie_plugins.commands.data",
    "movie_plugins.commands.nano_train",
    "movie_plugins.commands.eval",
    "movie_plugins.commands.ablate",
    "movie_plugins.commands.generate",
    "movie_plugins.commands.batch",
    "movie_plugins.commands.app",
)

REGISTER_HOOKS = {f"movie_register_{family}s": family for family in FAMILIES}
HOOK_NAMES = tuple(sorted(name for name, obj in vars(hookspecs).items() if hasattr(obj, "movie_spec")))
BLOCK_VARIABLE = "MOVIE_BLOCK_PLUGINS"

_state: dict[str, Any] = {}

def _version() -> str:
    try:
        return importlib.metadata.version("movie")
    except importlib.metadata.PackageNotFoundError:
        return "0+unknown"


def _blocked() -> set[str]:
    return {name.strip() for name in os.environ.get(BLOCK_VARIABLE, "").split(",") if name.strip()}


def _broken_message(name: str, problem: str) -> str:
    return f"plugin '{name}' {problem} (set {BLOCK_VARIABLE}={name} to run without it)"


def _unknown_hooks(pm: pluggy.PluginManager) -> dict[str, str]:
    """Plugin name -> what is wrong, for implementations of hooks no spec defines (pluggy would ignore them)."""
    problems: dict[str, str] = {}
    for hook_name, caller in sorted(vars(pm.hook).items()):
        if caller.has_spec():
            continue
        for impl in caller.get_hookimpls():
            if impl.optionalhook:
                continue
            close = difflib.get_close_matches(hook_name, HOOK_NAMES, n=1, cutoff=0.6)
            hint = f"did you mean '{close[0]}'?" if close else f"hooks: {', '.join(HOOK_NAMES)}"
            problems.setdefault(impl.plugin_name, f"implements unknown hook '{hook_name}' ({hint})")
    return problems


def _warn_unknown_blocked(blocked: set[str], known: list[str], dists: dict[str, list[str]]) -> None:
    """One stderr line for names in MOVIE_BLOCK_PLUGINS that match no plugin (often a distribution's name)."""
    unknown = sorted(blocked - set(known))
    if not unknown:
        return
    parts = []
    for name in unknown:
        owned = dists.get(_dist_key(name))
        hint = f" (the distribution of plugin {', '.join(repr(n) for n in owned)})" if owned else ""
        parts.append(f"'{name}'{hint}")
    third_party = [n for n in known if n not in DEFAULT_PLUGINS]
    print(f"movie: warning: {BLOCK_VARIABLE} names no plugin: {', '.join(parts)}; plugins: "
          f"{', '.join(third_party + list(DEFAULT_PLUGINS))}", file=sys.stderr)


def _dist_key(name: str) -> str:
    return name.lower().replace("_", "-").replace(".", "-")


def _build_manager() -> tuple[pluggy.PluginManager, dict[str, dict[str, str]], dict[str, str]]:
    """(manager, name -> version and source, name -> why it is broken). Broken plugins are left unregistered."""
    pm = pluggy.PluginManager("movie")
    pm.add_hookspecs(hookspecs)
    info: dict[str, dict[str, str]] = {}
    broken: dict[str, str] = {}
    blocked = _blocked()
    for name in blocked:
        pm.set_blocked(name)
    for module_name in DEFAULT_PLUGINS:
        if pm.is_blocked(module_name):
            continue
        mod = importlib.import_module(module_name)
        pm.register(mod, name=module_name)
        info[module_name] = {"version": _version(), "source": "built-in"}
    known = list(DEFAULT_PLUGINS)
    dists: dict[str, list[str]] = {}
    autoload = not os.environ.get("MOVIE_DISABLE_PLUGIN_AUTOLOAD")
    for ep in importlib.metadata.entry_points(group=ENTRY_POINT_GROUP):
        dist = getattr(ep, "dist", None)
        known.append(ep.name)
        if dist is not None:
            dists.setdefault(_dist_key(dist.name), []).append(ep.name)
        if not autoload or pm.is_blocked(ep.name) or pm.has_plugin(ep.name) or ep.name in broken:
            continue
        info[ep.name] = {"version": dist.version if dist else "", "source": "entry point"}
        try:
            plugin = ep.load()
        except Exception as exc:  # noqa: BLE001 - a broken third-party plugin must not take `movie --help` down
            broken[ep.name] = _broken_message(ep.name, f"failed to load: {one_line(exc)}")
            continue
        pm.register(plugin, name=ep.name)
    _warn_unknown_blocked(blocked, known, dists)
    for name, problem in _unknown_hooks(pm).items():
        pm.unregister(name=name)
        broken[name] = _broken_message(name, problem)
    return pm, info, broken


def _load() -> None:
    if "pm" not in _state:
        _state["pm"], _state["info"], _state["broken"] = _build_manager()


def get_plugin_manager() -> pluggy.PluginManager:
    """The process-wide plugin manager, loading plugins on first use (broken plugins are left out)."""
    _load()
    return _state["pm"]


def check_plugins() -> None:
    """Raise PluginError, one line, when a plugin failed to load or implements an unknown hook."""
    _load()
    problems = [message for _, message in sorted(_state["broken"].items())]
    if problems:
        more = f"; and {len(problems) - 1} more broken plugin(s), see `movie plugins`" if len(problems) > 1 else ""
        raise PluginError(problems[0] + more)


def get_registry() -> Registry:
    """The registry filled by every loaded plugin's movie_register_* hooks, called through pluggy.

    Each plugin's implementation is called on its own (a subset hook caller) so the registry can stamp the
    plugin's name and version on what it registers; pluggy passes only the arguments an implementation takes."""
    check_plugins()
    if "registry" not in _state:
        pm = get_plugin_manager()
        registry = Registry()
        loaded = [plugin for _, plugin in pm.list_name_plugin() if plugin is not None]
        for hook_name in REGISTER_HOOKS:
            for impl in getattr(pm.hook, hook_name).get_hookimpls():  # registration order: built-ins first
                others = [plugin for plugin in loaded if plugin is not impl.plugin]
                version = _state["info"].get(impl.plugin_name, {}).get("version", "")
                call = pm.subset_hook_caller(hook_name, remove_plugins=others)
                call(registry=registry.for_plugin(impl.plugin_name, version))
        _state["registry"] = registry
    return _state["registry"]


def plugin_info() -> list[dict[str, Any]]:
    """Installed plugins with version, source and the hooks each implements; a broken one has `error` instead."""
    pm = get_plugin_manager()
    rows = []
    for name, plugin in pm.list_name_plugin():
        if plugin is None:
            continue
        hooks = sorted(impl.name for impl in pm.get_hookcallers(plugin) or [])
        rows.append({"name": name, **_state["info"].get(name, {}), "hooks": hooks})
    for name, message in _state["broken"].items():
        rows.append({"name": name, **_state["info"].get(name, {}), "hooks": [], "error": message})
    return sorted(rows, key=lambda row: row["name"])


def reset() -> None:
    """Forget loaded plugins so the next call reloads them (tests, long-lived processes)."""
    _state.clear()
