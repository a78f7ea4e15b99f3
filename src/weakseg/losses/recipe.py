"""A loss recipe: named terms with weights, given as data (config), not code.

``recipe(logits, batch)`` returns ``(total, parts)`` where ``parts`` holds each
term's unweighted value (detached), so logs never recompute a term.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import nn

from weakseg.errors import WeaksegError

__all__ = ["LossRecipe", "LossTerm"]


@dataclass
class LossTerm:
    """One term: a registered loss ``name``, its ``weight`` and its ``params``."""

    name: str
    weight: float = 1.0
    params: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        w = self.weight
        if isinstance(w, bool) or not isinstance(w, (int, float)):
            raise WeaksegError(
                f"loss '{self.name}': weight must be a number, got {w!r} "
                f"({type(w).__name__}); write e.g. weight: 0.5"
            )
        if not math.isfinite(w) or w < 0:
            raise WeaksegError(f"loss '{self.name}': weight must be finite and ≥ 0, got {w}")
        self.weight = float(w)


class LossRecipe(nn.Module):
    """Weighted sum of registered loss terms.

    Example:
        >>> recipe = LossRecipe([LossTerm("partial_ce", 1.0)])
        >>> logits = torch.randn(2, 4, 8, 8); target = torch.randint(0, 4, (2, 8, 8))
        >>> total, parts = recipe(logits, {"target": target})
        >>> sorted(parts)
        ['partial_ce']
    """

    def __init__(self, terms: list[LossTerm]) -> None:
        super().__init__()
        from weakseg.losses import LOSSES

        if not terms:
            raise WeaksegError("the loss recipe is empty; add at least one term under 'loss:'")
        self.terms = list(terms)
        self.losses = nn.ModuleList(_build(LOSSES, t) for t in terms)
        names: list[str] = []
        for t in terms:
            name = t.name
            k = 1
            while name in names:
                name = f"{t.name}_{k}"
                k += 1
            names.append(name)
        self.names = names

    def forward(
        self, logits: torch.Tensor, batch: dict[str, torch.Tensor]
    ) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        total = logits.new_zeros(())
        parts: dict[str, torch.Tensor] = {}
        for name, term, loss in zip(self.names, self.terms, self.losses, strict=True):
            inputs = getattr(loss, "inputs", ("target",))
            missing = [k for k in inputs if k not in batch]
            if missing:
                raise WeaksegError(f"loss '{term.name}' needs batch entries {missing}")
            value = loss(logits, **{k: batch[k] for k in inputs})
            parts[name] = value.detach()
            if term.weight != 0:
                total = total + term.weight * value
        return total, parts


def _build(registry: Any, term: LossTerm) -> nn.Module:
    """Build one term, turning a loss's own ``ValueError`` into a one-line config error."""
    try:
        return registry.build(term.name, **term.params)
    except WeaksegError:
        raise
    except (ValueError, TypeError) as exc:
        raise WeaksegError(f"loss '{term.name}': {exc}") from exc
