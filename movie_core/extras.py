"""Optional dependencies (pyproject extras) and the one-line error a command gives when one is missing."""

from __future__ import annotations

import importlib.util

from movie_core.errors import UsageError

# the import name of each optional package -> the extra that installs it
EXTRAS = {"accelerate": "train", "ray": "ray", "gradio": "app"}


def missing(module: str) -> bool:
    """Whether `module` cannot be imported here (not installed, or hidden)."""
    try:
        return importlib.util.find_spec(module) is None
    except (ImportError, ValueError):
        return True


def require(module: str, command: str) -> None:
    """Raise a one-line UsageError naming the extra to install when `module` is missing; call it before a command
    writes anything."""
    if missing(module):
        extra = EXTRAS.get(module, module)
        raise UsageError(f"movie {command} needs the '{module}' package: pip install 'movie[{extra}]'")
