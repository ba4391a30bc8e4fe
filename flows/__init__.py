"""Prefect orchestration for charrnn: flows and tasks that only call the ``charrnn`` library."""
