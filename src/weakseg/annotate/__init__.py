"""Weak annotations: simulators from full masks (seeded) and the registry."""

from weakseg.annotate import scribbles as _scribbles  # noqa: F401  (registers)
from weakseg.annotate.base import ANNOTATORS

__all__ = ["ANNOTATORS"]
