r"""The prior-aware constraint of partially labelled data: average class fractions (C8).

Zhou et al. (PaNN, ICCV 2019) train one network from data sets that each label some
structures, and ask the *average* predicted fraction of every structure a data set does not
label to match a prior :math:`q_c` (the organ-size distribution of a fully labelled set):
with :math:`\hat p_{b,c} = \frac{1}{|\Omega|} \sum_{p \in \Omega} s_{b,p}^c` the predicted
fraction of class :math:`c` in image :math:`b` and :math:`\mathcal{U}_c` the images that do
not label :math:`c`,

.. math::

    \bar p_c = \frac{1}{|\mathcal{U}_c|} \sum_{b \in \mathcal{U}_c} \hat p_{b,c} = q_c .

:func:`class_fraction_constraints` (family ``class_fraction``) writes this equality as the
two inequalities :math:`g = [\,q_c - \bar p_c,\ \bar p_c - q_c\,] \le 0`, per class, over
the images of the batch that do not label :math:`c` (``labelled_classes``; without it, all
images): one row ``(1, C, 2)`` for the batch. Classes without a prior, or labelled by every
image of the batch, are inactive.

**Optimisation.** :math:`\bar p` is an average over the whole data set, which PaNN notes
plain SGD cannot minimise a non-linear function of (a mini-batch estimate of
:math:`\log \bar p` is biased); it rewrites the objective as a min-max problem and takes
stochastic primal-dual steps. Here the same split comes from the existing Lagrangian
objective (``objective: {method: lagrangian}``, multipliers shared by the images, one per
class and side): the network minimises :math:`\sum_c \lambda_c^\top g_c`, which is *linear*
in the batch average, so its mini-batch gradient is unbiased, and after every step
:math:`\lambda \leftarrow \max(0, \lambda + \eta\, g)` with the batch's :math:`g`, an
unbiased estimate of the data-set violation. PaNN's term is
:math:`\sum_c \mathrm{KL}(q_c \,\|\, \bar p_c)` (expanded as the binary cross-entropy on
the slides) instead of an equality; both are minimal exactly at :math:`\bar p = q`, and the
signed multiplier :math:`\lambda_{c,2} - \lambda_{c,1}` plays the part of PaNN's dual
variable (at PaNN's saddle point it is the KL's slope at :math:`\bar p`). With
``penalty`` / ``log_barrier`` the batch average is pushed directly (a biased estimate of
the data-set average, as PaNN warns). Per-image multipliers do not apply (refused), nor
Pathak's per-image proposal (the family is declared non-affine for it).

The prior is given by class name or index, ``prior: {RV: 0.012, Myo: 0.014, LV: 0.013}``
(fractions of the training image, averaged over images — a statistic of a fully labelled
set, of anatomy, or of the images that do label the class). "Violated" in the logs means
:math:`|\bar p_c - q_c| >` :data:`FRACTION_TOLERANCE`.

Reference:
    Zhou, Li, Bai, Wang, Chen, Han, Fishman & Yuille, "Prior-aware neural network for
    partially-supervised multi-organ segmentation", ICCV 2019.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from typing import Any

import torch

from weakseg.constrain.families import Constraint, _check_logits, register_constraint
from weakseg.constrain.knowledge import resolve_class

__all__ = [
    "FRACTION_TOLERANCE",
    "check_fraction_prior",
    "class_fraction_constraints",
    "pooled_fractions",
    "resolve_fraction_prior",
]

#: A violation of the average fraction above it counts as violated in the logs (a tenth of
#: a percent of the image).
FRACTION_TOLERANCE = 1e-3
_FORM = "prior must map classes (names or indices) to fractions in [0, 1], e.g. {LV: 0.013}"


def check_fraction_prior(prior: object, num_classes: int | None,
                         class_names: Sequence[str] | None,
                         what: str = "constraint 'class_fraction'") -> dict[int | str, float]:
    """The prior as ``{class: fraction}`` with every class resolved as far as the class names
    are known (``int`` keys), checked: finite fractions in ``[0, 1]`` summing to ≤ 1.
    ``what`` names the loss or constraint in the messages."""
    if not isinstance(prior, Mapping) or not prior:
        raise ValueError(f"{what}: {_FORM}, got {prior!r}")
    out: dict[int | str, float] = {}
    for ref, value in prior.items():
        if isinstance(value, bool) or not isinstance(value, (int, float)) or \
                not math.isfinite(value) or not 0 <= value <= 1:
            raise ValueError(f"{what}: prior of '{ref}' must be a fraction in [0, 1], got "
                             f"{value!r}")
        index = resolve_class(ref, num_classes=num_classes, class_names=class_names,
                              what=f"{what} prior")
        key: int | str = ref if index is None else index
        if key in out:
            raise ValueError(f"{what}: prior gives class '{ref}' twice")
        out[key] = float(value)
    total = sum(out.values())
    if total > 1 + 1e-6:
        raise ValueError(f"{what}: prior fractions sum to {total:.6g} > 1 ({dict(prior)})")
    return out


def resolve_fraction_prior(prior: Mapping[Any, float], num_classes: int,
                           class_names: Sequence[str] | None = None,
                           what: str = "constraint 'class_fraction'") -> torch.Tensor:
    """The prior as a ``(C,)`` float64 tensor, NaN for the classes it does not constrain.

    Example:
        >>> resolve_fraction_prior({"LV": 0.02}, 3, ["background", "RV", "LV"])
        tensor([   nan,    nan, 0.0200], dtype=torch.float64)
    """
    checked = check_fraction_prior(prior, num_classes, class_names, what)
    q = torch.full((num_classes,), math.nan, dtype=torch.float64)
    for key, value in checked.items():
        if isinstance(key, str):
            raise ValueError(f"{what}: prior names class '{key}' but the class names are "
                             "unknown; give class indices or class_names")
        q[key] = value
    return q


def _check_params(params: Mapping[str, Any]) -> None:
    if "prior" not in params:
        raise ValueError("constraint 'class_fraction' needs prior: {class: fraction}, e.g. "
                         "{RV: 0.012, Myo: 0.014, LV: 0.013}")
    check_fraction_prior(params["prior"], None, params.get("class_names"))


@register_constraint(
    "class_fraction", inputs={}, optional={"labelled": "labelled_classes"},
    parts={"class_fraction": (2,)}, affine=False, per_batch=True,
    tolerance=lambda logits: FRACTION_TOLERANCE, injected=("class_names",),
    validate=_check_params,
    help="average predicted fraction of each class over the batch images that do not label "
         "it = a prior (prior-aware partial labels, PaNN, C8); one row per batch",
)
def class_fraction_constraints(
    logits: torch.Tensor,
    labelled: torch.Tensor | None = None,
    *,
    prior: Mapping[int | str, float],
    class_names: Sequence[str] | None = None,
) -> Constraint:
    r"""The average fraction of every prior class over the images that do not label it.

    Args:
        logits: ``(B, C, *spatial)`` (2D or 3D).
        labelled: ``(B, C)`` bool, the classes each image labels (``labelled_classes``); an
            image takes part in class ``c``'s average where ``labelled[b, c]`` is False.
            ``None``: every image takes part.
        prior: ``{class: q_c}``, classes by name (needs ``class_names``) or index.
        class_names: the data's classes (injected by the recipe).

    Returns:
        :class:`Constraint` with ``g`` ``(1, C, 2)`` = ``[q_c − p̄_c, p̄_c − q_c]`` (fractions;
        ``-inf`` and inactive where a class has no prior or no image of the batch leaves it
        unlabelled).

    Example:
        >>> logits = torch.zeros(2, 3, 4, 4)                           # p̂ = 1/3 everywhere
        >>> labelled = torch.tensor([[True, True, False], [True, True, True]])
        >>> c = class_fraction_constraints(logits, labelled, prior={2: 0.25})
        >>> c.g[0, 2], c.active[0].tolist()
        (tensor([-0.0833,  0.0833]), [[False, False], [False, False], [True, True]])
    """
    _check_logits(logits)
    num_classes = logits.shape[1]
    q = resolve_fraction_prior(prior, num_classes, class_names).to(logits.device)
    mean, count = pooled_fractions(logits, labelled, ~q.isnan())
    q = q.nan_to_num(0.0).to(mean.dtype)
    g = torch.stack([q - mean, mean - q], dim=-1).unsqueeze(0)                  # (1, C, 2)
    active = (count > 0).view(1, num_classes, 1).expand(g.shape)
    g = g.masked_fill(~active, float("-inf"))
    return Constraint(g, active)


def pooled_fractions(
    logits: torch.Tensor, labelled: torch.Tensor | None = None,
    classes: torch.Tensor | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """The mean predicted fraction of every class over the images of the batch that do not
    label it, and how many images that is: ``(C,)`` and ``(C,)`` (0 images: mean 0).

    ``p̄_c = Σ_b a_bc p̂_bc / Σ_b a_bc`` with ``p̂_bc`` the soft fraction of class ``c`` in
    image ``b`` and ``a_bc`` = not ``labelled[b, c]`` (every image when ``labelled`` is
    ``None``) and ``classes[c]`` (a ``(C,)`` bool mask, all classes when ``None``).

    Example:
        >>> mean, count = pooled_fractions(torch.zeros(2, 2, 3, 3),
        ...                                torch.tensor([[True, False], [True, True]]))
        >>> mean.tolist(), count.tolist()
        ([0.0, 0.5], [0.0, 1.0])
    """
    b, num_classes = logits.shape[:2]
    fractions = logits.softmax(1).mean(tuple(range(2, logits.ndim)))            # (B, C)
    if labelled is None:
        takes_part = torch.ones(b, num_classes, dtype=torch.bool, device=logits.device)
    else:
        if labelled.dtype != torch.bool or tuple(labelled.shape) != (b, num_classes):
            raise ValueError(f"labelled_classes must be (B, C) = {(b, num_classes)} bool, got "
                             f"{tuple(labelled.shape)} {labelled.dtype}")
        takes_part = ~labelled.to(logits.device)
    if classes is not None:
        takes_part = takes_part & classes.to(logits.device)
    weight = takes_part.to(fractions.dtype)
    count = weight.sum(0)                                                       # (C,)
    return (fractions * weight).sum(0) / count.clamp_min(1), count
