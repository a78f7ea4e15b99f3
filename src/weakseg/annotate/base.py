"""Registry of weak-annotation simulators.

A simulator turns a full label map ``(Z, H, W)`` into a weak annotation of the
same shape (``IGNORE_INDEX`` = unlabelled), with an explicit seed:
``ANNOTATORS.get(name)(label, num_classes=C, seed=s, **params) -> np.ndarray``.
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np

from weakseg.registry import Registry

__all__ = ["ANNOTATORS"]

ANNOTATORS: Registry[Callable[..., np.ndarray]] = Registry("annotator")
