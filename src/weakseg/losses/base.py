"""The loss registry (kept apart from ``__init__`` so loss modules can register)."""

from __future__ import annotations

from torch import nn

from weakseg.registry import Registry

__all__ = ["LOSSES"]

#: ``LOSSES.build(name, **params)`` → an ``nn.Module`` whose ``inputs`` attribute names
#: the batch entries its ``forward(logits, **inputs)`` takes (``"target"``, ``"image"``);
#: ``needs_labels = True`` marks a loss that learns from labelled pixels (``partial_ce``,
#: ``ce_dice``), refused on a data set with ``annotation: none`` (:mod:`weakseg.config`).
LOSSES: Registry[type[nn.Module]] = Registry("loss")
