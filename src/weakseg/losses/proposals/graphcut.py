r"""Graph-cut proposal of ADM (METHODS.md R5): Potts MAP labelling by α-expansion.

For one image with network probabilities :math:`s_p` and weak labels (hard constraints),

.. math::

    y^* = \arg\min_y \; -\sum_p \log s_p(y_p)
          + \lambda \sum_{(p,q) \in \mathcal{N}} w_{pq}\,[y_p \ne y_q]
    \quad\text{s.t. } y_p = t_p \text{ where } t_p \ne \text{ignore},
    \qquad w_{pq} = \frac{\exp(-\lVert I_p - I_q \rVert^2 / 2\sigma^2)}{\lVert p - q \rVert}

on the 8-neighbour grid in 2D (26 in 3D, 2 in 1D), each unordered pair once. Two labels are
solved exactly by one minimum cut. More labels use α-expansion (Boykov, Veksler & Zabih,
PAMI 2001): cycles over the labels, each move an exact minimum cut of the binary problem
"keep your label or switch to α" (submodular because Potts is a metric), accepted only when
it lowers the energy, until a cycle changes nothing (or ``max_cycles``). The result is a
local minimum with respect to every expansion move, hence also to every single-pixel change,
and its energy is at most twice the global minimum (the Potts bound of the paper, since the
unary terms are ≥ 0). Minimum cuts by PyMaxflow (Boykov–Kolmogorov), an optional dependency:
``pip install 'weakseg[graphcut]'``.

Reference:
    Marin, Tang, Ben Ayed & Boykov, "Beyond gradient descent for regularized segmentation
    losses", CVPR 2019. Boykov, Veksler & Zabih, "Fast approximate energy minimization via
    graph cuts", PAMI 2001.
"""

from __future__ import annotations

import itertools
import math
from collections.abc import Mapping

import numpy as np
import torch

from weakseg.errors import WeaksegError
from weakseg.losses.proposals.base import (
    IGNORE_INDEX,
    PROPOSALS,
    ProposalMethod,
    check_proposal_inputs,
)

try:  # optional: pip install 'weakseg[graphcut]'
    import maxflow
except ImportError:  # pragma: no cover - depends on the install
    maxflow = None

__all__ = [
    "GraphCutProposal",
    "alpha_expansion",
    "graphcut_labels",
    "grid_edges",
    "neighbour_offsets",
    "potts_energy",
]

INSTALL_HINT = ("proposal 'graphcut' needs PyMaxflow: pip install 'weakseg[graphcut]' "
                "(or pip install PyMaxflow)")

Edges = tuple[np.ndarray, np.ndarray, np.ndarray]


def neighbour_offsets(dims: int) -> list[tuple[int, ...]]:
    """Half of the full neighbourhood (each unordered pair once): 1 offset in 1D, 4 in 2D
    (8-neighbour), 13 in 3D (26-neighbour)."""
    out = []
    for off in itertools.product((-1, 0, 1), repeat=dims):
        first = next((o for o in off if o != 0), 0)
        if first > 0:  # lexicographically positive
            out.append(off)
    return out


def grid_edges(image: np.ndarray, *, sigma: float) -> Edges:
    """Edges ``(i, j, w)`` of the full grid neighbourhood of one image ``(K, *spatial)``
    (flat pixel indices, C order) with contrast-sensitive weights
    ``exp(-‖I_i − I_j‖² / 2σ²) / ‖i − j‖``."""
    spatial = image.shape[1:]
    index = np.arange(math.prod(spatial)).reshape(spatial)
    img = image.astype(np.float64)
    ii, jj, ww = [], [], []
    for off in neighbour_offsets(len(spatial)):
        src = tuple(slice(max(0, -o), n - max(0, o)) for o, n in zip(off, spatial, strict=True))
        dst = tuple(slice(max(0, o), n - max(0, -o)) for o, n in zip(off, spatial, strict=True))
        diff = ((img[(slice(None), *src)] - img[(slice(None), *dst)]) ** 2).sum(0)
        w = np.exp(-diff / (2.0 * sigma**2)) / math.sqrt(sum(o * o for o in off))
        ii.append(index[src].ravel())
        jj.append(index[dst].ravel())
        ww.append(w.ravel())
    if not ii:
        return np.zeros(0, np.int64), np.zeros(0, np.int64), np.zeros(0)
    return np.concatenate(ii), np.concatenate(jj), np.concatenate(ww)


def potts_energy(unary: np.ndarray, labels: np.ndarray, edges: Edges, lam: float) -> float:
    """``Σ_p unary[y_p, p] + λ Σ_(p,q) w_pq [y_p ≠ y_q]`` for ``unary (C, N)``,
    ``labels (N,)``."""
    i, j, w = edges
    data = float(unary[labels, np.arange(labels.size)].sum())
    return data + lam * float(w[labels[i] != labels[j]].sum())


