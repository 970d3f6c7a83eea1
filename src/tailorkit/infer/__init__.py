"""Inference engines: every prompt is built by the training encoder."""
