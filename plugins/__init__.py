"""Built-in movie plugins, installed as the package `movie_plugins`."""
