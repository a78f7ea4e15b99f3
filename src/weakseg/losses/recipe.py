"""A loss recipe: named terms with weights, given as data (config), not code.

``recipe(logits, batch)`` returns ``(total, parts)`` where ``parts`` holds each
term's unweighted value (detached), so logs never recompute a term. Terms with state
that changes once per epoch (the log-barrier ``t`` of the constraint losses) advance with
:meth:`LossRecipe.epoch_step`; all state is in ``state_dict()`` (checkpointed). Terms that
expose diagnostics (``last_stats``, e.g. the fraction of violated constraints) are gathered
in :attr:`LossRecipe.last_stats` after every call.

Values the data knows are injected when the terms are built, never repeated in a config:
``LossRecipe(terms, num_classes=4)`` passes ``num_classes`` to every loss that takes it (the
constraint losses: one Lagrange multiplier per class), ``class_names`` likewise (the
constraint families that name classes); a config that sets it anyway must
agree with the data. A term is named in ``parts`` and the logs by its loss's ``label`` when
it has one (a constraint loss: its family, e.g. ``size``), else by its registered name.
Batch entries a loss reads only when they exist (its ``optional_inputs``, e.g. the ``tags``
of the ``relative_size`` constraint) are passed when the batch has them.

Domains (:mod:`weakseg.adapt`): each term has a ``domain`` (``source``, ``target`` or
``both``); ``recipe(logits, batch, domains={"source": rows, "target": rows})`` gives each
term the rows of its domain (``both``: all of them). Without ``domains`` every term sees
the whole batch. Terms on the target are named ``<name>_target``.
"""

from __future__ import annotations

import inspect
import math
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import nn

from weakseg.errors import WeaksegError
from weakseg.losses.base import LOSSES

__all__ = ["LossRecipe", "LossTerm"]


@dataclass
class LossTerm:
    """One term: a registered loss ``name``, its ``weight``, its ``params`` and the
    ``domain`` whose samples it sees (``source``: the ``data:`` set, the default;
    ``target``: ``data.target``; ``both``)."""

    name: str
    weight: float = 1.0
    params: dict[str, Any] = field(default_factory=dict)
    domain: str = "source"

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

    def __init__(self, terms: list[LossTerm], *, num_classes: int | None = None,
                 class_names: list[str] | None = None) -> None:
        super().__init__()
        if not terms:
            raise WeaksegError("the loss recipe is empty; add at least one term under 'loss:'")
        context: dict[str, Any] = {}
        if num_classes is not None:
            context["num_classes"] = num_classes
        if class_names is not None:
            context["class_names"] = list(class_names)
        self.terms = list(terms)
        self.losses = nn.ModuleList(_build(LOSSES, t, context) for t in terms)
        names: list[str] = []
        for t, loss in zip(terms, self.losses, strict=True):
            base = str(getattr(loss, "label", None) or t.name)
            base += "_target" if t.domain == "target" else ""
            name = base
            k = 1
            while name in names:
                name = f"{base}_{k}"
                k += 1
            names.append(name)
        self.names = names
        #: Diagnostics of the last call, detached: ``"<term>_<stat>"`` for every term with a
        #: ``last_stats`` dict (e.g. ``size_violated``); not part of the loss.
        self.last_stats: dict[str, torch.Tensor] = {}

    def forward(
        self, logits: torch.Tensor, batch: dict[str, torch.Tensor],
        domains: Mapping[str, slice] | None = None,
    ) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        """``(total, parts)`` of ``logits`` ``(B, C, *spatial)`` and the per-sample
        ``batch`` entries; ``domains`` maps ``source`` / ``target`` to their rows."""
        total = logits.new_zeros(())
        parts: dict[str, torch.Tensor] = {}
        stats: dict[str, torch.Tensor] = {}
        for name, term, loss in zip(self.names, self.terms, self.losses, strict=True):
            inputs = getattr(loss, "inputs", ("target",))
            missing = [k for k in inputs if k not in batch]
            if missing:
                raise WeaksegError(f"loss '{term.name}' needs batch entries {missing}")
            optional = getattr(loss, "optional_inputs", ())  # passed when the batch has them
            keys = [k for k in (*inputs, *optional) if k in batch]
            if domains is None or term.domain == "both":
                value = loss(logits, **{k: batch[k] for k in keys})
            else:  # the rows of the term's domain
                rows = domains[term.domain]
                value = loss(logits[rows], **{k: batch[k][rows] for k in keys})
            parts[name] = value.detach()
            for key, stat in (getattr(loss, "last_stats", None) or {}).items():
                stats[f"{name}_{key}"] = stat.detach()
            if term.weight != 0:
                total = total + term.weight * value
        self.last_stats = stats
        return total, parts

    def epoch_step(self) -> None:
        """End of an epoch: call ``epoch_step()`` on every term that has one.

        The constraint losses grow their log-barrier ``t`` here (Lagrange multipliers move
        at every training step instead). Call it once per epoch, after the epoch's steps.
        """
        for loss in self.losses:
            step = getattr(loss, "epoch_step", None)
            if callable(step):
                step()


def _build(registry: Any, term: LossTerm, context: dict[str, Any]) -> nn.Module:
    """Build one term with the ``context`` values its factory takes (``num_classes``...),
    turning a loss's own ``ValueError`` into a one-line config error."""
    params = dict(term.params)
    accepted = inspect.signature(registry.get(term.name)).parameters  # unknown: as it says
    for key, value in context.items():
        if key not in accepted:
            continue
        if key in params and params[key] is not None and params[key] != value:
            raise WeaksegError(
                f"loss '{term.name}': {key} = {params[key]!r} in the config but the data has "
                f"{value!r}; drop {key} from the loss parameters (the data sets it)"
            )
        params[key] = value
    try:
        return registry.build(term.name, **params)
    except WeaksegError as exc:
        if f"loss '{term.name}'" in str(exc):
            raise
        raise WeaksegError(f"loss '{term.name}': {exc}") from exc
    except (ValueError, TypeError) as exc:
        raise WeaksegError(f"loss '{term.name}': {exc}") from exc
