"""The built-in subcommand plugins: each module adds `movie <name>` through movie_register_commands."""
