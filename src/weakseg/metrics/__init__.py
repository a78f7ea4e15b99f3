"""Segmentation metrics: per-volume Dice, HD95 and ASD, and an accumulator over volumes."""

from weakseg.metrics.volume import METRIC_NAMES, VolumeMetrics, volume_metrics

__all__ = ["METRIC_NAMES", "VolumeMetrics", "volume_metrics"]
