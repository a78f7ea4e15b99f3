"""Shared checks and helpers for the losses (kept in one place, per STYLE.md)."""

from __future__ import annotations

import torch

__all__ = ["REDUCTIONS", "check_logits_target", "check_reduction", "reduce"]

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
