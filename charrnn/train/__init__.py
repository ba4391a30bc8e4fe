"""Training: the Trainer and the parts it is made of (schedule, validation, state, metrics, dropout)."""
