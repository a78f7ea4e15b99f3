"""Label-map conventions shared by every package; imports nothing from weakseg.

Kept apart so that :mod:`weakseg.annotate` (weak labels from full masks) does not import
:mod:`weakseg.data` (readers, slices, priors), which uses the annotators: data → annotate →
labels, without a cycle.
"""

from __future__ import annotations

__all__ = ["IGNORE_INDEX"]

#: The value of unlabelled pixels in every weak label map (as ``F.cross_entropy``'s default).
IGNORE_INDEX = -100
