"""Data: the corpus, its vocabulary, token files and training batches.

The corpus is downloaded and cached, with an offline default.
"""
