"""Edit data without training: dataset readers and writers (datasets.py) and the procedural generator
(procedural.py). Inference and evaluation import these; movie_core.training builds on them, never the reverse.

Nothing here imports torch at import time; `datasets.to_torch_batch` imports it when called.
"""
