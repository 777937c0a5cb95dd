"""Training support: datasets of (source, instruction, edited) triplets and a procedural generator.

Nothing here imports torch at import time; `data.to_torch_batch` imports it when called.
"""

from __future__ import annotations
