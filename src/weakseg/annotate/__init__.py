"""Weak annotations: simulators from full masks (seeded) and the registry.

Dense label-map simulators (registered): ``scribble``, ``points``, ``eroded_blobs``,
``outside_boxes``, ``partial_sites`` (partially labelled sites, with the per-volume
``labelled_classes``: :mod:`weakseg.annotate.partial`).
Boxes, extreme points, tags and size bounds: :mod:`weakseg.annotate.boxes`.
"""

from weakseg.annotate import boxes as _boxes  # noqa: F401  (registers)
from weakseg.annotate import partial as _partial  # noqa: F401
from weakseg.annotate import points as _points  # noqa: F401
from weakseg.annotate import scribbles as _scribbles  # noqa: F401
from weakseg.annotate.base import ANNOTATORS

__all__ = ["ANNOTATORS"]
