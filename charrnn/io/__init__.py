"""Files a run keeps.

Checkpoints (atomic, checksummed) and run directories on local disk or object storage.
"""
