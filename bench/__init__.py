"""Load benchmark of the server against baselines on the same weights; ``python -m bench --help``."""
