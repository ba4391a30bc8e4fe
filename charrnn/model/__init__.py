"""The model: the fused stacked LSTM, its step-wise view, and precision.

The fused LSTM is used for training, the step-wise view for generation.
"""
