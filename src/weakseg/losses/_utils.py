"""Shared checks and helpers for the losses (kept in one place, per STYLE.md)."""

from __future__ import annotations

import torch

__all__ = [
    "REDUCTIONS",
    "check_logits_image",
    "check_logits_target",
    "check_reduction",
    "reduce",
]

REDUCTIONS = ("mean", "sum", "none")


def check_reduction(reduction: str) -> None:
    if reduction not in REDUCTIONS:
        raise ValueError(f"reduction must be one of {REDUCTIONS}, got '{reduction}'")


def check_logits_target(logits: torch.Tensor, target: torch.Tensor) -> None:
    """Logits ``(B, C, *spatial)`` with 1–3 spatial dims; target ``(B, *spatial)`` integer."""
    if logits.ndim < 3 or logits.ndim > 5:
        raise ValueError(
            f"logits must be (B, C, *spatial) with 1-3 spatial dims, got {tuple(logits.shape)}"
        )
    if target.shape != logits.shape[:1] + logits.shape[2:]:
        raise ValueError(
            f"target shape {tuple(target.shape)} does not match logits {tuple(logits.shape)}; "
            "expected (B, *spatial)"
        )
    if target.dtype.is_floating_point or target.dtype == torch.bool:
        raise ValueError(f"target must be an integer tensor of class indices, got {target.dtype}")


def reduce(values: torch.Tensor, reduction: str) -> torch.Tensor:
    if reduction == "mean":
        return values.mean()
    if reduction == "sum":
        return values.sum()
    return values


def check_logits_image(logits: torch.Tensor, image: torch.Tensor) -> None:
    """Logits ``(B, C, *spatial)`` (1–3 spatial dims), image ``(B, K, *spatial)`` float."""
    if logits.ndim < 3 or logits.ndim > 5:
        raise ValueError(
            f"logits must be (B, C, *spatial) with 1-3 spatial dims, got {tuple(logits.shape)}"
        )
    if (
        image.ndim != logits.ndim
        or image.shape[0] != logits.shape[0]
        or image.shape[2:] != logits.shape[2:]
    ):
        raise ValueError(
            f"image shape {tuple(image.shape)} does not match logits {tuple(logits.shape)}; "
            "expected (B, K, *spatial) with the logits' batch size and spatial size"
        )
    if not image.dtype.is_floating_point:
        raise ValueError(
            f"image must be a floating-point tensor scaled to [0, 1], got {image.dtype}"
        )
