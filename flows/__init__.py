"""Prefect orchestration for charrnn: flows and tasks that call the ``charrnn`` library, nothing more."""
