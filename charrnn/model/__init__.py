"""The model: the fused stacked LSTM used for training, its step-wise view used for generation, and precision."""
