r"""Class-balanced self-training (METHODS.md C10, CBST of Zou et al., ECCV 2018).

Pseudo-labels on the unlabelled pixels, chosen **per class**: for each class ``c`` the
threshold :math:`k_c` is the confidence :math:`s_p(c)` of the pixel at rank
:math:`\lceil p\,N_c \rceil` among the :math:`N_c` pixels of the batch predicted as ``c``
(sorted by decreasing confidence), so that a fraction ``p`` of every class's predicted
pixels is kept — rare classes keep their share instead of being swamped by the frequent
ones. A pixel gets the label

.. math::

    \hat y_p = \arg\max_c \frac{s_p(c)}{k_c}
    \quad\text{if}\quad \max_c \frac{s_p(c)}{k_c} \ge 1, \qquad\text{else it abstains}

(Zou et al.'s closed-form solution of the pseudo-label step, ``normalize=True``), or simply
the arg-max where its confidence reaches its class's threshold (``normalize=False``: then
exactly the top ``p`` of each class's predicted pixels are kept, ties aside). With two
classes both rules coincide. The fraction ``p`` grows per round (:class:`RoundSchedule`,
e.g. 0.2 → 0.5; a round is ``epochs_per_round`` epochs), and the round is checkpointed.

**Spatial priors** (CBST-SP, ``spatial_prior=True``): per-class maps
:math:`\mathrm{prior}^{q,c}` estimated from the *labelled* pixels seen in training
(counts on a coarse ``prior_grid`` of cells per axis, Laplace-smoothed, resized to the
image), multiply :math:`s_p(c)` before thresholding. The counts are buffers (checkpointed);
they only grow in training mode.

Weak labels always win: labelled pixels keep their label in the proposal.

Reference:
    Zou, Yu, Kumar & Wang, "Unsupervised domain adaptation for semantic segmentation via
    class-balanced self-training", ECCV 2018, sec. 3.2–3.3.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from typing import Any

import torch
import torch.nn.functional as F

from weakseg.losses.proposals.base import (
    IGNORE_INDEX,
    PROPOSALS,
    ProposalMethod,
    check_proposal_inputs,
)

__all__ = ["CBSTProposal", "RoundSchedule", "class_balanced_labels"]


class RoundSchedule:
    """Kept fraction per round: ``p = min(p_max, p0 + p_step · round)``, one round every
    ``epochs_per_round`` epochs (:meth:`step` once per epoch). State: the epoch count.

    Example:
        >>> s = RoundSchedule(p0=0.2, p_step=0.1, p_max=0.5)
        >>> [round(s.step(), 2) for _ in range(4)]
        [0.3, 0.4, 0.5, 0.5]
    """

    def __init__(self, p0: float = 0.2, p_step: float = 0.1, p_max: float = 0.5,
                 epochs_per_round: int = 1) -> None:
        for name, value in (("p0", p0), ("p_max", p_max)):
            if not math.isfinite(value) or not 0 <= value <= 1:
                raise ValueError(f"{name} must be a fraction in [0, 1], got {value}")
        if not math.isfinite(p_step) or p_step < 0:
            raise ValueError(f"p_step must be a finite number ≥ 0, got {p_step}")
        if isinstance(epochs_per_round, bool) or not isinstance(epochs_per_round, int) \
                or epochs_per_round < 1:
            raise ValueError(f"epochs_per_round must be an integer ≥ 1, got {epochs_per_round!r}")
        if p_max <= 0 or (p0 <= 0 and p_step <= 0):
            raise ValueError(f"this rounds schedule never keeps a pixel (p0={p0}, "
                             f"p_step={p_step}, p_max={p_max}); the kept fraction must become > 0")
        if p_max < p0:
            raise ValueError(f"p_max ({p_max}) must be ≥ p0 ({p0})")
        self.p0, self.p_step, self.p_max = float(p0), float(p_step), float(p_max)
        self.epochs_per_round = epochs_per_round
        self.epoch = 0

    @property
    def round(self) -> int:
        return self.epoch // self.epochs_per_round

    @property
    def p(self) -> float:
        return min(self.p_max, self.p0 + self.p_step * self.round)

    def step(self) -> float:
        """End of an epoch; returns the fraction now in force."""
        self.epoch += 1
        return self.p

    def state_dict(self) -> dict[str, Any]:
        return {"epoch": self.epoch}

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        self.epoch = int(state["epoch"])


def class_balanced_labels(probs: torch.Tensor, p: float, *, normalize: bool = True,
                          prior: torch.Tensor | None = None) -> torch.Tensor:
    """CBST pseudo-labels of a batch (see the module docstring).

    Args:
        probs: ``(B, C, *spatial)`` class probabilities.
        p: fraction in ``[0, 1]`` of each class's predicted pixels to keep.
        normalize: Zou et al.'s ``arg max s/k`` rule (else arg-max above the threshold).
        prior: optional ``(C, *spatial)`` or ``(B, C, *spatial)`` spatial prior maps
            multiplying ``probs``.

    Returns:
        ``(B, *spatial)`` int64 labels, :data:`IGNORE_INDEX` where it abstains.

    Example:
        >>> probs = torch.tensor([[[0.9, 0.8, 0.6, 0.3]]]).expand(1, 1, 4)
        >>> probs = torch.cat([probs, 1 - probs], 1)             # (1, 2, 4)
        >>> class_balanced_labels(probs, 0.5)
        tensor([[   0,    0, -100,    1]])
    """
    score = probs if prior is None else probs * prior
    c = score.shape[1]
    pred = score.argmax(1)
    conf = score.gather(1, pred.unsqueeze(1)).squeeze(1)
    thresholds = torch.full((c,), math.inf, dtype=score.dtype, device=score.device)
    if p > 0:
        for k in range(c):
            values = conf[pred == k]
            if values.numel():
                keep = max(1, math.ceil(p * values.numel() - 1e-9))
                thresholds[k] = values.topk(min(keep, values.numel())).values[-1]
    shape = (1, c) + (1,) * (score.ndim - 2)
    if normalize:
        ratio = score / thresholds.view(shape)
        best, labels = ratio.max(1)
        kept = best >= 1
    else:
        labels, kept = pred, conf >= thresholds[pred]
    return torch.where(kept, labels, torch.full_like(labels, IGNORE_INDEX))


@PROPOSALS.register("cbst", help="class-balanced self-training: per-class confidence "
                    "thresholds keeping a growing fraction p per round (C10)")
class CBSTProposal(ProposalMethod):
    """:func:`class_balanced_labels` with a :class:`RoundSchedule` of ``p`` and optional
    spatial priors; the weak labels override the pseudo-labels. Reads ``target``.

    Args:
        p0, p_step, p_max, epochs_per_round: the rounds schedule.
        normalize: Zou et al.'s ``arg max s/k`` rule.
        spatial_prior: multiply by per-class prior maps estimated from the labelled pixels.
        prior_grid: cells per axis of those maps; ``prior_smoothing``: Laplace count per cell.
        num_classes: injected from the data (needed with ``spatial_prior``).

    Example:
        >>> prop = CBSTProposal(p0=0.2, p_step=0.1, p_max=0.5)
        >>> target = torch.full((2, 8, 8), -100)
        >>> labels = prop(torch.randn(2, 3, 8, 8), {"target": target})
        >>> prop.epoch_step(); prop.schedule.p
        0.30000000000000004
    """

    inputs = ("target",)
    counts: torch.Tensor

    def __init__(self, *, p0: float = 0.2, p_step: float = 0.1, p_max: float = 0.5,
                 epochs_per_round: int = 1, normalize: bool = True,
                 spatial_prior: bool = False, prior_grid: int = 16,
                 prior_smoothing: float = 1.0, num_classes: int | None = None) -> None:
        super().__init__()
        self.schedule = RoundSchedule(p0, p_step, p_max, epochs_per_round)
        if spatial_prior and num_classes is None:
            raise ValueError("spatial_prior needs num_classes (set by the data)")
        if isinstance(prior_grid, bool) or not isinstance(prior_grid, int) or prior_grid < 1:
            raise ValueError(f"prior_grid must be an integer ≥ 1, got {prior_grid!r}")
        if not math.isfinite(prior_smoothing) or prior_smoothing <= 0:
            raise ValueError(f"prior_smoothing must be a finite number > 0, got "
                             f"{prior_smoothing}")
        self.normalize = bool(normalize)
        self.spatial_prior = bool(spatial_prior)
        self.prior_grid = prior_grid
        self.prior_smoothing = float(prior_smoothing)
        self.num_classes = num_classes
        # counts of labelled pixels per class and cell; shape set by the first batch
        self.register_buffer("counts", torch.zeros(0))

    def _update_counts(self, target: torch.Tensor, c: int) -> None:
        dims = target.ndim - 1
        labelled = (target != IGNORE_INDEX).unsqueeze(1)
        onehot = F.one_hot(target.clamp_min(0).long(), c).movedim(-1, 1).double() * labelled
        pool = (F.adaptive_avg_pool1d, F.adaptive_avg_pool2d, F.adaptive_avg_pool3d)[dims - 1]
        cells = (self.prior_grid,) * dims
        pixels_per_cell = math.prod(target.shape[1:]) / math.prod(cells)
        sums = pool(onehot, cells).sum(0) * pixels_per_cell  # type: ignore[operator,arg-type]
        self.counts = sums if self.counts.numel() == 0 else self.counts + sums.to(self.counts)

    def prior(self, spatial: tuple[int, ...]) -> torch.Tensor | None:
        """The per-class prior maps ``(C, *spatial)`` (``None`` without spatial priors or
        before any labelled pixel was seen)."""
        if not self.spatial_prior or self.counts.numel() == 0:
            return None
        smoothed = self.counts + self.prior_smoothing
        maps = smoothed / smoothed.sum(0, keepdim=True)
        mode = {1: "linear", 2: "bilinear", 3: "trilinear"}[len(spatial)]
        return F.interpolate(maps.unsqueeze(0).float(), size=spatial, mode=mode,
                             align_corners=False)[0]

    @torch.no_grad()
    def forward(self, logits: torch.Tensor, batch: Mapping[str, torch.Tensor]) -> torch.Tensor:
        check_proposal_inputs(logits, batch, self.inputs)
        target = batch["target"].long()
        if self.spatial_prior and self.training:
            self._update_counts(target, logits.shape[1])
        prior = self.prior(tuple(logits.shape[2:]))
        labels = class_balanced_labels(
            logits.detach().softmax(1), self.schedule.p, normalize=self.normalize,
            prior=None if prior is None else prior.to(logits))
        return torch.where(target != IGNORE_INDEX, target, labels)

    def epoch_step(self) -> None:
        self.schedule.step()

    def get_extra_state(self) -> dict[str, Any]:
        return {"schedule": self.schedule.state_dict()}

    def set_extra_state(self, state: Any) -> None:
        self.schedule.load_state_dict(state["schedule"])

    def _load_from_state_dict(self, state_dict: dict[str, Any], prefix: str,
                              *args: Any, **kwargs: Any) -> None:
        saved = state_dict.get(prefix + "counts")
        if saved is not None:  # the counts' shape comes from the data
            self.counts = torch.zeros_like(saved)
        super()._load_from_state_dict(state_dict, prefix, *args, **kwargs)

    def extra_repr(self) -> str:
        return (f"p={self.schedule.p:g} (round {self.schedule.round}), "
                f"normalize={self.normalize}, spatial_prior={self.spatial_prior}")
