"""Pseudo-masks from class activation maps (METHODS.md C13).

A classifier trained from image tags (``unet2d_cam`` + loss ``tag_bce``) localises each
class by its class activation map (Zhou et al., CVPR 2016). The CAMs, normalised to
``[0, 1]`` per image and class, become a pseudo-mask:

* **threshold** (:func:`threshold_cams`): a pixel takes the present class of highest CAM if
  that CAM exceeds ``threshold`` (e.g. 0.3), else the background; classes absent per the
  tags are off everywhere;
* **size** (:func:`refine_size`): CAMs cover only the most discriminative part of an
  object, or spill over (Wei et al., CVPR 2017), so each present class is cut to its
  ``max`` highest-CAM pixels, or grown by the highest-CAM background pixels to its ``min``,
  with the ``(min, max)`` of ``bounds_from_tags`` (the class's smallest and largest size
  over the training masks);
* **crf** / **graphcut** (:func:`refine_crf`, :func:`refine_graphcut`): the dense CRF
  mean-field or the Potts graph cut of :mod:`weakseg.losses.proposals` with the CAM as
  unary (:func:`cam_logits`: ``log s`` with ``s_0 = threshold`` for the background and
  ``s_c = CAM_c`` for the present classes, so the arg-max of the unary alone is exactly the
  thresholded mask), absent classes forbidden; ``size+crf`` / ``size+graphcut`` cut / grow
  the CRF's mask to the size bounds afterwards.

:func:`cam_estimates` runs a CAM checkpoint over the training slices of a config and writes
the masks into an estimates file (:mod:`weakseg.data.estimates`, keyed by slice like
``weakseg estimate-priors``; its ``fractions`` / ``cell_fractions`` are the class fractions
of the masks), which segmentation training reads with ``data.priors: [estimated_masks]`` and
the loss ``pseudo_ce``.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any, cast

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from weakseg.errors import WeaksegError
from weakseg.labels import IGNORE_INDEX

__all__ = [
    "DEFAULT_THRESHOLD",
    "REFINEMENTS",
    "CamResult",
    "cam_estimates",
    "cam_logits",
    "pooled_dice",
    "check_threshold",
    "compute_cams",
    "pseudo_masks",
    "refine_crf",
    "refine_graphcut",
    "refine_size",
    "threshold_cams",
]

DEFAULT_THRESHOLD = 0.3
#: ``--refine`` choices: the base mask (threshold, dense CRF or graph cut), optionally cut /
#: grown to the size bounds.
REFINEMENTS = ("none", "size", "crf", "graphcut", "size+crf", "size+graphcut")
_FLOOR = 1e-4  # score of an absent class / a zero CAM in the unary (log 1e-4 ≈ -9.2)


def check_threshold(threshold: float) -> float:
    """``threshold`` as a float in ``(0, 1)``; a one-line error otherwise."""
    if isinstance(threshold, bool) or not isinstance(threshold, (int, float)) or not (
            math.isfinite(threshold) and 0.0 < threshold < 1.0):
        raise WeaksegError(f"CAM threshold must be a number in (0, 1) (CAMs are normalised to "
                           f"[0, 1]), got {threshold!r}")
    return float(threshold)


def _check(cams: torch.Tensor, tags: torch.Tensor | None) -> torch.Tensor:
    """The present-class mask ``(B, C)`` (all classes without tags)."""
    if cams.ndim != 4 or cams.shape[1] < 2:
        raise WeaksegError(f"CAMs must be (B, C, H, W) with C ≥ 2 (background + classes), got "
                           f"{tuple(cams.shape)}")
    if tags is None:
        return torch.ones(cams.shape[:2], dtype=torch.bool, device=cams.device)
    if tuple(tags.shape) != tuple(cams.shape[:2]):
        raise WeaksegError(f"tags {tuple(tags.shape)} do not match CAMs {tuple(cams.shape)}; "
                           "expected (B, C)")
    return tags.bool()


def cam_logits(cams: torch.Tensor, tags: torch.Tensor | None = None, *,
               threshold: float = DEFAULT_THRESHOLD) -> torch.Tensor:
    """Unary logits ``(B, C, H, W)`` from CAMs: ``log max(s, 1e-4)`` with ``s_0 = threshold``
    and ``s_c = CAM_c`` for present classes, ``0`` for absent ones.

    Example:
        >>> cams = torch.tensor([0.0, 0.9, 0.5]).view(1, 3, 1, 1)
        >>> cam_logits(cams, threshold=0.3).argmax(1).item()
        1
    """
    threshold = check_threshold(threshold)
    present = _check(cams, tags)
    scores = torch.where(present[:, :, None, None], cams, torch.zeros_like(cams))
    scores = scores.clone()
    scores[:, 0] = threshold
    return scores.clamp_min(_FLOOR).log()


def threshold_cams(cams: torch.Tensor, tags: torch.Tensor | None = None, *,
                   threshold: float = DEFAULT_THRESHOLD) -> torch.Tensor:
    """Pseudo-mask ``(B, H, W)`` int64: the present class of highest CAM where it exceeds
    ``threshold``, the background elsewhere (class 0 of ``cams`` is not read).

    Args:
        cams: ``(B, C, H, W)`` in ``[0, 1]`` (class 0 the background).
        tags: optional ``(B, C)`` bool; absent classes are never assigned.
        threshold: in ``(0, 1)``.

    Example:
        >>> cams = torch.zeros(1, 3, 1, 3); cams[0, 1] = torch.tensor([0.2, 0.8, 0.8])
        >>> cams[0, 2, 0, 2] = 0.9
        >>> threshold_cams(cams).tolist()
        [[[0, 1, 2]]]
        >>> threshold_cams(cams, torch.tensor([[True, True, False]])).tolist()
        [[[0, 1, 1]]]
    """
    threshold = check_threshold(threshold)
    present = _check(cams, tags)
    fg = torch.where(present[:, 1:, None, None], cams[:, 1:], torch.full_like(cams[:, 1:], -1))
    best, arg = fg.max(1)
    return torch.where(best > threshold, arg + 1, torch.zeros_like(arg)).long()


def refine_size(labels: torch.Tensor, cams: torch.Tensor, bounds: torch.Tensor) -> torch.Tensor:
    """Cut or grow every foreground class of ``labels`` to its size bounds, by CAM rank.

    First, a class with more than ``max`` pixels keeps its ``floor(max)`` highest-CAM pixels
    (the rest become background); then one with fewer than ``min`` takes the
    ``ceil(min) - n`` highest-CAM background pixels (a class grows only into background, and
    only onto pixels where its CAM is positive: a class its CAM does not see stays small).
    The background's bounds are not read; infinite bounds leave a class alone. Returns a new
    tensor.

    Args:
        labels: ``(B, H, W)`` int64 (e.g. :func:`threshold_cams`).
        cams: ``(B, C, H, W)``.
        bounds: ``(B, C, 2)`` sizes in pixels (``bounds_from_tags``: ``(0, 0)`` if absent).

    Example:
        >>> cams = torch.zeros(1, 2, 1, 4); cams[0, 1] = torch.tensor([0.1, 0.9, 0.6, 0.4])
        >>> labels = torch.tensor([[[1, 1, 1, 1]]])
        >>> refine_size(labels, cams, torch.tensor([[[0.0, 16.0], [1.0, 2.0]]])).tolist()
        [[[0, 1, 1, 0]]]
    """
    if labels.ndim != 3 or cams.shape[:1] + cams.shape[2:] != labels.shape:
        raise WeaksegError(f"labels {tuple(labels.shape)} do not match CAMs "
                           f"{tuple(cams.shape)}; expected (B, H, W)")
    if tuple(bounds.shape) != (*cams.shape[:2], 2):
        raise WeaksegError(f"size bounds {tuple(bounds.shape)} do not match CAMs "
                           f"{tuple(cams.shape)}; expected (B, C, 2)")
    out = labels.clone()
    for b in range(labels.shape[0]):
        flat = out[b].view(-1)
        for c in range(1, cams.shape[1]):          # first cut every class to its maximum,
            hi = float(bounds[b, c, 1])
            score = cams[b, c].reshape(-1)
            mine = flat == c
            n = int(mine.sum())
            if math.isfinite(hi) and n > hi:
                ranked = torch.where(mine, score, torch.full_like(score, -math.inf))
                flat[ranked.argsort(descending=True)[max(int(math.floor(hi)), 0):n]] = 0
        for c in range(1, cams.shape[1]):          # then grow into the freed background
            lo = float(bounds[b, c, 0])
            score = cams[b, c].reshape(-1)
            n = int((flat == c).sum())
            if math.isfinite(lo) and n < math.ceil(lo):
                free = (flat == 0) & (score > 0)   # never onto pixels its CAM calls empty
                grow = min(int(math.ceil(lo)) - n, int(free.sum()))
                ranked = torch.where(free, score, torch.full_like(score, -math.inf))
                flat[ranked.argsort(descending=True)[:grow]] = c
    return out


def _allowed(present: torch.Tensor, shape: torch.Size) -> torch.Tensor:
    allowed = present.clone()
    allowed[:, 0] = True
    return allowed[:, :, None, None].expand(*present.shape, *shape[2:])


def refine_crf(cams: torch.Tensor, image: torch.Tensor, tags: torch.Tensor | None = None, *,
               threshold: float = DEFAULT_THRESHOLD, **crf: Any) -> torch.Tensor:
    """Dense CRF mean-field (:func:`weakseg.losses.proposals.meanfield.mean_field`) with the
    CAM unary :func:`cam_logits`; the arg-max over the allowed classes ``(B, H, W)``.
    ``crf``: ``lam``, ``sigma_xy``, ``sigma_intensity``, ``iterations``, ``backend``."""
    from weakseg.losses.proposals.meanfield import mean_field

    present = _check(cams, tags)
    q = mean_field(cam_logits(cams, tags, threshold=threshold), image, None, **crf)
    q = torch.where(_allowed(present, cams.shape), q, torch.full_like(q, -1.0))
    return q.argmax(1).long()


def refine_graphcut(cams: torch.Tensor, image: torch.Tensor, tags: torch.Tensor | None = None,
                    *, threshold: float = DEFAULT_THRESHOLD, lam: float = 1.0,
                    sigma: float = 0.1, max_cycles: int = 5, tol: float = 1e-3) -> torch.Tensor:
    """Potts MAP by graph cut (:func:`weakseg.losses.proposals.graphcut.graphcut_labels`,
    needs PyMaxflow) with the CAM unary, absent classes forbidden: ``(B, H, W)``."""
    from weakseg.losses.proposals.graphcut import INSTALL_HINT, graphcut_labels, maxflow

    if maxflow is None:
        raise WeaksegError(INSTALL_HINT)
    present = _check(cams, tags)
    log_probs = cam_logits(cams, tags, threshold=threshold).double().log_softmax(1)
    lp = log_probs.cpu().numpy()
    img = image.detach().double().cpu().numpy()
    allowed = _allowed(present, cams.shape).cpu().numpy()
    none = np.full(cams.shape[2:], IGNORE_INDEX, dtype=np.int64)
    out = [graphcut_labels(lp[b], img[b], none, lam=lam, sigma=sigma, max_cycles=max_cycles,
                           tol=tol, allowed=allowed[b]) for b in range(cams.shape[0])]
    return torch.from_numpy(np.stack(out)).long().to(cams.device)


def pseudo_masks(cams: torch.Tensor, *, tags: torch.Tensor | None = None,
                 threshold: float = DEFAULT_THRESHOLD, refine: str = "none",
                 image: torch.Tensor | None = None, bounds: torch.Tensor | None = None,
                 crf: dict[str, Any] | None = None,
                 graphcut: dict[str, Any] | None = None) -> torch.Tensor:
    """The pseudo-mask ``(B, H, W)`` int64 of ``cams`` with the refinement ``refine``
    (one of :data:`REFINEMENTS`); ``image`` is needed by ``crf`` / ``graphcut``, ``bounds``
    ``(B, C, 2)`` by ``size``. Inputs are not modified."""
    if refine not in REFINEMENTS:
        raise WeaksegError(f"unknown CAM refinement {refine!r}; allowed: "
                           f"{', '.join(REFINEMENTS)}")
    base = refine.removeprefix("size+").removeprefix("size")
    if base in ("crf", "graphcut") and image is None:
        raise WeaksegError(f"CAM refinement '{refine}' needs the images")
    if "size" in refine and bounds is None:
        raise WeaksegError(f"CAM refinement '{refine}' needs size bounds (bounds_from_tags)")
    if base == "crf":
        labels = refine_crf(cams, cast(torch.Tensor, image), tags, threshold=threshold,
                            **(crf or {}))
    elif base == "graphcut":
        labels = refine_graphcut(cams, cast(torch.Tensor, image), tags, threshold=threshold,
                                 **(graphcut or {}))
    else:
        labels = threshold_cams(cams, tags, threshold=threshold)
    if "size" in refine:
        labels = refine_size(labels, cams, cast(torch.Tensor, bounds))
    return labels


@torch.no_grad()
def compute_cams(model: nn.Module, images: torch.Tensor, *, batch_size: int = 16,
                 device: torch.device | str = "cpu") -> torch.Tensor:
    """CAMs ``(N, C, S, S)`` float32 on the CPU of a CAM model (``model.cam``) on ``images``
    ``(N, K, S, S)``, in eval mode (the model's mode is restored)."""
    cam = getattr(model, "cam", None)
    if not callable(cam):
        raise WeaksegError(f"{type(model).__name__} computes no class activation maps; train "
                           "a CAM classifier (model.name: unet2d_cam, loss tag_bce)")
    was_training = model.training
    model.eval()
    try:
        out = [cam(images[i:i + batch_size].to(device)).float().cpu()
               for i in range(0, len(images), batch_size)]
    finally:
        model.train(was_training)
    return torch.cat(out)


@dataclass(frozen=True)
class CamResult:
    """What :func:`cam_estimates` computed: the estimates file's content and, with
    ``plot``, the validation slices' images, CAMs, masks and ground truth."""

    estimates: Any  # weakseg.data.estimates.Estimates
    plot: dict[str, Any] | None = None


def pooled_dice(masks: torch.Tensor, truth: torch.Tensor, num_classes: int) -> np.ndarray:
    """Per-class Dice ``2|M∩T| / (|M| + |T|)`` of label maps ``masks`` against ``truth``
    (same shape), pooled over all pixels of all slices; pixels where either is negative
    (abstained / unlabelled) are left out; NaN for a class absent from both.

    Example:
        >>> pooled_dice(torch.tensor([[0, 1, 1]]), torch.tensor([[0, 1, 0]]), 2).round(3)
        array([0.667, 0.667])
    """
    keep = (masks >= 0) & (truth >= 0)
    m = masks[keep].long()
    t = truth[keep].long()
    out = np.full(num_classes, np.nan)
    for c in range(num_classes):
        denom = int((m == c).sum() + (t == c).sum())
        if denom:
            out[c] = 2.0 * int(((m == c) & (t == c)).sum()) / denom
    return out


def _grid(size: int) -> int:
    return next(g for g in (4, 2, 1) if size % g == 0)


def cam_estimates(
    checkpoint: str | Path,
    cfg: Any,
    *,
    threshold: float = DEFAULT_THRESHOLD,
    refine: str = "none",
    crf: dict[str, Any] | None = None,
    graphcut: dict[str, Any] | None = None,
    plot_slices: int = 0,
    batch_size: int = 16,
    device: torch.device | str = "cpu",
) -> CamResult:
    """CAM pseudo-masks of every training slice of the config ``cfg`` (``data.train``, on
    its ``data.size`` / ``data.spacing`` grid, the checkpoint's normalisation) from the CAM
    classifier ``checkpoint``, as an :class:`~weakseg.data.estimates.Estimates` with
    ``masks``. The tags (and, for ``size``, the bounds of ``bounds_from_tags``) are the
    config's ``data.priors`` ones, simulated from the full masks as training does. With
    ``plot_slices``, the first validation slices (``data.val``) that show a foreground
    class are kept for :func:`weakseg.report.cam.plot_cams` (their ground truth is read
    for the picture only). The masks' Dice against the training slices' full label maps
    (which the tags are simulated from) is stored as ``mask_dice``, a diagnostic that never
    reaches training.

    Raises:
        WeaksegError: the checkpoint is not a CAM model; ``data.priors`` lacks ``tags``;
            bad threshold or refinement; classes or spacing differ; nothing selected.
    """
    from weakseg.adapt.curriculum import _spacing
    from weakseg.data import DATASETS
    from weakseg.data.estimates import Estimates
    from weakseg.data.intensity import Normalization
    from weakseg.data.slices import build_slices
    from weakseg.data.splits import select_groups
    from weakseg.engine.trainer import load_model_from_checkpoint
    from weakseg.losses.distribution import region_fractions

    threshold = check_threshold(threshold)
    if refine not in REFINEMENTS:
        raise WeaksegError(f"unknown CAM refinement {refine!r}; allowed: "
                           f"{', '.join(REFINEMENTS)}")
    if "tags" not in cfg.data.priors:
        raise WeaksegError("CAM pseudo-masks need image tags (absent classes are forced off): "
                           f"data.priors of the config lists {list(cfg.data.priors)}; add tags")
    model, ckpt = load_model_from_checkpoint(checkpoint)
    if not callable(getattr(model, "cam", None)):
        raise WeaksegError(f"checkpoint {checkpoint} is a {ckpt['config']['model']['name']} "
                           "model, not a CAM classifier; train one with model.name: "
                           "unet2d_cam and loss tag_bce (configs/acdc_tags_cam.yaml)")
    spacing = _spacing(cfg, ckpt.get("spacing"), checkpoint)
    d = cfg.data
    params = dict(d.params)
    if d.root is not None:
        params["root"] = d.root
    dataset = DATASETS.build(cast(str, d.name), **params)
    names = list(ckpt["class_names"])
    if list(dataset.class_names) != names or dataset.in_channels != int(ckpt["in_channels"]):
        raise WeaksegError(
            f"checkpoint {checkpoint} classifies {names} from {ckpt['in_channels']} channel(s), "
            f"but data ({d.name}) has {list(dataset.class_names)} and {dataset.in_channels}")
    volumes = select_groups(dataset.volumes, d.train)
    if not volumes:
        raise WeaksegError(f"data.train={d.train!r} selects no volume of {d.name}")
    norm = Normalization.from_dict(ckpt.get("normalization"))
    wanted = ["tags", "bounds_from_tags"] if "size" in refine else ["tags"]
    # the full label maps (tags need them anyway) also score the masks: a diagnostic only
    slices = build_slices(volumes, annotation="full", num_classes=len(names), size=d.size,
                          spacing=spacing, norm=norm, priors=wanted)
    model.to(device)
    cams = compute_cams(model, slices.images, batch_size=batch_size, device=device)
    tags = slices.extras["tags"]
    bounds = slices.extras.get("bounds")
    opts: dict[str, Any] = {"threshold": threshold, "refine": refine, "crf": crf,
                            "graphcut": graphcut}
    masks = pseudo_masks(cams, tags=tags, image=slices.images, bounds=bounds, **opts)
    onehot = F.one_hot(masks, len(names)).movedim(-1, 1).float()
    g = _grid(d.size)
    method = (f"CAM pseudo-masks of a tag classifier, threshold {threshold:g}, refinement "
              f"{refine}")
    est = Estimates(keys=list(slices.keys), index=list(slices.index),
                    fractions=onehot.mean(dim=(2, 3)).numpy(),
                    cell_fractions=region_fractions(onehot, (g, g)).numpy(),
                    class_names=names, size=d.size, spacing=spacing, method=method,
                    source=str(checkpoint), masks=masks.numpy().astype(np.int16),
                    mask_dice=pooled_dice(masks, slices.targets, len(names)))
    picture = None
    if plot_slices > 0:
        picture = _plot_data(model, cfg, dataset, names, spacing, norm, bounds, opts,
                             plot_slices, batch_size, device)
    return CamResult(est, picture)


def _plot_data(model: nn.Module, cfg: Any, dataset: Any, names: list[str],
               spacing: tuple[float, float] | None, norm: Any, bounds: torch.Tensor | None,
               opts: dict[str, Any], count: int, batch_size: int,
               device: torch.device | str) -> dict[str, Any]:
    """Images, CAMs, thresholded and refined masks and ground truth of the first ``count``
    validation slices with a foreground class (size bounds: the training statistic)."""
    from weakseg.data.slices import build_slices
    from weakseg.data.splits import select_groups

    d = cfg.data
    if not d.val:
        raise WeaksegError("--plot shows validation slices, but data.val is unset")
    volumes = [v for v in select_groups(dataset.volumes, d.val) if v.label is not None]
    if not volumes:
        raise WeaksegError(f"--plot: data.val={d.val!r} selects no volume with a label map")
    val = build_slices(volumes, annotation="full", num_classes=len(names), size=d.size,
                       spacing=spacing, norm=norm, priors=["tags"])
    tags = val.extras["tags"]
    rows = torch.nonzero(tags[:, 1:].any(1)).view(-1)
    rows = rows[torch.linspace(0, len(rows) - 1, min(count, len(rows))).round().long()] \
        if len(rows) else rows
    images, tags, truth = val.images[rows], tags[rows], val.targets[rows]
    cams = compute_cams(model, images, batch_size=batch_size, device=device)
    val_bounds = None
    if bounds is not None:  # one (min, max) per class over the training slices
        per_class = bounds.amax(0)
        val_bounds = torch.where(tags[..., None], per_class, torch.zeros_like(per_class))
    refined = pseudo_masks(cams, tags=tags, image=images, bounds=val_bounds, **opts)
    plain = threshold_cams(cams, tags, threshold=opts["threshold"])
    titles = [f"{val.keys[int(r)]} z{val.index[int(r)]}" for r in rows]
    return {"images": images, "cams": cams, "tags": tags, "threshold": plain,
            "refined": refined, "truth": truth, "titles": titles, "class_names": names,
            "refine": opts["refine"]}
