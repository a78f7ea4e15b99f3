"""Training engine: trainer, checkpoints, inference."""
