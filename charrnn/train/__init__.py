"""Training: the Trainer and the parts it is made of.

The parts: schedule, validation, state, metrics, dropout.
"""
