r"""Dense-CRF proposal of ADM (METHODS.md R5, the dense alternative): mean-field inference.

The fully connected CRF of Krähenbühl & Koltun with the network's prediction as unary,

.. math::

    E(y) = -\sum_p \log s_p(y_p) + \lambda \sum_{p \ne q} k(f_p, f_q)\,[y_p \ne y_q],
    \qquad k(f_p, f_q) = \exp\Big(-\frac{\lVert x_p - x_q \rVert^2}{2\sigma_{xy}^2}
                                  -\frac{\lVert I_p - I_q \rVert^2}{2\sigma_I^2}\Big),

is approximated by a factorised :math:`Q` with ``iterations`` parallel mean-field updates

.. math::

    Q_p(l) \propto s_p(l)\, \exp\Big(\lambda \sum_{q \ne p} k(f_p, f_q)\, Q_q(l)\Big),

the message :math:`\sum_{q \ne p} k\,Q_q = (W Q)_p - Q_p` computed by the dense Gaussian
filtering of :mod:`weakseg.filtering` (bilateral grid / permutohedral lattice / exact kernel,
the same backends as the dense CRF loss). The weak labels are hard constraints: their
pixels hold the one-hot label throughout. ``λ`` multiplies the raw kernel (no
normalisation): with ``σ_xy = 5`` a pixel in a flat region has a kernel mass of about
``2πσ_xy² ≈ 157``, so ``λ`` of order ``0.01–0.1`` balances the unary.

Reference:
    Krähenbühl & Koltun, "Efficient inference in fully connected CRFs with Gaussian edge
    potentials", NIPS 2011. Marin et al., "Beyond gradient descent for regularized
    segmentation losses", CVPR 2019 (ADM with a dense CRF).
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence

import torch
import torch.nn.functional as F

from weakseg.filtering import BACKENDS, bilateral_features, dense_gaussian
from weakseg.losses.proposals.base import (
    IGNORE_INDEX,
    PROPOSALS,
    ProposalMethod,
    check_proposal_inputs,
)

__all__ = ["MeanFieldProposal", "mean_field"]


def mean_field(
    logits: torch.Tensor,
    image: torch.Tensor,
    target: torch.Tensor | None = None,
    *,
    lam: float = 0.05,
    sigma_xy: float = 5.0,
    sigma_intensity: float = 0.1,
    spacing: Sequence[float] | None = None,
    iterations: int = 5,
    backend: str = "auto",
    ignore_index: int = IGNORE_INDEX,
) -> torch.Tensor:
    """Mean-field marginals ``Q`` of the dense CRF (see the module docstring).

    Args:
        logits: ``(B, C, *spatial)`` (detached).
        image: ``(B, K, *spatial)`` in [0, 1].
        target: optional ``(B, *spatial)`` weak labels: hard constraints (one-hot ``Q``).
        lam, sigma_xy, sigma_intensity, spacing: the CRF; ``iterations``: updates;
        backend: one of :data:`weakseg.filtering.BACKENDS`.

    Returns:
        ``Q`` ``(B, C, *spatial)``, a distribution per pixel.

    Example:
        >>> q = mean_field(torch.randn(1, 3, 8, 8), torch.rand(1, 1, 8, 8), iterations=2)
        >>> torch.allclose(q.sum(1), torch.ones(1, 8, 8))
        True
    """
    log_s = logits.detach().log_softmax(1)
    features = bilateral_features(image.detach().to(log_s.dtype), sigma_xy=sigma_xy,
                                  sigma_intensity=sigma_intensity, spacing=spacing)
    clamp = None
    if target is not None:
        labelled = target != ignore_index
        if labelled.any():
            onehot = F.one_hot(target.clamp_min(0).long(), logits.shape[1]).movedim(-1, 1)
            clamp = (labelled.unsqueeze(1), onehot.to(log_s.dtype))

    def constrain(q: torch.Tensor) -> torch.Tensor:
        return q if clamp is None else torch.where(clamp[0], clamp[1], q)

    q = constrain(log_s.exp())
    for _ in range(iterations):
        message = dense_gaussian(q, features, backend=backend) - q
        q = constrain((log_s + lam * message).softmax(1))
    return q


@PROPOSALS.register("meanfield", help="dense CRF mean-field inference with the weak labels "
                    "clamped (ADM with a dense CRF, R5)")
class MeanFieldProposal(ProposalMethod):
    """:func:`mean_field` as a proposal: hard labels (the arg-max of ``Q``, ``hard=True``) or
    the soft marginals ``Q`` (``hard=False``). Reads ``image`` and ``target``.

    Example:
        >>> prop = MeanFieldProposal(lam=0.05, iterations=3)
        >>> batch = {"image": torch.rand(2, 1, 8, 8), "target": torch.full((2, 8, 8), -100)}
        >>> prop(torch.randn(2, 4, 8, 8), batch).shape
        torch.Size([2, 8, 8])
    """

    inputs = ("target", "image")

    def __init__(self, *, lam: float = 0.05, sigma_xy: float = 5.0,
                 sigma_intensity: float = 0.1, spacing: Sequence[float] | None = None,
                 iterations: int = 5, backend: str = "auto", hard: bool = True) -> None:
        super().__init__()
        if not math.isfinite(lam) or lam < 0:
            raise ValueError(f"lam (the CRF weight λ) must be a finite number ≥ 0, got {lam}")
        for name, value in (("sigma_xy", sigma_xy), ("sigma_intensity", sigma_intensity)):
            if not math.isfinite(value) or value <= 0:
                raise ValueError(f"{name} must be a finite number > 0, got {value}")
        if isinstance(iterations, bool) or not isinstance(iterations, int) or iterations < 1:
            raise ValueError(f"iterations must be an integer ≥ 1, got {iterations!r}")
        if backend not in BACKENDS:
            raise ValueError(f"backend must be one of {BACKENDS}, got {backend!r}")
        self.lam = float(lam)
        self.sigma_xy = float(sigma_xy)
        self.sigma_intensity = float(sigma_intensity)
        self.spacing = None if spacing is None else tuple(float(s) for s in spacing)
        self.iterations = iterations
        self.backend = backend
        self.hard = bool(hard)
        self.soft = not self.hard

    @torch.no_grad()
    def forward(self, logits: torch.Tensor, batch: Mapping[str, torch.Tensor]) -> torch.Tensor:
        check_proposal_inputs(logits, batch, self.inputs)
        target = batch["target"]
        q = mean_field(logits, batch["image"], target, lam=self.lam, sigma_xy=self.sigma_xy,
                       sigma_intensity=self.sigma_intensity, spacing=self.spacing,
                       iterations=self.iterations, backend=self.backend)
        if not self.hard:
            return q
        labels = q.argmax(1)
        return torch.where(target != IGNORE_INDEX, target.long(), labels)

    def extra_repr(self) -> str:
        return (f"lam={self.lam:g}, sigma_xy={self.sigma_xy:g}, "
                f"sigma_intensity={self.sigma_intensity:g}, iterations={self.iterations}, "
                f"backend='{self.backend}', hard={self.hard}")
