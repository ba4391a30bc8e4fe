"""Sweeps: a search space over config keys, the Optuna study of its trials, their summary."""
