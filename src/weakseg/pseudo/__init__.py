"""Pseudo-labels from weak models (CAM pseudo-masks from image tags, C13)."""
