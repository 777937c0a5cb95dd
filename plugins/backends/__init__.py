"""Built-in execution backends."""
