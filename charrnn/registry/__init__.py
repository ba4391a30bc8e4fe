"""After training.

Champion/challenger per model line, the run's report, and the index of finished runs.
"""
