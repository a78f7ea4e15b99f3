"""Partially labelled data: simulated sites that each label other structures (METHODS.md C8).

Multi-organ data often come from several data sets ("sites") that each annotate a subset of
the structures: a pancreas data set marks the pancreas and calls everything else background
(Zhou et al., ICCV 2019). ``sim:partial_sites`` simulates this from full label maps:

* ``sites`` lists, per site, the structures it labels (class names or indices, e.g.
  ``[[LV], [RV, Myo], [Myo]]``); the background is never listed (every site has one).
* Each patient belongs to one site, chosen from its **group id** (the patient, so both
  frames of an ACDC patient share a site) and the data's ``annotation_seed``:
  ``site = int(sha256("<annotation_seed>:<group>").hexdigest()[:16], 16) mod len(sites)``
  (:func:`site_of`). The rule needs no list of the other patients (selecting more patients
  moves none), gives the same answer on every machine and Python version, and spreads the
  patients over the sites like a fair draw (not exactly evenly).
* The label map keeps the structures of the patient's site and sets **everything else to
  0**: label 0 means "background *or* a structure this site does not label", the
  ambiguity a partially labelled data set really has. No pixel is ``IGNORE_INDEX``.
* What a label 0 may hide travels as a per-volume batch entry (:data:`VOLUME_ENTRIES`):
  ``labelled_classes`` ``(C,)`` bool, True for the background and the site's structures
  (every slice of the volume carries it, as ``tags`` travel with their slice; a batch
  holds ``(B, C)``). The losses read it: :func:`~weakseg.losses.marginal.marginal_cross_entropy`
  merges the unlabelled classes into the background; the ``class_fraction`` constraint
  (:mod:`weakseg.constrain.fractions`) constrains their predicted fractions.

With ``partial_ce`` on this label map an unlabelled structure is trained as background (the
*naive* baseline).

Example:
    >>> import numpy as np
    >>> label = np.array([[0, 1, 2, 3]])
    >>> simulate_partial_sites(label, num_classes=4, seed=0, sites=[[3], [1, 2]],
    ...                        group="patient021").tolist()   # site of patient021: 1
    [[0, 1, 2, 0]]
    >>> site_of("patient021", 2, seed=0)
    1

Reference:
    Zhou et al., "Prior-aware neural network for partially-supervised multi-organ
    segmentation", ICCV 2019.
"""

from __future__ import annotations

import hashlib
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np

from weakseg.annotate.base import (
    ANNOTATORS,
    PARAM_CHECKS,
    VOLUME_ENTRIES,
    check_label_map,
    is_int,
)
from weakseg.errors import WeaksegError
from weakseg.registry import did_you_mean

__all__ = [
    "check_sites",
    "labelled_classes",
    "partial_sites_entries",
    "resolve_sites",
    "simulate_partial_sites",
    "site_of",
]

_NAME = "partial_sites"
_EXAMPLE = "e.g. sites: [[LV], [RV, Myo], [Myo]]"


def site_of(group: str, num_sites: int, seed: int = 0) -> int:
    """The site (``0 .. num_sites - 1``) of patient ``group`` for annotation seed ``seed``:
    the first 16 hex digits of ``sha256("<seed>:<group>")`` modulo ``num_sites``.

    Example:
        >>> [site_of(f"patient{i:03d}", 3) for i in (21, 22, 23)]
        [0, 1, 0]
    """
    if not is_int(num_sites) or num_sites < 1:
        raise WeaksegError(f"the number of sites must be an integer >= 1, got {num_sites!r}")
    digest = hashlib.sha256(f"{int(seed)}:{group}".encode()).hexdigest()
    return int(digest[:16], 16) % int(num_sites)


def check_sites(sites: object, where: str = f"annotator '{_NAME}'") -> None:
    """The checks of ``sites`` that need no data: a non-empty list of non-empty lists of
    class names or indices ≥ 1, none listed twice in a site (indices beyond the classes and
    unknown names are found by :func:`resolve_sites`)."""
    if isinstance(sites, (str, bytes)) or not isinstance(sites, Sequence) or not sites:
        raise WeaksegError(f"{where}: sites must be a non-empty list of sites, each a list of "
                           f"the structures it labels ({_EXAMPLE}); got {sites!r}")
    for k, site in enumerate(sites):
        if isinstance(site, (str, bytes)) or not isinstance(site, Sequence):
            raise WeaksegError(f"{where}: site {k} must be a list of structures (names or "
                               f"indices), got {site!r}; {_EXAMPLE}")
        if not site:
            raise WeaksegError(f"{where}: site {k} is empty; a site labels at least one "
                               f"structure ({_EXAMPLE})")
        for ref in site:
            if isinstance(ref, bool) or not isinstance(ref, (str, int, np.integer)):
                raise WeaksegError(f"{where}: site {k} lists {ref!r}; a structure is a class "
                                   "name or index")
            if is_int(ref) and int(ref) <= 0:
                raise WeaksegError(
                    f"{where}: site {k} lists class {int(ref)}; "
                    + ("class 0 is the background, which every site has: list only the "
                       "structures it labels" if int(ref) == 0 else "indices are >= 1"))
        seen = [str(r) for r in site]
        repeated = sorted({r for r in seen if seen.count(r) > 1})
        if repeated:
            raise WeaksegError(f"{where}: site {k} lists {', '.join(repeated)} twice")


