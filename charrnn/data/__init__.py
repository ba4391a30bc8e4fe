"""Data: the corpus (download, cache, offline default), its vocabulary, token files and training batches."""
