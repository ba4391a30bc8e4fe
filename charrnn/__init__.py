"""charrnn: character-level stacked-LSTM language models.

The library imports no orchestration framework: every piece (corpus, tokens,
model, training, evaluation, sampling) runs from the ``charrnn`` CLI or plain
Python, and the Prefect flows in ``flows/`` only call into it.
"""

__version__ = "0.1.0"
