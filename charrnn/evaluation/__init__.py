"""Scoring (bits per character on held-out text) and sampling from a trained model."""
