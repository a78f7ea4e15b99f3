"""Plots a person looks at: overlays of predictions and training curves."""

from weakseg.report.plots import plot_curves, plot_overlays, plot_volume_overlays

__all__ = ["plot_curves", "plot_overlays", "plot_volume_overlays"]
