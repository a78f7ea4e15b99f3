"""Domain-aware training: a labelled source and a target domain, and source-free priors.

A config names its source data set in ``data:`` and, optionally, the domain to adapt to in
``data.target:``; every loss term says which domain's samples it sees (``domain:``):

- ``source`` (the default): the ``data:`` samples — with no target block, all of them;
- ``target``: the ``data.target`` samples (logged as ``<term>_target``);
- ``both``: the source and target samples of a step together.

Each step draws a source batch and a target batch of the same size, each from its own seeded
generator (:func:`stream_seed`), and runs the network once on their concatenation
(:mod:`weakseg.engine.trainer`). Validation and model selection use the target's ``val``
selection when there is a target block.

Source-free adaptation (Bateson et al., MICCAI 2020) needs no target block: the target *is*
``data:``, ``train.init`` names the source run's checkpoint, and ``marginal_prior`` takes
``prior: from_init`` — the class fractions of the source's training labels, stored in every
checkpoint of a run trained on full labels (:func:`class_fractions`) — so no source image
is read while adapting.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import replace
from pathlib import Path
from typing import Any

import torch

from weakseg.data.base import IGNORE_INDEX
from weakseg.engine.checkpoint import load_checkpoint
from weakseg.errors import WeaksegError
from weakseg.losses.recipe import LossTerm
from weakseg.registry import did_you_mean

__all__ = [
    "DOMAINS",
    "INIT_PRIOR",
    "class_fractions",
    "init_prior",
    "init_prior_terms",
    "stream_seed",
    "with_init_prior",
]

#: The values of a loss term's ``domain``.
DOMAINS = ("source", "target", "both")
#: ``marginal_prior`` ``prior`` value that reads the class fractions of ``train.init``.
INIT_PRIOR = "from_init"


def stream_seed(seed: int, stream: str) -> int:
    """A seed for random stream ``stream`` (``"target"``: the target batches) derived from
    an epoch's ``seed``: the source batches keep ``seed`` itself, so runs without a target
    draw exactly what they drew before."""
    salt = sum((i + 1) * ord(c) for i, c in enumerate(stream))
    return (seed * 6_364_136_223_846_793_005 + salt * 1_442_695_040_888_963_407) % 2**63


def class_fractions(targets: torch.Tensor, num_classes: int) -> list[float]:
    """The fraction of each class among the labelled pixels of ``targets`` (int64 maps with
    ``IGNORE_INDEX`` for unlabelled pixels, e.g. ``SliceData.targets``); with full labels,
    the class proportions of the training set on the training grid (canvas padding excluded).

    Example:
        >>> class_fractions(torch.tensor([[0, 0, 1, -100]]), 2)
        [0.6666666666666666, 0.3333333333333333]
    """
    labelled = targets[targets != IGNORE_INDEX]
    if labelled.numel() == 0:
        raise WeaksegError("no labelled pixel to count class fractions from")
    counts = torch.bincount(labelled.flatten(), minlength=num_classes).double()
    return (counts / counts.sum()).tolist()


def init_prior_terms(terms: Sequence[LossTerm]) -> list[int]:
    """Positions of the terms whose ``prior`` is :data:`INIT_PRIOR`; a string ``prior``
    that is not (a typo) is a one-line error."""
    found = []
    for i, term in enumerate(terms):
        prior = term.params.get("prior")
        if prior == INIT_PRIOR:
            found.append(i)
        elif isinstance(prior, str):
            raise WeaksegError(
                f"loss.{i}.params.prior of '{term.name}' must be C numbers summing to 1, "
                f"{{class: proportion}} summing to ≤ 1, or {INIT_PRIOR}, got '{prior}'"
                f"{did_you_mean(prior, [INIT_PRIOR])}")
    return found


def with_init_prior(terms: Sequence[LossTerm], fractions: Sequence[float] | None
                    ) -> list[LossTerm]:
    """``terms`` with every ``prior: from_init`` replaced by ``fractions``; ``None`` drops
    the prior (a placeholder that only lets the config checks build the loss)."""
    out = []
    for i, term in enumerate(terms):
        if i in init_prior_terms(terms):
            params = {k: v for k, v in term.params.items() if k != "prior"}
            if fractions is not None:
                params["prior"] = list(fractions)
            term = replace(term, params=params)
        out.append(term)
    return out


def init_prior(path: str | Path, class_names: Sequence[str]) -> list[float]:
    """The class fractions of the training labels stored in checkpoint ``path``
    (``train.init``), one per class of ``class_names``."""
    ckpt = load_checkpoint(path)
    fractions: Any = ckpt.get("label_fractions")
    if fractions is None:
        annotation = ckpt["config"].get("data", {}).get("annotation", "?")
        raise WeaksegError(
            f"train.init {path} stores no class fractions for prior: {INIT_PRIOR} (they are "
            f"kept for runs trained on full labels; this one used '{annotation}'); give "
            "marginal_prior.params.prior as numbers")
    if list(ckpt["class_names"]) != list(class_names):
        raise WeaksegError(f"train.init {path} has classes {list(ckpt['class_names'])}, this "
                           f"data {list(class_names)}; start from a run on the same classes")
    return [float(v) for v in fractions]
