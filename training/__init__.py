"""Training recipes: ``python -m training <model-name>`` writes ``weights/<name>/<version>/``."""