def _solve(cost0: np.ndarray, cost1: np.ndarray, i: np.ndarray, j: np.ndarray,
           cap: np.ndarray, rcap: np.ndarray) -> np.ndarray:
    """Binary labelling ``x`` minimising ``Σ cost_x + Σ cut edges`` (``cap``: ``i`` at 0 and
    ``j`` at 1; ``rcap``: the reverse); ``x = 1`` is the sink side."""
    n = cost0.size
    g = maxflow.Graph[float](n, i.size)
    nodes = g.add_nodes(n)
    low = np.minimum(cost0, cost1)
    g.add_grid_tedges(np.asarray(nodes), cost1 - low, cost0 - low)
    if i.size:
        g.add_edges(i.astype(np.int32), j.astype(np.int32), cap, rcap)
    g.maxflow()
    return np.asarray(g.get_grid_segments(np.asarray(nodes)), dtype=bool)


def _expansion_move(unary: np.ndarray, labels: np.ndarray, alpha: int, edges: Edges,
                    lam: float) -> np.ndarray:
    """The best labelling among "keep y_p or switch to α" (an exact minimum cut).

    Pixels already at α cannot change: they are left out of the graph, their edges become
    unary terms of their neighbours."""
    i, j, w = edges
    n = labels.size
    pix = np.arange(n)
    cost0 = unary[labels, pix].copy()
    cost1 = unary[alpha, pix].copy()
    lw = lam * w
    a = lw * (labels[i] != labels[j])          # E(0, 0)
    b = lw * (labels[i] != alpha)              # E(0, 1): y_i, α
    c = lw * (alpha != labels[j])              # E(1, 0): α, y_j
    free = labels != alpha
    both = free[i] & free[j]
    only_i, only_j = free[i] & ~free[j], ~free[i] & free[j]
    # both free: E = A + (C − A) x_i − C x_j + (B + C − A)(1 − x_i) x_j   (E(1, 1) = 0)
    cost0 += np.bincount(i[both], weights=a[both], minlength=n)
    cost1 += np.bincount(i[both], weights=c[both], minlength=n)
    cost1 -= np.bincount(j[both], weights=c[both], minlength=n)
    # j at α (x_j = 0 either way): E(x_i) = A or C; i at α: E(x_j) = A or B
    cost0 += np.bincount(i[only_i], weights=a[only_i], minlength=n)
    cost1 += np.bincount(i[only_i], weights=c[only_i], minlength=n)
    cost0 += np.bincount(j[only_j], weights=a[only_j], minlength=n)
    cost1 += np.bincount(j[only_j], weights=b[only_j], minlength=n)
    k = np.maximum(b[both] + c[both] - a[both], 0.0)  # ≥ 0: Potts is a metric
    nodes = np.flatnonzero(free)
    if nodes.size == 0:
        return labels.copy()
    position = np.full(n, -1, dtype=np.int64)
    position[nodes] = np.arange(nodes.size)
    x = _solve(cost0[nodes], cost1[nodes], position[i[both]], position[j[both]], k,
               np.zeros_like(k))
    out = labels.copy()
    out[nodes[x]] = alpha
    return out


def alpha_expansion(unary: np.ndarray, edges: Edges, lam: float, init: np.ndarray, *,
                    max_cycles: int = 5, tol: float = 0.0) -> tuple[np.ndarray, list[float]]:
    """α-expansion from ``init``: returns the labels and the energy after every accepted
    move (starting with the energy of ``init``; non-increasing by construction). Stops after
    a cycle with no accepted move, after ``max_cycles``, or after a cycle that lowered the
    energy by less than the fraction ``tol`` (0: run to the expansion-move local minimum)."""
    labels = init.astype(np.int64).copy()
    energies = [potts_energy(unary, labels, edges, lam)]
    for _ in range(max_cycles):
        changed = False
        start = energies[-1]
        for alpha in range(unary.shape[0]):
            proposal = _expansion_move(unary, labels, alpha, edges, lam)
            energy = potts_energy(unary, proposal, edges, lam)
            if energy < energies[-1] - 1e-9 * max(1.0, abs(energies[-1])):
                labels, changed = proposal, True
                energies.append(energy)
        if not changed or start - energies[-1] < tol * abs(start):
            break
    return labels, energies


def graphcut_labels(log_probs: np.ndarray, image: np.ndarray, target: np.ndarray, *,
                    lam: float, sigma: float, max_cycles: int = 5, tol: float = 0.0,
                    allowed: np.ndarray | None = None,
                    ignore_index: int = IGNORE_INDEX) -> np.ndarray:
    """The proposal of one image: ``log_probs (C, *spatial)``, ``image (K, *spatial)``,
    ``target (*spatial)`` (weak labels or ``ignore_index``) → labels ``(*spatial)``.

    ``allowed``: optional ``(C, *spatial)`` bool, the labels a pixel may take (e.g. a class
    only inside its boxes); like the weak labels, a hard constraint (a weak label wins over
    it)."""
    shape = log_probs.shape[1:]
    c = log_probs.shape[0]
    unary = -log_probs.reshape(c, -1).astype(np.float64)
    flat_t = target.reshape(-1)
    labelled = flat_t != ignore_index
    edges = grid_edges(image, sigma=sigma)
    forbid = np.zeros(unary.shape, dtype=bool)
    if allowed is not None:
        if allowed.shape != log_probs.shape:
            raise ValueError(f"allowed must have the shape (C, *spatial) "
                             f"{log_probs.shape}, got {allowed.shape}")
        forbid |= ~allowed.reshape(c, -1).astype(bool)
    if labelled.any():
        forbid[:, labelled] = True
        forbid[flat_t[labelled], np.flatnonzero(labelled)] = False
    if forbid.any():  # hard constraints: a cost no feasible labelling can pay
        big = 1.0 + float(np.abs(unary).max(0).sum()) + lam * float(edges[2].sum())
        unary = unary + big * forbid
    if c == 2:  # exact: one cut, x = 1 ⇔ label 1
        i, j, w = edges
        x = _solve(unary[0], unary[1], i, j, lam * w, lam * w)
        return x.astype(np.int64).reshape(shape)
    init = unary.argmin(0)
    labels, _ = alpha_expansion(unary, edges, lam, init, max_cycles=max_cycles, tol=tol)
    return labels.reshape(shape)