def resolve_sites(
    sites: Sequence[Sequence[int | str]], *, num_classes: int,
    class_names: Sequence[str] | None = None, where: str = f"annotator '{_NAME}'",
) -> list[list[int]]:
    """``sites`` with every structure as a class index (``1 .. num_classes - 1``).

    Names need ``class_names``; an unknown name says which classes exist (with a
    did-you-mean), the background (class 0, by name or index) is refused.
    """
    check_sites(sites, where)
    names = None if class_names is None else [str(n) for n in class_names]
    out = []
    for k, site in enumerate(sites):
        indices = []
        for ref in site:
            if isinstance(ref, str):
                if names is None:
                    raise WeaksegError(f"{where}: site {k} names class '{ref}' but the class "
                                       "names are unknown; give class indices")
                if ref not in names:
                    same = [n for n in names if n.lower() == ref.lower()]
                    hint = f" (did you mean '{same[0]}'?)" if same else did_you_mean(ref, names)
                    raise WeaksegError(f"{where}: site {k} names class '{ref}', which the data "
                                       f"does not have{hint}; classes: {', '.join(names)}")
                index = names.index(ref)
            else:
                index = int(ref)
                if index >= num_classes:
                    raise WeaksegError(f"{where}: site {k} lists class {index}, outside "
                                       f"1..{num_classes - 1}")
            if index == 0:
                raise WeaksegError(f"{where}: site {k} lists the background ('{ref}'), which "
                                   "every site has; list only the structures it labels")
            if index in indices:
                raise WeaksegError(f"{where}: site {k} lists class {index} ('{ref}') twice")
            indices.append(index)
        out.append(sorted(indices))
    return out


def labelled_classes(
    group: str, *, sites: Sequence[Sequence[int | str]], num_classes: int,
    annotation_seed: int = 0, class_names: Sequence[str] | None = None,
) -> np.ndarray:
    """``(C,)`` bool: the classes the site of patient ``group`` labels, background included.

    Example:
        >>> labelled_classes("patient021", sites=[[3], [1, 2]], num_classes=4).tolist()
        [True, True, True, False]
    """
    resolved = resolve_sites(sites, num_classes=num_classes, class_names=class_names)
    out = np.zeros(num_classes, dtype=bool)
    out[0] = True
    out[resolved[site_of(group, len(resolved), annotation_seed)]] = True
    return out


def _group(group: str | None) -> str:
    if group is None:
        raise WeaksegError(f"annotator '{_NAME}' needs the group (patient) id of the volume "
                           "(group=...) to choose its site")
    return str(group)


@ANNOTATORS.register(_NAME, help="partial labels: sites that each label some structures, "
                     "the rest = 0 (C8); the site of a patient from its group id and the seed")
def simulate_partial_sites(
    label: np.ndarray,
    *,
    num_classes: int,
    seed: int,
    sites: Sequence[Sequence[int | str]],
    group: str | None = None,
    annotation_seed: int = 0,
    class_names: Sequence[str] | None = None,
) -> np.ndarray:
    """The label map a patient's site would give: its structures kept, the rest 0.

    Args:
        label: full label map ``(Z, H, W)`` or ``(H, W)``, values in ``0 .. C-1``.
        num_classes: ``C``, class 0 = background.
        seed: the per-volume seed (unused: the site is a function of ``group`` and
            ``annotation_seed``, so that every volume of a patient gets the same site).
        sites: the structures each site labels, by class name or index.
        group: the patient id (filled by the reader, never by a config).
        annotation_seed: the data's seed (filled by the reader).
        class_names: the data set's classes, for sites given by name (filled by the reader).

    Returns:
        int64 map of ``label``'s shape: the site's classes where ``label`` has them, else 0.
        ``label`` is not modified.
    """
    where = f"annotator '{_NAME}'"
    labels, squeeze = check_label_map(label, num_classes, where)
    keep = labelled_classes(_group(group), sites=sites, num_classes=num_classes,
                            annotation_seed=annotation_seed, class_names=class_names)
    out = np.where(keep[labels], labels, 0).astype(np.int64)
    return out[0] if squeeze else out


def partial_sites_entries(
    label: np.ndarray,
    *,
    num_classes: int,
    seed: int,
    sites: Sequence[Sequence[int | str]],
    group: str | None = None,
    annotation_seed: int = 0,
    class_names: Sequence[str] | None = None,
) -> dict[str, np.ndarray]:
    """The per-volume batch entries of ``partial_sites``: ``labelled_classes`` ``(C,)`` bool
    (same arguments as :func:`simulate_partial_sites`)."""
    return {"labelled_classes": labelled_classes(
        _group(group), sites=sites, num_classes=num_classes,
        annotation_seed=annotation_seed, class_names=class_names)}


def _check_params(params: Mapping[str, Any], where: str) -> None:
    if "sites" not in params:
        raise WeaksegError(f"{where}: needs sites, the structures each site labels ({_EXAMPLE})")
    check_sites(params["sites"], where)


VOLUME_ENTRIES[_NAME] = partial_sites_entries
PARAM_CHECKS[_NAME] = _check_params
