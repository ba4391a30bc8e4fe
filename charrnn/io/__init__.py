"""Files a run keeps: checkpoints (atomic, checksummed) and run directories on local disk or object storage."""
