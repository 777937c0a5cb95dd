"""Training support: the distiller contract and the training loop (the data they read is in movie_core.data)."""
