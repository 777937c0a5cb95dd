"""movie: diffusion video editing at mobile speed; the MoViE recipe as swappable plugins.

Importing this package never imports torch: components load when a recipe is built.
"""

from __future__ import annotations

__version__ = "0.1.0"
