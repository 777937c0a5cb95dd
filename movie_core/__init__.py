"""movie: diffusion video editing at mobile speed; the MoViE recipe as swappable plugins.

Importing this package never imports torch: components load when a recipe is built. The public Python API
(movie_core.api, docs/ablations.md) is re-exported here and loads on first use:

    import movie_core as movie
    movie.run_flops(movie.preset("movie").replace(decoder="sd-vae"))
"""

from __future__ import annotations

from typing import Any

__version__ = "0.1.0"

_API = ("load_plugins", "preset", "load_recipe", "Recipe", "compose", "run_flops", "run_bench", "run_eval", "ablate",
        "run_grid", "SkipCell", "fingerprint", "make_data", "distill", "objective")

__all__ = ["__version__", *_API]


def __getattr__(name: str) -> Any:
    if name in _API:
        from movie_core import api

        value = getattr(api, name)
        globals()[name] = value
        return value
    raise AttributeError(f"module 'movie_core' has no attribute {name!r}")


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(_API))
