"""Shared building blocks for every training step (config, data, models, losses, loop)."""