@PROPOSALS.register("graphcut", help="Potts MAP by graph cuts / alpha-expansion with the weak "
                    "labels as hard constraints (ADM, R5; needs PyMaxflow)")
class GraphCutProposal(ProposalMethod):
    """ADM's discrete proposal: :func:`graphcut_labels` for every image of the batch.

    Args:
        lam: weight λ ≥ 0 of the Potts term (0: the arg-max of the prediction with the weak
            labels imposed).
        sigma: intensity bandwidth σ of the contrast-sensitive weights (image units).
        max_cycles: most α-expansion cycles over the labels (3+ labels).
        tol: stop after a cycle that lowers the energy by less than this fraction (0: run
            to the expansion-move local minimum; the last cycles typically gain < 0.1 %).
        boxes: also read the ``boxes`` prior (``data.priors: [boxes]``): a foreground class
            is allowed only inside its boxes, the background everywhere ("graph cut inside
            the boxes", as GrabCut-style box supervision).

    Reads ``target`` (weak labels, the hard constraints) and ``image`` (and ``boxes``);
    returns hard labels everywhere (it never abstains).

    Example:
        >>> prop = GraphCutProposal(lam=1.0, sigma=0.1)
        >>> logits = torch.randn(2, 3, 8, 8)
        >>> batch = {"image": torch.rand(2, 1, 8, 8), "target": torch.full((2, 8, 8), -100)}
        >>> prop(logits, batch).shape
        torch.Size([2, 8, 8])
    """

    inputs: tuple[str, ...] = ("target", "image")

    def __init__(self, *, lam: float = 1.0, sigma: float = 0.1, max_cycles: int = 5,
                 tol: float = 1e-3, boxes: bool = False) -> None:
        super().__init__()
        if maxflow is None:
            raise WeaksegError(INSTALL_HINT)
        if not math.isfinite(lam) or lam < 0:
            raise ValueError(f"lam (the Potts weight λ) must be a finite number ≥ 0, got {lam}")
        if not math.isfinite(sigma) or sigma <= 0:
            raise ValueError(f"sigma must be a finite number > 0, got {sigma}")
        if isinstance(max_cycles, bool) or not isinstance(max_cycles, int) or max_cycles < 1:
            raise ValueError(f"max_cycles must be an integer ≥ 1, got {max_cycles!r}")
        if not math.isfinite(tol) or tol < 0:
            raise ValueError(f"tol must be a finite number ≥ 0, got {tol}")
        self.lam = float(lam)
        self.sigma = float(sigma)
        self.max_cycles = max_cycles
        self.tol = float(tol)
        if not isinstance(boxes, bool):
            raise ValueError(f"boxes must be true or false, got {boxes!r}")
        self.boxes = boxes
        self.inputs = ("target", "image", "boxes") if boxes else ("target", "image")

    @torch.no_grad()
    def forward(self, logits: torch.Tensor, batch: Mapping[str, torch.Tensor]) -> torch.Tensor:
        check_proposal_inputs(logits, batch, self.inputs)
        log_probs = logits.detach().double().log_softmax(1).cpu().numpy()
        image = batch["image"].detach().double().cpu().numpy()
        target = batch["target"].detach().cpu().numpy()
        allowed = None
        if self.boxes:
            allowed = batch["boxes"].detach().bool().cpu().numpy().copy()
            if allowed.shape != log_probs.shape:
                raise ValueError(f"boxes must have the logits' shape {tuple(logits.shape)}, "
                                 f"got {allowed.shape}")
            allowed[:, 0] = True  # the background has no box: allowed everywhere
        out = [graphcut_labels(log_probs[b], image[b], target[b], lam=self.lam,
                               sigma=self.sigma, max_cycles=self.max_cycles, tol=self.tol,
                               allowed=None if allowed is None else allowed[b])
               for b in range(logits.shape[0])]
        return torch.from_numpy(np.stack(out)).to(device=logits.device, dtype=torch.long)

    def extra_repr(self) -> str:
        return (f"lam={self.lam:g}, sigma={self.sigma:g}, max_cycles={self.max_cycles}, "
                f"tol={self.tol:g}, boxes={self.boxes}")
