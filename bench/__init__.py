"""charrnn's benchmark suite: ``python -m bench`` runs every benchmark and writes bench/RESULTS.md.

Each benchmark measures charrnn and its baselines side by side in one process
or one run and reports ratios; nothing here is a test (``tests/`` never
asserts a timing).
"""
