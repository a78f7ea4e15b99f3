"""Segmentation metrics: per-volume Dice, HD95 and ASD, an accumulator over volumes, and the
aggregated Jaccard index for instance segmentation."""

from weakseg.metrics.instances import aggregated_jaccard_index, instances_from_semantic
from weakseg.metrics.volume import METRIC_NAMES, VolumeMetrics, volume_metrics

__all__ = [
    "METRIC_NAMES",
    "VolumeMetrics",
    "aggregated_jaccard_index",
    "instances_from_semantic",
    "volume_metrics",
]
