"""Entropy-based priors on unlabelled pixels: entropy, mutual information, marginal prior.

With :math:`s_p = \\mathrm{softmax}(z_p)` over :math:`C` classes, :math:`H(s) = -\\sum_c s^c
\\log s^c`, and the label marginal of an image :math:`\\hat S = \\frac{1}{|\\Omega|}
\\sum_{p \\in \\Omega} s_p` (the predicted class proportions):

* **Entropy minimisation** (METHODS.md R6) pushes each prediction to be confident:

  .. math:: \\mathcal{L}_{ent} = \\frac{1}{|U|} \\sum_{p \\in U} H(s_p)

  Entropy minimisation favours the classes that already dominate (ADVENT's remark, which
  it answers with class-ratio priors). ``class_balanced=True`` weights each pixel by the
  inverse predicted frequency of its arg-max class :math:`k_p` among the selected pixels
  of the batch, raised to ``balance_power`` :math:`\\alpha` (detached; the weights are
  scaled to mean 1 over the selected pixels, so the value stays a weighted mean in
  ``[0, 1]``):

  .. math:: w_p = \\frac{f_{k_p}^{-\\alpha}}{\\frac{1}{|U|}\\sum_{q \\in U}
        f_{k_q}^{-\\alpha}}, \\qquad f_k = \\frac{|\\{q \\in U : k_q = k\\}|}{|U|},
        \\qquad \\mathcal{L} = \\frac{1}{|U|} \\sum_{p \\in U} w_p\\, H(s_p)

  With :math:`\\alpha = 1` every predicted class weighs the same: the loss is the mean over
  the predicted classes of their pixels' mean entropy. This is the class-balanced
  weighting of Chen et al.'s maximum squares loss (:math:`1 / (N_k^\\alpha N^{1-\\alpha})`,
  per image there, :math:`\\alpha = 0.2`), applied to ADVENT's entropy over the batch (a
  batch of slices often holds slices with background only).

* **Mutual information** (R7) adds the entropy of the marginal, which rules out the trivial
  solution of R6 (every pixel confidently the same class); the loss to minimise is

  .. math:: \\mathcal{L}_{MI} = -\\mathrm{MI} = -\\lambda\\, H(\\hat S)
        + \\frac{1}{|\\Omega|} \\sum_{p \\in \\Omega} H(s_p)

* **Marginal prior** (R8) replaces :math:`-H(\\hat S)` with a distance from :math:`\\hat S`
  to known class proportions :math:`q`, e.g.
  :math:`\\mathrm{KL}(\\hat S \\,\\|\\, q) = -H(\\hat S) - \\sum_c \\hat S^c \\log q^c`
  (for a uniform ``q`` this is :math:`\\log C - H(\\hat S)`: the MI marginal term up to a
  constant).

Entropies are divided by :math:`\\log C` by default (``normalize=True``) so they lie in
``[0, 1]`` whatever the number of classes. Everything is computed from one
``log_softmax``; :math:`\\log \\hat S` is a ``logsumexp`` of it (no ``+ eps``).

References:
    Grandvalet & Bengio, "Semi-supervised learning by entropy minimization", NIPS 2005.
    Vu et al., "ADVENT: adversarial entropy minimization for domain adaptation", CVPR 2019.
    Gomes, Krause & Perona, "Discriminative clustering by regularized information
    maximization" (RIM), NIPS 2010.
    Bateson et al., "Source-relaxed domain adaptation for image segmentation", MICCAI 2020.
    Chen, Xue & Cai, "Domain adaptation for semantic segmentation with maximum squares
    loss", ICCV 2019 (the class-balanced weighting factor).
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence

import torch
from torch import nn

from weakseg.data.base import IGNORE_INDEX
from weakseg.losses._utils import check_logits_target, check_reduction, reduce
from weakseg.losses.base import LOSSES
from weakseg.registry import did_you_mean

__all__ = [
    "EntropyLoss",
    "MarginalPriorLoss",
    "MutualInformationLoss",
    "check_prior",
    "entropy_loss",
    "named_prior",
    "marginal_prior_loss",
    "mutual_information_loss",
]

MARGINALS = ("image", "batch")
DISTANCES = ("kl", "l2", "hinge")
PRIOR_TOLERANCE = 1e-3


# --------------------------------------------------------------------------- helpers


def _check_logits(logits: torch.Tensor) -> None:
    if logits.ndim < 3 or logits.ndim > 5:
        raise ValueError(
            f"logits must be (B, C, *spatial) with 1-3 spatial dims, got {tuple(logits.shape)}"
        )
    if logits.shape[1] < 2:
        raise ValueError(
            f"entropy losses need at least 2 classes, got logits {tuple(logits.shape)}"
        )


def _check_choice(name: str, value: str, allowed: tuple[str, ...]) -> None:
    if value not in allowed:
        raise ValueError(f"{name} must be one of {allowed}, got '{value}'")


def _log_marginal(log_probs: torch.Tensor, marginal: str = "image") -> torch.Tensor:
    """``log Ŝ`` from ``log_softmax`` output: ``(B, C)`` per image, or ``(1, C)`` for the
    whole batch (``marginal="batch"``), as a stable ``logsumexp``."""
    spatial = tuple(range(2, log_probs.ndim))
    if marginal == "batch":
        dims: tuple[int, ...] = (0, *spatial)
        count = log_probs.numel() // log_probs.shape[1]
        return torch.logsumexp(log_probs, dim=dims).unsqueeze(0) - math.log(count)
    count = log_probs[0, 0].numel()
    return torch.logsumexp(log_probs, dim=spatial) - math.log(count)


def _entropy(log_probs: torch.Tensor, dim: int) -> torch.Tensor:
    """``−Σ p log p`` along ``dim`` from log-probabilities (``p = 0`` terms are 0)."""
    return -(log_probs.exp() * log_probs).sum(dim=dim)


# --------------------------------------------------------------------------- entropy (R6)


def _check_power(power: float) -> None:
    if isinstance(power, bool) or not isinstance(power, (int, float)):
        raise ValueError(f"balance_power must be a number, got {power!r}")
    if not math.isfinite(power) or power < 0:
        raise ValueError(f"balance_power must be finite and ≥ 0, got {power}")


@torch.no_grad()
def _balance_weights(logits: torch.Tensor, mask: torch.Tensor, power: float) -> torch.Tensor:
    """Detached ``(B, *spatial)`` weights ``f_{k_p}^{-power}`` of the selected pixels
    (``mask``), ``f_k`` the fraction of them whose arg-max is ``k``, scaled to mean 1 over
    them; 0 elsewhere. No host sync."""
    num_classes = logits.shape[1]
    k = logits.argmax(dim=1)                                                  # (B, *spatial)
    selected = mask.to(logits.dtype)
    counts = logits.new_zeros(num_classes).scatter_add_(0, k.flatten(), selected.flatten())
    total = selected.sum().clamp_min(1)
    weight = (counts.clamp_min(1) / total).pow(-power)[k] * selected
    return weight * total / weight.sum().clamp_min(torch.finfo(logits.dtype).tiny)


def entropy_loss(
    logits: torch.Tensor,
    target: torch.Tensor | None = None,
    *,
    ignore_index: int = IGNORE_INDEX,
    only_unlabelled: bool = True,
    normalize: bool = True,
    class_balanced: bool = False,
    balance_power: float = 1.0,
    reduction: str = "mean",
) -> torch.Tensor:
    """Mean Shannon entropy of the predictions on the unlabelled pixels.

    ``−1/|U| Σ_{p∈U} Σ_c s_p^c log s_p^c``, divided by ``log C`` when ``normalize``; with
    ``class_balanced``, each pixel weighted by the inverse batch frequency of its predicted
    class (see the module docstring).

    Args:
        logits: ``(B, C, *spatial)`` raw network outputs (2D or 3D), ``C ≥ 2``.
        target: ``(B, *spatial)`` weak labels; its ``ignore_index`` pixels form ``U``.
            ``None``: all pixels (unsupervised / target-domain images).
        ignore_index: value marking unlabelled pixels.
        only_unlabelled: ``False`` uses every pixel even when ``target`` is given.
        normalize: divide by ``log C`` so the value lies in ``[0, 1]`` (1 = uniform).
        class_balanced: weight pixel ``p`` by ``f_k^{-balance_power}``, ``f_k`` the fraction
            of the selected pixels of the batch whose arg-max is ``k = argmax_c s_p^c``
            (detached, scaled to mean 1 over the selected pixels). Off by default.
        balance_power: ``α ≥ 0`` of the weighting (1: every predicted class weighs the
            same; 0: no weighting; Chen et al. use 0.2).
        reduction: ``"mean"`` (over the selected pixels of the batch), ``"sum"``, or
            ``"none"`` (per-pixel ``(B, *spatial)``, weighted, zero on the excluded pixels).

    Returns:
        The loss. With no selected pixel, ``"mean"`` returns 0 with a zero gradient.

    Shape:
        logits ``(B, C, *spatial)``, target ``(B, *spatial)`` or ``None``; output scalar, or
        ``(B, *spatial)`` for ``"none"``.

    Example:
        >>> logits = torch.zeros(2, 4, 8, 8)  # uniform predictions
        >>> float(entropy_loss(logits))
        1.0
    """
    check_reduction(reduction)
    _check_power(balance_power)
    _check_logits(logits)
    per_pixel = _entropy(logits.log_softmax(dim=1), dim=1)
    if normalize:
        per_pixel = per_pixel / math.log(logits.shape[1])
    if target is not None:
        check_logits_target(logits, target)
    if target is not None and only_unlabelled:
        mask = target == ignore_index
        per_pixel = per_pixel * mask.to(per_pixel.dtype)
        count = mask.sum()
    else:
        mask = torch.ones_like(per_pixel, dtype=torch.bool)
        count = torch.tensor(per_pixel.numel(), device=per_pixel.device)
    if class_balanced:
        per_pixel = per_pixel * _balance_weights(logits.detach(), mask, float(balance_power))
    if reduction == "none":
        return per_pixel
    total = per_pixel.sum()
    if reduction == "sum":
        return total
    return total / count.clamp_min(1)


@LOSSES.register("entropy", help="entropy minimisation on unlabelled pixels (R6)")
class EntropyLoss(nn.Module):
    """Module form of :func:`entropy_loss` (stores hyper-parameters only)."""

    inputs = ("target",)

    def __init__(
        self,
        *,
        ignore_index: int = IGNORE_INDEX,
        only_unlabelled: bool = True,
        normalize: bool = True,
        class_balanced: bool = False,
        balance_power: float = 1.0,
        reduction: str = "mean",
    ) -> None:
        super().__init__()
        check_reduction(reduction)
        _check_power(balance_power)
        self.ignore_index = ignore_index
        self.only_unlabelled = only_unlabelled
        self.normalize = normalize
        self.class_balanced = class_balanced
        self.balance_power = float(balance_power)
        self.reduction = reduction

    def forward(self, logits: torch.Tensor, target: torch.Tensor | None = None) -> torch.Tensor:
        return entropy_loss(
            logits,
            target,
            ignore_index=self.ignore_index,
            only_unlabelled=self.only_unlabelled,
            normalize=self.normalize,
            class_balanced=self.class_balanced,
            balance_power=self.balance_power,
            reduction=self.reduction,
        )


# --------------------------------------------------------------------------- MI (R7)


def mutual_information_loss(
    logits: torch.Tensor,
    *,
    marginal: str = "image",
    marginal_weight: float = 1.0,
    normalize: bool = True,
    reduction: str = "mean",
) -> torch.Tensor:
    """Negative mutual information between pixels and labels (RIM), to be minimised.

    ``−λ H(Ŝ) + mean_p H(s_p)`` per image, with ``Ŝ = mean_p s_p`` the label marginal and
    ``λ = marginal_weight``. For ``λ = 1`` this is ``−MI``, which lies in ``[−log C, 0]``
    (``[−1, 0]`` normalised): 0 when every pixel has the same prediction (e.g. uniform),
    ``−log C`` for confident predictions that use the ``C`` classes equally often.

    Args:
        logits: ``(B, C, *spatial)`` raw network outputs (2D or 3D), ``C ≥ 2``.
        marginal: ``"image"``: ``Ŝ`` per image (each image is pushed to use all classes);
            ``"batch"``: one ``Ŝ`` over the whole batch (better when most slices hold
            only some of the classes, e.g. background-only slices of a volume).
        marginal_weight: ``λ ≥ 0``; 0 leaves the plain entropy of all pixels.
        normalize: divide by ``log C``.
        reduction: ``"mean"`` or ``"sum"`` over images, or ``"none"`` → ``(B,)`` (with
            ``"batch"``, each image's value shares the batch term ``−λ H(Ŝ)``).

    Shape:
        logits ``(B, C, *spatial)``; output scalar, or ``(B,)`` for ``"none"``.

    Example:
        >>> logits = torch.zeros(2, 4, 8, 8)  # uniform predictions carry no information
        >>> float(mutual_information_loss(logits))
        0.0
    """
    check_reduction(reduction)
    _check_choice("marginal", marginal, MARGINALS)
    _check_weight(marginal_weight)
    _check_logits(logits)
    log_probs = logits.log_softmax(dim=1)
    spatial = tuple(range(2, logits.ndim))
    conditional = (-(log_probs.exp() * log_probs)).mean(dim=spatial).sum(dim=1)  # (B,)
    marginal_entropy = _entropy(_log_marginal(log_probs, marginal), dim=1)  # (B,) or (1,)
    per_image = conditional - marginal_weight * marginal_entropy
    if normalize:
        per_image = per_image / math.log(logits.shape[1])
    return reduce(per_image, reduction)


def _check_weight(weight: float) -> None:
    if isinstance(weight, bool) or not isinstance(weight, (int, float)):
        raise ValueError(f"marginal_weight must be a number, got {weight!r}")
    if not math.isfinite(weight) or weight < 0:
        raise ValueError(f"marginal_weight must be finite and ≥ 0, got {weight}")


@LOSSES.register("mutual_information", help="negative mutual information, RIM (R7)")
class MutualInformationLoss(nn.Module):
    """Module form of :func:`mutual_information_loss` (stores hyper-parameters only)."""

    inputs: tuple[str, ...] = ()

    def __init__(
        self,
        *,
        marginal: str = "image",
        marginal_weight: float = 1.0,
        normalize: bool = True,
        reduction: str = "mean",
    ) -> None:
        super().__init__()
        check_reduction(reduction)
        _check_choice("marginal", marginal, MARGINALS)
        _check_weight(marginal_weight)
        self.marginal = marginal
        self.marginal_weight = marginal_weight
        self.normalize = normalize
        self.reduction = reduction

    def forward(self, logits: torch.Tensor) -> torch.Tensor:
        return mutual_information_loss(
            logits,
            marginal=self.marginal,
            marginal_weight=self.marginal_weight,
            normalize=self.normalize,
            reduction=self.reduction,
        )


# --------------------------------------------------------------------------- prior (R8)


def check_prior(
    prior: Sequence[float] | torch.Tensor, *, distance: str = "kl",
    class_names: Sequence[str] | None = None,
) -> torch.Tensor:
    """Validate class proportions ``q`` and return them as a float64 ``(C,)`` tensor.

    ``q`` must be one-dimensional with at least 2 finite, non-negative entries summing to
    1 within ``1e-3`` (it is then renormalised to sum to 1 exactly); for ``distance="kl"``
    every entry must be positive (``KL(Ŝ ‖ q)`` is infinite where ``q_c = 0`` since
    ``Ŝ_c > 0``). With ``class_names``, ``q`` must have one entry per class.

    Example:
        >>> check_prior([0.9, 0.1])
        tensor([0.9000, 0.1000], dtype=torch.float64)
    """
    try:
        q = torch.as_tensor(prior, dtype=torch.float64).detach().cpu()
    except (TypeError, ValueError, RuntimeError):
        raise ValueError(f"prior must be a sequence of numbers, got {prior!r}") from None
    if q.ndim != 1 or q.numel() < 2:
        raise ValueError(
            f"prior must be a 1D sequence of C ≥ 2 class proportions, got shape {tuple(q.shape)}"
        )
    if class_names is not None and q.numel() != len(class_names):
        raise ValueError(
            f"prior has {q.numel()} values but the data has {len(class_names)} classes "
            f"({', '.join(class_names)}); give one proportion per class, or name them: "
            "{RV: 0.02, ...}"
        )
    if not torch.isfinite(q).all() or (q < 0).any():
        raise ValueError(f"prior must be finite and non-negative, got {q.tolist()}")
    total = float(q.sum())
    if abs(total - 1.0) > PRIOR_TOLERANCE:
        raise ValueError(
            f"prior must sum to 1 (within {PRIOR_TOLERANCE}), got sum {total:.6g} for {q.tolist()}"
        )
    if distance == "kl" and (q == 0).any():
        raise ValueError(
            f"KL(Ŝ ‖ q) is infinite where q_c = 0; got prior {q.tolist()}: give every class a "
            "positive proportion or use distance='l2' / 'hinge'"
        )
    return q / total


def _check_named(prior: Mapping[str, float]) -> float:
    """The numbers of a prior by class name: finite, ≥ 0, summing to ≤ 1; returns the sum."""
    for name, value in prior.items():
        if isinstance(value, bool) or not isinstance(value, (int, float)) or not (
                math.isfinite(value) and value >= 0):
            raise ValueError(f"prior of class '{name}' must be a finite number ≥ 0, got {value!r}")
    total = float(sum(prior.values()))
    if total > 1.0 + PRIOR_TOLERANCE:
        raise ValueError(f"prior proportions must sum to ≤ 1, got sum {total:.6g} for "
                         f"{dict(prior)}")
    return total


def named_prior(prior: Mapping[str, float], class_names: Sequence[str]) -> list[float]:
    """Class proportions given by class name → one value per class of ``class_names``.

    The named proportions must sum to ≤ 1; the classes left out share the remainder equally
    (typically only the background is left out: ``{RV: 0.02, Myo: 0.03, LV: 0.03}``).
    Naming every class needs a sum of 1 (within ``1e-3``).

    Example:
        >>> named_prior({"fg": 0.2}, ["background", "fg"])
        [0.8, 0.2]
    """
    total = _check_named(prior)
    for name in prior:
        if name not in class_names:
            same = [c for c in class_names if c.lower() == str(name).lower()]
            hint = f" (did you mean '{same[0]}'?)" if same else did_you_mean(str(name),
                                                                              list(class_names))
            raise ValueError(f"prior names class '{name}', which the data does not have{hint}; "
                             f"classes: {', '.join(class_names)}")
    rest = [c for c in class_names if c not in prior]
    if not rest and abs(total - 1.0) > PRIOR_TOLERANCE:
        raise ValueError(f"prior names every class, so its proportions must sum to 1, got sum "
                         f"{total:.6g}; leave the background out to give it the remainder")
    share = max(1.0 - total, 0.0) / max(len(rest), 1)
    return [float(prior[c]) if c in prior else share for c in class_names]


def _check_margin(margin: float, distance: str) -> None:
    if isinstance(margin, bool) or not isinstance(margin, (int, float)):
        raise ValueError(f"margin must be a number, got {margin!r}")
    if not math.isfinite(margin) or margin < 0:
        raise ValueError(f"margin must be finite and ≥ 0, got {margin}")
    if margin != 0 and distance != "hinge":
        raise ValueError(f"margin is only used by distance='hinge', got distance='{distance}'")


def marginal_prior_loss(
    logits: torch.Tensor,
    *,
    prior: Sequence[float] | torch.Tensor | None = None,
    distance: str = "kl",
    margin: float = 0.0,
    reduction: str = "mean",
) -> torch.Tensor:
    """Distance between the predicted class proportions ``Ŝ`` of each image and a prior ``q``.

    ``Ŝ = mean_p s_p`` per image (``(B, C)``) and, per image:

    * ``"kl"``: ``KL(Ŝ ‖ q) = Σ_c Ŝ_c (log Ŝ_c − log q_c)`` — this direction (prediction
      first, as in METHODS.md R8), i.e. ``−H(Ŝ)`` plus the cross-entropy of ``q``; it
      equals ``log C − H(Ŝ)`` for a uniform ``q``. (The size loss C2 uses the other
      direction, ``KL(q ‖ V̂)``.)
    * ``"l2"``: ``Σ_c (Ŝ_c − q_c)²``, in ``[0, 2]``.
    * ``"hinge"``: ``Σ_c max(0, |Ŝ_c − q_c| − margin)²``, zero while each proportion is
      within ``margin`` of the prior (``margin = 0`` gives ``"l2"``).

    Args:
        logits: ``(B, C, *spatial)`` raw network outputs (2D or 3D), ``C ≥ 2``.
        prior: ``C`` class proportions (validated by :func:`check_prior`). ``None`` means
            uniform, which is only a placeholder (it makes ``"kl"`` the MI marginal term):
            give the known or estimated proportions, e.g. measured on the labelled set.
        distance: ``"kl"``, ``"l2"`` or ``"hinge"``.
        margin: tolerance of ``"hinge"`` (must be 0 otherwise).
        reduction: ``"mean"`` or ``"sum"`` over images, or ``"none"`` → ``(B,)``.

    Shape:
        logits ``(B, C, *spatial)``, prior ``(C,)``; output scalar, or ``(B,)`` for ``"none"``.

    Example:
        >>> logits = torch.zeros(2, 2, 8, 8)  # Ŝ = (0.5, 0.5)
        >>> float(marginal_prior_loss(logits, prior=[0.5, 0.5]))
        0.0
    """
    check_reduction(reduction)
    _check_choice("distance", distance, DISTANCES)
    _check_margin(margin, distance)
    q = None if prior is None else check_prior(prior, distance=distance)
    return _marginal_prior(logits, q, distance, margin, reduction)


def _marginal_prior(
    logits: torch.Tensor, q: torch.Tensor | None, distance: str, margin: float, reduction: str
) -> torch.Tensor:
    """:func:`marginal_prior_loss` with the options and ``q`` (a :func:`check_prior` output
    or ``None``) already validated."""
    _check_logits(logits)
    num_classes = logits.shape[1]
    if q is None:
        q = logits.new_full((num_classes,), 1.0 / num_classes)
    q = q.to(dtype=logits.dtype, device=logits.device)
    if q.numel() != num_classes:
        raise ValueError(
            f"prior has {q.numel()} classes but logits {tuple(logits.shape)} have {num_classes}"
        )
    log_marginal = _log_marginal(logits.log_softmax(dim=1))  # (B, C)
    marginal = log_marginal.exp()
    if distance == "kl":
        per_image = (marginal * (log_marginal - q.log())).sum(dim=1)
    elif distance == "l2":
        per_image = (marginal - q).square().sum(dim=1)
    else:
        per_image = ((marginal - q).abs() - margin).clamp_min(0).square().sum(dim=1)
    return reduce(per_image, reduction)


@LOSSES.register("marginal_prior", help="KL / L2 / hinge to known class proportions (R8)")
class MarginalPriorLoss(nn.Module):
    """Module form of :func:`marginal_prior_loss`; the prior is a buffer (saved with the
    state dict, moved with ``.to()``). ``prior=None`` (uniform) only exists so the loss can
    be built without parameters: give the real class proportions.

    ``prior`` is ``C`` numbers summing to 1, or a mapping class name → proportion (summing
    to ≤ 1, the classes left out share the remainder: :func:`named_prior`), which needs
    ``class_names`` (a loss recipe passes the data's). Built without them, a named prior is
    only checked (numbers, sum) and the loss cannot be called. (``prior: from_init`` in a
    config is replaced by the class fractions of the ``train.init`` checkpoint before the
    loss is built: :mod:`weakseg.adapt`.)
    """

    inputs: tuple[str, ...] = ()
    prior: torch.Tensor | None

    def __init__(
        self,
        *,
        prior: Sequence[float] | Mapping[str, float] | torch.Tensor | None = None,
        class_names: Sequence[str] | None = None,
        distance: str = "kl",
        margin: float = 0.0,
        reduction: str = "mean",
    ) -> None:
        super().__init__()
        check_reduction(reduction)
        _check_choice("distance", distance, DISTANCES)
        _check_margin(margin, distance)
        self.unresolved: dict[str, float] | None = None  # named, without class names
        if isinstance(prior, Mapping):
            if class_names is None:
                _check_named(prior)
                self.unresolved, prior = dict(prior), None
            else:
                prior = named_prior(prior, class_names)
        q = None if prior is None else check_prior(prior, distance=distance,
                                                   class_names=class_names)
        self.register_buffer("prior", q)
        self.distance = distance
        self.margin = margin
        self.reduction = reduction

    def forward(self, logits: torch.Tensor) -> torch.Tensor:
        if self.unresolved is not None:
            raise ValueError(f"prior {self.unresolved} is given by class name: build the loss "
                             "with class_names")
        # the buffer was validated at construction: skip the (host-syncing) checks
        return _marginal_prior(logits, self.prior, self.distance, self.margin, self.reduction)

    def extra_repr(self) -> str:
        prior = None if self.prior is None else [round(float(v), 6) for v in self.prior]
        return (
            f"prior={prior}, distance='{self.distance}', margin={self.margin}, "
            f"reduction='{self.reduction}'"
        )
