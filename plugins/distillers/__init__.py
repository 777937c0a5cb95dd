"""Built-in distillers (training strategies)."""
