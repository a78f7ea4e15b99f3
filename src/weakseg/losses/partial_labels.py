"""Losses for partially labelled data: marginal cross-entropy and the prior-aware term (C8).

When a data set labels only some structures, its label 0 means "background *or* one of the
structures this data set does not label" (:mod:`weakseg.annotate.partial`); the batch entry
``labelled_classes`` ``(B, C)`` bool says which classes each image labels. Three ways to
train one network on such data (``configs/acdc_partial_sites_*.yaml``):

* **naive** — ``partial_ce`` on the label map: every unlabelled structure is trained as
  background (no code of its own).
* **marginal** — :func:`marginal_cross_entropy` (``marginal_ce``) scores label 0 with the
  probability of the merged class it stands for. With :math:`s_p = \\mathrm{softmax}(z_p)`
  and :math:`\\mathcal{U}_b` the structures image :math:`b` does not label,

  .. math::

      \\tilde s_p^{\\,0} = s_p^0 + \\sum_{c \\in \\mathcal{U}_b} s_p^c, \\qquad
      \\mathcal{L} = -\\frac{1}{|\\mathcal{L}|} \\sum_{p \\in \\mathcal{L}}
          \\begin{cases} \\log \\tilde s_p^{\\,0} & y_p = 0 \\\\
                         \\log s_p^{y_p} & y_p \\ne 0 \\end{cases}

  over the labelled pixels :math:`\\mathcal{L}` (not ``ignore_index``): the network may call
  such a pixel background or any unlabelled structure, and learns those structures from the
  images that label them. :math:`\\log \\tilde s^0` is a ``logsumexp`` of one
  ``log_softmax`` (no ``+ eps``). With every class labelled it is plain cross-entropy. The
  mutual exclusion of the structures (a pixel labelled RV is not LV) is the softmax's own;
  Shi et al.'s separate *exclusion loss* is not implemented.
* **prior-aware** — ``marginal_ce`` plus :func:`prior_aware_loss` (``prior_aware``), PaNN's
  term: the average predicted fraction :math:`\\bar p_c` of every structure over the images
  that do not label it should match its prior :math:`q_c` (the organ-size statistics of a
  fully labelled set),

  .. math::

      \\mathcal{L}_{prior} = \\sum_c \\mathrm{KL}\\bigl(q_c \\,\\|\\, \\bar p_c\\bigr)
      = \\sum_c q_c \\log\\frac{q_c}{\\bar p_c} + (1 - q_c)\\log\\frac{1 - q_c}{1 - \\bar p_c}

  (the binary, "expanded" form of the slides). :math:`\\bar p_c` is an average over the
  whole data set, and a function of it cannot be minimised by SGD on mini-batches without
  bias; PaNN rewrites the objective as a min-max problem through the convex conjugate of the
  logarithm, :math:`-\\log x = \\max_{y < 0}\\, (x y + 1 + \\log(-y))`, and takes stochastic
  primal-dual steps. With the dual variables written :math:`y_c = -1/u_c`,
  :math:`v_c = -1/(1 - u_c)` the saddle function is, up to the constant entropy of
  :math:`q`,

  .. math::

      L(\\theta, u) = \\sum_c \\mathrm{KL}(q_c \\,\\|\\, u_c)
          + \\mathrm{KL}'(q_c \\,\\|\\, u_c)\\,(\\bar p_c(\\theta) - u_c),
      \\qquad \\mathrm{KL}'(q \\,\\|\\, u) = -\\frac{q}{u} + \\frac{1 - q}{1 - u},

  *linear* in the average :math:`\\bar p`, so a batch's pooled fraction gives an unbiased
  primal gradient; and a dual ascent step on :math:`u` preconditioned by its curvature is
  :math:`u_c \\leftarrow u_c + \\eta\\,(\\bar p_c^{\\,batch} - u_c)`, a running average of the
  batch fractions (``dual_lr`` :math:`= \\eta`; :math:`\\eta = 1` is the KL of each batch
  alone, the biased mini-batch estimate). :class:`PriorAwareLoss` keeps :math:`u` as a
  buffer (checkpointed; a resumed run continues identically) and moves it once per training
  forward, before the loss is evaluated, as the Lagrangian multipliers move
  (:mod:`weakseg.constrain.lagrangian`); in eval mode it does not move.

  Why not the Lagrangian objective of :mod:`weakseg.constrain`: the equality
  :math:`\\bar p = q` is available as the constraint family ``class_fraction``
  (:mod:`weakseg.constrain.fractions`) and its Lagrangian is the textbook stochastic
  primal-dual; but its dual is linear in the multipliers, and along the direction the
  marginal CE leaves free (background vs an unlabelled structure) nothing damps the
  primal-dual rotation. On the toy problem of ``tests/test_partial_labels.py`` (free
  logits, Adam) the Lagrangian left the fraction oscillating after 400 steps for every
  dual step we tried (0.5 to 20: between 0.15 and 0.45 around a prior of 0.3 at best,
  between 0 and 1 at worst), while the KL's curvature makes the split above settle at the
  prior within 0.01.

References:
    Zhou, Li, Bai, Wang, Chen, Han, Fishman & Yuille, "Prior-aware neural network for
    partially-supervised multi-organ segmentation", ICCV 2019 (PaNN: the prior-aware KL and
    its stochastic primal-dual optimisation).
    Shi, Xiao, Miao, Chen & Dou, "Marginal loss and exclusion loss for partially supervised
    multi-organ segmentation", Medical Image Analysis 70, 2021 (the marginal cross-entropy).
    Fang & Yan, "Multi-organ segmentation over partially labeled datasets with multi-scale
    feature abstraction", IEEE TMI 39(11), 2020 (the same merging, "target adaptive loss").
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence

import torch
from torch import nn

from weakseg.constrain.fractions import (
    FRACTION_TOLERANCE,
    check_fraction_prior,
    pooled_fractions,
    resolve_fraction_prior,
)
from weakseg.data.base import IGNORE_INDEX
from weakseg.losses._utils import check_logits_target, check_reduction
from weakseg.losses.base import LOSSES

__all__ = [
    "MarginalCrossEntropyLoss",
    "PriorAwareLoss",
    "check_labelled_classes",
    "marginal_cross_entropy",
    "prior_aware_loss",
]

#: Reductions of the prior-aware term over its active classes.
PRIOR_REDUCTIONS = ("sum", "mean", "none")


def check_labelled_classes(labelled: torch.Tensor, logits: torch.Tensor) -> None:
    """``labelled`` must be a ``(B, C)`` bool tensor for logits ``(B, C, *spatial)``."""
    if labelled.dtype != torch.bool:
        raise ValueError(f"labelled_classes must be a bool tensor (B, C), got {labelled.dtype}")
    if tuple(labelled.shape) != tuple(logits.shape[:2]):
        raise ValueError(f"labelled_classes has shape {tuple(labelled.shape)} but logits "
                         f"{tuple(logits.shape)} need (B, C) = {tuple(logits.shape[:2])}")


def marginal_cross_entropy(
    logits: torch.Tensor,
    target: torch.Tensor,
    labelled_classes: torch.Tensor | None = None,
    *,
    ignore_index: int = IGNORE_INDEX,
    reduction: str = "mean",
    check: bool = True,
) -> torch.Tensor:
    """Cross-entropy where label 0 stands for the background and every unlabelled class.

    Args:
        logits: ``(B, C, *spatial)`` raw network outputs (2D or 3D).
        target: ``(B, *spatial)`` int64 class indices or ``ignore_index``; 0 = background or
            a class the image does not label.
        labelled_classes: ``(B, C)`` bool, the classes each image labels; ``None`` = all
            (plain cross-entropy). Column 0 is not read.
        ignore_index: value marking pixels without any label.
        reduction: ``"mean"`` (over the labelled pixels of the batch), ``"sum"``, or
            ``"none"`` (per-pixel ``(B, *spatial)``, zero on ``ignore_index`` pixels).
        check: refuse target values outside ``0 .. C-1`` (other than ``ignore_index``)
            with a one-line error (one host sync; off for speed once the data is known).

    Returns:
        The loss. With no labelled pixel, ``"mean"`` returns 0 with a zero gradient.
        No input is modified.

    Shape:
        logits ``(B, C, *spatial)``, target ``(B, *spatial)``, labelled_classes ``(B, C)``;
        output scalar or ``(B, *spatial)`` for ``"none"``.

    Example:
        >>> logits = torch.tensor([[[0.0], [0.0], [0.0]]])  # (1, 3, 1): uniform over 3
        >>> target = torch.tensor([[0]])
        >>> labelled = torch.tensor([[True, True, False]])  # class 2 not labelled
        >>> round(float(marginal_cross_entropy(logits, target, labelled)), 4)  # -log(2/3)
        0.4055
    """
    check_reduction(reduction)
    check_logits_target(logits, target)
    num_classes = logits.shape[1]
    labelled = target != ignore_index
    if check:
        bad = labelled & ((target < 0) | (target >= num_classes))
        if bool(bad.any()):
            value = int(target[bad][0])
            raise ValueError(f"target has value {value} outside 0..{num_classes - 1} (and "
                             f"ignore_index {ignore_index}); check the label map")
    log_probs = logits.log_softmax(dim=1)
    idx = torch.where(labelled, target, torch.zeros_like(target)).long()
    picked = log_probs.gather(1, idx.unsqueeze(1)).squeeze(1)                   # (B, *spatial)
    if labelled_classes is not None:
        check_labelled_classes(labelled_classes, logits)
        merged_classes = ~labelled_classes.to(logits.device)
        merged_classes = torch.cat([torch.ones_like(merged_classes[:, :1]),
                                    merged_classes[:, 1:]], dim=1)              # 0 always in
        view = (*merged_classes.shape, *([1] * (logits.ndim - 2)))
        out = log_probs.masked_fill(~merged_classes.view(view), float("-inf"))
        merged = torch.logsumexp(out, dim=1)                                    # log s~0
        picked = torch.where(idx == 0, merged, picked)
    per_pixel = -picked * labelled.to(picked.dtype)
    if reduction == "none":
        return per_pixel
    total = per_pixel.sum()
    if reduction == "sum":
        return total
    return total / labelled.sum().clamp_min(1)


@LOSSES.register("marginal_ce", help="marginal cross-entropy: label 0 = background or an "
                 "unlabelled class (partial labels, C8)")
class MarginalCrossEntropyLoss(nn.Module):
    """Module form of :func:`marginal_cross_entropy` (stores hyper-parameters only).

    Reads ``labelled_classes`` when the batch has it (``sim:partial_sites`` gives it); without
    it every class counts as labelled and the loss is plain (partial) cross-entropy.
    """

    inputs = ("target",)
    optional_inputs = ("labelled_classes",)
    #: learns from labelled pixels: refused on a data set without any (annotation none)
    needs_labels = True

    def __init__(self, *, ignore_index: int = IGNORE_INDEX, reduction: str = "mean",
                 check: bool = True) -> None:
        super().__init__()
        check_reduction(reduction)
        self.ignore_index = ignore_index
        self.reduction = reduction
        self.check = check

    def forward(self, logits: torch.Tensor, target: torch.Tensor,
                labelled_classes: torch.Tensor | None = None) -> torch.Tensor:
        return marginal_cross_entropy(logits, target, labelled_classes,
                                      ignore_index=self.ignore_index,
                                      reduction=self.reduction, check=self.check)


# ------------------------------------------------------------------ prior-aware (PaNN)


def _binary_kl(q: torch.Tensor, u: torch.Tensor) -> torch.Tensor:
    """``KL(Bern(q) ‖ Bern(u))`` elementwise (``0 log 0 = 0``)."""
    return (torch.xlogy(q, q) - torch.xlogy(q, u)
            + torch.xlogy(1 - q, 1 - q) - torch.xlogy(1 - q, 1 - u))


def _check_eps(eps: float) -> None:
    if isinstance(eps, bool) or not isinstance(eps, (int, float)) or not 0 < eps < 0.5:
        raise ValueError(f"eps must be a number in (0, 0.5), got {eps!r}")


def prior_aware_loss(
    logits: torch.Tensor,
    labelled_classes: torch.Tensor | None = None,
    *,
    prior: torch.Tensor,
    estimate: torch.Tensor | None = None,
    eps: float = 1e-4,
    reduction: str = "sum",
) -> torch.Tensor:
    """PaNN's prior-aware term at the dual point ``estimate`` (see the module docstring).

    Per class ``c`` with a prior and at least one image of the batch that does not label it:
    ``KL(q_c ‖ u_c) + KL'(q_c ‖ u_c) · (p̄_c − u_c)``, ``p̄_c`` the mean predicted fraction of
    ``c`` over those images (:func:`~weakseg.constrain.fractions.pooled_fractions`) and
    ``u_c`` the ``estimate`` of the data-set average (the batch's own ``p̄_c`` where it is
    ``None`` or NaN: then the value and gradient are those of ``KL(q_c ‖ p̄_c)``), clamped to
    ``[eps, 1 − eps]``.

    Args:
        logits: ``(B, C, *spatial)`` raw network outputs (2D or 3D).
        labelled_classes: ``(B, C)`` bool, the classes each image labels; ``None``: no
            image labels any class (every image counts for every class).
        prior: ``(C,)`` fractions ``q_c`` in ``[0, 1]``, NaN for unconstrained classes
            (:func:`~weakseg.constrain.fractions.resolve_fraction_prior`).
        estimate: ``(C,)`` the running data-set average ``u`` (detached), NaN where unknown.
        eps: clamp of ``u``, which bounds the slope ``KL'`` (``q/eps`` at most).
        reduction: ``"sum"`` over the active classes (the KL of the slides), ``"mean"``, or
            ``"none"`` → ``(C,)`` (0 for inactive classes).

    Shape:
        logits ``(B, C, *spatial)``, labelled_classes ``(B, C)``, prior and estimate ``(C,)``;
        output scalar or ``(C,)``.

    Example:
        >>> logits = torch.zeros(2, 2, 4, 4)                       # p̄ = (0.5, 0.5)
        >>> q = torch.tensor([float("nan"), 0.5])
        >>> float(prior_aware_loss(logits, prior=q))
        0.0
    """
    if reduction not in PRIOR_REDUCTIONS:
        raise ValueError(f"reduction must be one of {PRIOR_REDUCTIONS}, got '{reduction}'")
    _check_eps(eps)
    if logits.ndim < 3 or logits.ndim > 5:
        raise ValueError(f"logits must be (B, C, *spatial) with 1-3 spatial dims, got "
                         f"{tuple(logits.shape)}")
    num_classes = logits.shape[1]
    if tuple(prior.shape) != (num_classes,):
        raise ValueError(f"prior has shape {tuple(prior.shape)} but logits "
                         f"{tuple(logits.shape)} have {num_classes} classes")
    if labelled_classes is not None:
        check_labelled_classes(labelled_classes, logits)
    q = prior.to(device=logits.device, dtype=logits.dtype)
    known = ~q.isnan()
    mean, count = pooled_fractions(logits, labelled_classes, known)
    active = count > 0
    u = mean.detach()
    if estimate is not None:
        est = estimate.to(device=logits.device, dtype=logits.dtype)
        u = torch.where(est.isnan(), u, est)
    u = u.clamp(eps, 1 - eps)
    q = q.nan_to_num(0.0)
    slope = -q / u + (1 - q) / (1 - u)
    per_class = (_binary_kl(q, u) + slope * (mean - u)) * active.to(logits.dtype)
    if reduction == "none":
        return per_class
    if reduction == "sum":
        return per_class.sum()
    return per_class.sum() / active.sum().clamp_min(1)


@LOSSES.register("prior_aware", help="PaNN prior-aware term: KL(q || average fraction) of each "
                 "class over the images that do not label it, stochastic primal-dual (C8)")
class PriorAwareLoss(nn.Module):
    """PaNN's prior-aware term with its running dual point (see the module docstring).

    Args:
        prior: ``{class: q_c}``, classes by name (needs ``class_names``) or index; the
            average fraction of the training image each class covers (a fully labelled
            set's statistic, anatomy, or the images that label the class).
        dual_lr: ``η`` in ``(0, 1]`` of the dual step ``u ← u + η (p̄_batch − u)`` (1: the
            KL of each batch alone).
        eps: clamp of ``u`` (bounds the slope).
        reduction: ``"sum"`` over the active classes, ``"mean"`` or ``"none"`` ``(C,)``.
        num_classes, class_names: injected by the recipe from the data.

    The estimate ``u`` is a buffer (``estimate``, ``(C,)``, NaN until a batch shows the
    class unlabelled), saved in the state dict; it moves once per forward in training mode
    only. :attr:`last_stats` holds ``"violated"``: the fraction of the active classes whose
    estimate is more than :data:`~weakseg.constrain.fractions.FRACTION_TOLERANCE` from the
    prior (detached, no host sync).

    Example:
        >>> loss = PriorAwareLoss(prior={1: 0.25}, num_classes=2)
        >>> value = loss(torch.zeros(2, 2, 4, 4))                   # p̄_1 = 0.5
        >>> [round(v, 4) for v in loss.estimate.tolist()][1], round(float(value), 4)
        (0.5, 0.1308)
    """

    inputs: tuple[str, ...] = ()
    optional_inputs = ("labelled_classes",)
    estimate: torch.Tensor
    prior_q: torch.Tensor

    def __init__(
        self,
        prior: Mapping[int | str, float] | None = None,
        *,
        dual_lr: float = 0.05,
        eps: float = 1e-4,
        reduction: str = "sum",
        num_classes: int | None = None,
        class_names: Sequence[str] | None = None,
    ) -> None:
        super().__init__()
        if prior is None:
            raise ValueError("prior_aware needs prior: {class: fraction}, e.g. "
                             "{RV: 0.012, Myo: 0.014, LV: 0.013}")
        if isinstance(dual_lr, bool) or not isinstance(dual_lr, (int, float)) or \
                not math.isfinite(dual_lr) or not 0 < dual_lr <= 1:
            raise ValueError(f"dual_lr must be a number in (0, 1], got {dual_lr!r}")
        _check_eps(eps)
        if reduction not in PRIOR_REDUCTIONS:
            raise ValueError(f"reduction must be one of {PRIOR_REDUCTIONS}, got '{reduction}'")
        names = None if class_names is None else [str(n) for n in class_names]
        if names is not None and num_classes is not None and len(names) != num_classes:
            raise ValueError(f"{len(names)} class names {names} for {num_classes} classes")
        size = len(names) if names is not None else num_classes
        what = "prior_aware"
        check_fraction_prior(prior, size, names, what)
        self.prior = dict(prior)
        self.class_names = names
        self.dual_lr = float(dual_lr)
        self.eps = float(eps)
        self.reduction = reduction
        resolvable = size is not None and (names is not None or
                                           not any(isinstance(k, str) for k in prior))
        q = (resolve_fraction_prior(prior, size, names, what) if resolvable and size
             else torch.zeros(0, dtype=torch.float64))
        self.register_buffer("prior_q", q.float(), persistent=False)
        self.register_buffer("estimate", torch.full((q.numel(),), math.nan))
        self.last_stats: dict[str, torch.Tensor] = {}

    def _prior(self, num_classes: int) -> torch.Tensor:
        if self.prior_q.numel() == 0:   # built without the data's classes (config checks)
            q = resolve_fraction_prior(self.prior, num_classes, self.class_names,
                                       "prior_aware").float()
            self.prior_q = q.to(self.estimate.device)
            self.estimate = torch.full_like(self.prior_q, math.nan)
        if self.prior_q.numel() != num_classes:
            raise ValueError(f"prior_aware has a prior for {self.prior_q.numel()} classes but "
                             f"the logits have {num_classes}")
        return self.prior_q

    def forward(self, logits: torch.Tensor,
                labelled_classes: torch.Tensor | None = None) -> torch.Tensor:
        q = self._prior(logits.shape[1])
        if self.training:
            with torch.no_grad():
                mean, count = pooled_fractions(logits.detach(), labelled_classes, ~q.isnan())
                mean = mean.to(self.estimate.dtype)
                moved = torch.where(self.estimate.isnan(), mean,
                                    self.estimate + self.dual_lr * (mean - self.estimate))
                self.estimate = torch.where(count > 0, moved, self.estimate)
        value = prior_aware_loss(logits, labelled_classes, prior=q, estimate=self.estimate,
                                 eps=self.eps, reduction=self.reduction)
        with torch.no_grad():
            active = ~q.isnan() & ~self.estimate.isnan()
            off = ((self.estimate - q).abs() > FRACTION_TOLERANCE) & active
            self.last_stats = {"violated": off.sum() / active.sum().clamp_min(1)}
        return value

    def extra_repr(self) -> str:
        return (f"prior={self.prior}, dual_lr={self.dual_lr:g}, eps={self.eps:g}, "
                f"reduction='{self.reduction}'")
