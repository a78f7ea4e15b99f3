"""CAM pseudo-masks from image tags (C13): the classifier (shapes, pooling identity,
localisation on the phantom), the tag BCE and pseudo-mask CE losses, thresholding and
refinement on hand-built maps, the estimates file with masks, the estimated_masks prior, the
whole path on the phantom (classifier run → weakseg cam → segmentation run), one-line errors
and inputs left unmodified."""

from __future__ import annotations

import dataclasses
import math
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F
import yaml

from weakseg.cli import main
from weakseg.config import config_from_dict
from weakseg.data import DATASETS
from weakseg.data.estimates import Estimates, estimated_entries, load_estimates, save_estimates
from weakseg.data.priors import ESTIMATED_PRIORS, PRIOR_KEYS, SPATIAL_EXTRAS
from weakseg.engine.trainer import train
from weakseg.errors import WeaksegError
from weakseg.losses import LOSSES, PseudoMaskCrossEntropyLoss, TagBCELoss, tag_bce_loss
from weakseg.losses.partial import partial_cross_entropy
from weakseg.models import MODELS, UNetCAM
from weakseg.pseudo.cam import (
    cam_estimates,
    cam_logits,
    check_threshold,
    compute_cams,
    pseudo_masks,
    refine_crf,
    refine_graphcut,
    refine_size,
    threshold_cams,
)
from weakseg.report.cam import plot_cams

from .conftest import tiny_config

pytestmark = pytest.mark.usefixtures("one_thread")


def _quiet(line: str) -> None:
    pass


# ------------------------------------------------------------------------------ the model


def test_model_shapes_pooling_and_cam_range():
    torch.manual_seed(0)
    net = MODELS.build("unet2d_cam", in_channels=2, num_classes=3, base_channels=4, depth=2)
    assert isinstance(net, UNetCAM)
    net.eval()
    x = torch.rand(2, 2, 16, 16)
    maps = net(x)
    assert maps.shape == (2, 3, 16, 16)
    # the classifier's logit is the spatial mean of the class map (GAP + linear commute)
    assert torch.allclose(net.classify(x), maps.mean((2, 3)))
    feats = F.interpolate(net.features(x), size=(16, 16), mode="bilinear", align_corners=False)
    assert torch.allclose(net.classify(x), net.classifier(feats.mean((2, 3))), atol=1e-5)
    cams = net.cam(x)
    assert cams.shape == (2, 3, 16, 16) and cams.min() >= 0 and cams.max() <= 1
    peak = cams.amax((2, 3))
    assert torch.all((peak == 0) | torch.isclose(peak, torch.ones(())))
    with pytest.raises(ValueError, match="2D model"):
        UNetCAM(spatial_dims=3)


def _phantom_tags(seed: int, volumes: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Phantom slices (32²) with RV or LV removed at random (their pixels refilled with
    background / myocardium pixels of the same slice, so no flat patch gives them away),
    rolled by up to ±8 pixels (the heart is not always central): images, labels, tags."""
    vset = DATASETS.build("phantom", num_volumes=volumes, size=32, slices=4, seed=seed)
    gen = np.random.default_rng(seed)
    images, labels = [], []
    for vol in vset.volumes:
        for z in range(vol.image.shape[0]):
            img, lab = vol.image[z].copy(), vol.label[z].astype(np.int64)
            drop = gen.integers(0, 3)                  # 0: keep, 1: drop RV, 2: drop LV
            if drop == 1:
                img[lab == 1] = gen.choice(img[lab == 0], int((lab == 1).sum()))
                lab = np.where(lab == 1, 0, lab)
            elif drop == 2:
                img[lab == 3] = gen.choice(img[lab == 2], int((lab == 3).sum()))
                lab = np.where(lab == 3, 2, lab)
            shift = tuple(int(s) for s in gen.integers(-8, 9, 2))
            images.append(np.roll(img, shift, (0, 1)))
            labels.append(np.roll(lab, shift, (0, 1)))
    x = torch.from_numpy(np.stack(images))[:, None].float()
    y = torch.from_numpy(np.stack(labels))
    return x, y, F.one_hot(y, 4).amax((1, 2)).bool()


def test_cam_localises_the_tagged_class_on_the_phantom():
    """A tiny classifier trained 200 steps on tags alone: the CAM peak of a present class
    falls inside that class far more often than chance (its area fraction), and the CAM is
    higher inside the class than outside."""
    x, y, tags = _phantom_tags(0, 30)
    torch.manual_seed(0)
    net = MODELS.build("unet2d_cam", in_channels=1, num_classes=4, base_channels=8, depth=1,
                       dropout=0.0)
    opt = torch.optim.Adam(net.parameters(), lr=3e-3)
    gen = torch.Generator().manual_seed(0)
    for _ in range(200):
        idx = torch.randint(0, len(x), (16,), generator=gen)
        loss = tag_bce_loss(net(x[idx]), tags[idx])
        opt.zero_grad()
        loss.backward()
        opt.step()
    cams = compute_cams(net, x)
    assert net.training                                       # the mode is restored
    for c in (1, 3):                                          # RV, LV (each absent at times)
        pos = tags[:, c]
        peak = cams[pos, c].flatten(1).argmax(1)
        hit = (y[pos].flatten(1).gather(1, peak[:, None])[:, 0] == c).float().mean()
        inside = (y[pos] == c).float()
        chance = inside.mean()
        ratio = ((cams[pos, c] * inside).sum() / inside.sum()) / (
            (cams[pos, c] * (1 - inside)).sum() / (1 - inside).sum())
        assert hit > 3 * chance, (c, float(hit), float(chance))
        assert ratio > 1.5, (c, float(ratio))


# ------------------------------------------------------------------------------ the losses


def test_tag_bce_hand_values_reductions_and_errors():
    tags = torch.tensor([[True, True, False]])
    assert float(tag_bce_loss(torch.zeros(1, 3, 4, 4), tags)) == pytest.approx(math.log(2))
    logits = torch.zeros(1, 3, 2, 2)
    logits[0, 1] = 2.0                                        # pooled logit of class 1: 2
    expected = (F.softplus(torch.tensor(-2.0)) + math.log(2)) / 2
    assert float(tag_bce_loss(logits, tags)) == pytest.approx(float(expected))
    assert tag_bce_loss(logits, tags, reduction="none").shape == (1, 2)
    assert tag_bce_loss(logits, tags, reduction="none", include_background=True).shape == (1, 3)
    assert float(tag_bce_loss(logits, tags, reduction="sum")) == pytest.approx(
        2 * float(expected))
    three_d = torch.zeros(2, 3, 2, 2, 2)
    assert tag_bce_loss(three_d, tags.expand(2, 3)).ndim == 0
    with pytest.raises(ValueError, match=r"tags shape \(1, 2\)"):
        tag_bce_loss(logits, tags[:, :2])
    with pytest.raises(ValueError, match="reduction"):
        tag_bce_loss(logits, tags, reduction="avg")
    with pytest.raises(ValueError, match="at least one foreground"):
        tag_bce_loss(torch.zeros(1, 1, 2, 2), tags[:, :1])


def test_tag_bce_gradcheck_and_module():
    gen = torch.Generator().manual_seed(1)
    logits = torch.randn(2, 3, 3, 3, dtype=torch.float64, generator=gen, requires_grad=True)
    tags = torch.rand(2, 3, generator=gen) > 0.5
    assert torch.autograd.gradcheck(lambda z: tag_bce_loss(z, tags), (logits,))
    module = LOSSES.build("tag_bce")
    assert isinstance(module, TagBCELoss) and module.inputs == ("tags",)
    assert torch.equal(module(logits, tags), tag_bce_loss(logits, tags))


def test_pseudo_ce_equals_partial_ce_on_the_masks():
    gen = torch.Generator().manual_seed(2)
    logits = torch.randn(2, 4, 5, 5, generator=gen)
    masks = torch.randint(0, 4, (2, 5, 5), generator=gen)
    masks[0, :2] = -100
    loss = LOSSES.build("pseudo_ce")
    assert isinstance(loss, PseudoMaskCrossEntropyLoss) and loss.inputs == ("pseudo_masks",)
    assert torch.equal(loss(logits, masks), partial_cross_entropy(logits, masks))
    # the estimates file gives float maps: rounded to the same class indices
    assert torch.equal(loss(logits, masks.float()), partial_cross_entropy(logits, masks))


# ------------------------------------------------------------------------------ masks


def _maps() -> tuple[torch.Tensor, torch.Tensor]:
    """Hand-built CAMs (1, 3, 4, 4): class 1 high on the left half, class 2 a corner."""
    cams = torch.zeros(1, 3, 4, 4)
    cams[0, 1, :, :2] = torch.tensor([0.9, 0.5])
    cams[0, 1, :, 2] = 0.2
    cams[0, 2, 0, 3] = 1.0
    cams[0, 2, 0, 2] = 0.4
    cams[0, 2, 1, 2:] = 0.1                                            # a weak tail
    cams[0, 2, 2, 3] = 0.05
    return cams, torch.tensor([[True, True, True]])


def test_threshold_hand_values_and_absent_classes():
    cams, tags = _maps()
    before = cams.clone()
    labels = threshold_cams(cams, tags, threshold=0.3)
    expected = torch.tensor([[1, 1, 2, 2], [1, 1, 0, 0], [1, 1, 0, 0], [1, 1, 0, 0]])
    assert torch.equal(labels[0], expected)
    assert torch.equal(threshold_cams(cams, threshold=0.3), labels)      # no tags: all on
    assert torch.equal(threshold_cams(cams, tags, threshold=0.6)[0, :, 1], torch.zeros(4).long())
    off = threshold_cams(cams, torch.tensor([[True, False, True]]), threshold=0.3)
    assert not (off == 1).any() and off[0, 0, 3] == 2 and off[0, 0, 2] == 2
    # the unary logits give the same mask by arg-max
    assert torch.equal(cam_logits(cams, tags, threshold=0.3).argmax(1), labels)
    assert torch.equal(cams, before)


@pytest.mark.parametrize("bad", [0.0, 1.0, -0.1, float("nan"), True, "0.3"])
def test_bad_threshold(bad):
    with pytest.raises(WeaksegError, match="threshold must be a number in"):
        check_threshold(bad)
    with pytest.raises(WeaksegError, match="threshold"):
        threshold_cams(_maps()[0], threshold=bad)


def test_refine_size_cuts_and_grows_by_cam_rank():
    cams, tags = _maps()
    labels = threshold_cams(cams, tags, threshold=0.3)                 # class 1: 8 px, 2: 2 px
    bounds = torch.tensor([[[0.0, 16.0], [2.0, 4.5], [5.0, 6.0]]])
    before = (cams.clone(), labels.clone(), bounds.clone())
    out = refine_size(labels, cams, bounds)
    assert int((out == 1).sum()) == 4 and (out[0, :, 0] == 1).all()    # the 4 at 0.9 kept
    assert int((out == 2).sum()) == 5                                  # grown to 5 by CAM
    assert (out[0, 0, 2:] == 2).all() and (out[0, 1, 2:] == 2).all() and out[0, 2, 3] == 2
    # growth only onto pixels where the class's CAM is positive (here 5 of them)
    more = refine_size(labels, cams, torch.tensor([[[0.0, 16.0], [2.0, 4.5], [9.0, 9.0]]]))
    assert int((more == 2).sum()) == 5
    assert torch.equal(cams, before[0]) and torch.equal(labels, before[1])
    assert torch.equal(bounds, before[2])
    absent = refine_size(labels, cams, torch.tensor([[[0.0, 16.0], [0.0, 0.0], [0.0, 16.0]]]))
    assert not (absent == 1).any()
    free = refine_size(labels, cams, torch.tensor([[[0.0, math.inf]] * 3]))
    assert torch.equal(free, labels)
    with pytest.raises(WeaksegError, match=r"expected \(B, C, 2\)"):
        refine_size(labels, cams, bounds[:, :2])


def test_crf_and_graphcut_with_the_cam_unary():
    """λ = 0: both are the thresholded mask; with a smoothness term the refined mask follows
    the image edge (the CAM covers only part of a bright square) and absent classes stay
    off."""
    cams, tags = _maps()
    image = torch.rand(1, 1, 4, 4)
    plain = threshold_cams(cams, tags, threshold=0.3)
    assert torch.equal(refine_crf(cams, image, tags, threshold=0.3, lam=0.0), plain)
    assert torch.equal(refine_graphcut(cams, image, tags, threshold=0.3, lam=0.0), plain)
    # a bright 6 x 6 square; the CAM of class 1 covers its left part only
    image = torch.zeros(1, 1, 12, 12)
    image[..., 3:9, 3:9] = 1.0
    cams = torch.zeros(1, 3, 12, 12)
    cams[0, 1, 3:9, 3:6] = 1.0
    cams[0, 1, 3:9, 6:9] = 0.25                                        # just below 0.3
    cams[0, 2] = 0.9                                                   # class 2 absent
    tags = torch.tensor([[True, True, False]])
    square = torch.zeros(1, 12, 12, dtype=torch.long)
    square[:, 3:9, 3:9] = 1
    before = cams.clone()
    assert int((threshold_cams(cams, tags) == 1).sum()) == 18
    cut = refine_graphcut(cams, image, tags, lam=2.0, sigma=0.1)
    assert torch.equal(cut, square)
    crf = refine_crf(cams, image, tags, lam=0.5, sigma_xy=3.0, sigma_intensity=0.1,
                     iterations=5, backend="exact")
    assert torch.equal(crf, square)
    assert torch.equal(cams, before)
    masks = pseudo_masks(cams, tags=tags, refine="size+graphcut", image=image,
                         bounds=torch.tensor([[[0.0, 144.0], [0.0, 30.0], [0.0, 0.0]]]),
                         graphcut={"lam": 2.0})
    assert int((masks == 1).sum()) == 30 and not (masks == 2).any()
    with pytest.raises(WeaksegError, match="needs the images"):
        pseudo_masks(cams, tags=tags, refine="crf")
    with pytest.raises(WeaksegError, match="needs size bounds"):
        pseudo_masks(cams, tags=tags, refine="size")
    with pytest.raises(WeaksegError, match="unknown CAM refinement 'crff'"):
        pseudo_masks(cams, tags=tags, refine="crff")


def test_plot_cams_writes_a_png(tmp_path):
    cams, tags = _maps()
    labels = threshold_cams(cams, tags).numpy()
    path = plot_cams(tmp_path / "cams.png", np.random.rand(1, 4, 4), cams.numpy(),
                     {"threshold": labels, "ground truth": labels}, tags=tags.numpy(),
                     row_titles=["a"], class_names=["bg", "A", "B"])
    assert path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


# ------------------------------------------------------------------------------ the file


def _estimates(masks: np.ndarray | None) -> Estimates:
    n, s = 2, 4
    return Estimates(keys=["a", "b"], index=[0, 3], fractions=np.full((n, 2), 0.5, np.float32),
                     cell_fractions=np.full((n, 2, 2, 2), 0.5, np.float32),
                     class_names=["bg", "A"], size=s, spacing=None, method="m", source="s",
                     masks=masks)


def test_masks_file_round_trip_and_prior(tmp_path):
    masks = np.zeros((2, 4, 4), np.int64)
    masks[1, 1:3, 1:3] = 1
    masks[0, 0, 0] = -100
    path = save_estimates(_estimates(masks), tmp_path / "cams.npz")
    back = load_estimates(path)
    assert back.masks is not None and np.array_equal(back.masks, masks)
    assert back.mask_dice is None
    scored = save_estimates(dataclasses.replace(_estimates(masks), mask_dice=np.array(
        [0.5, np.nan])), tmp_path / "scored.npz")
    assert np.array_equal(load_estimates(scored).mask_dice, [0.5, np.nan], equal_nan=True)
    assert "estimated_masks" in ESTIMATED_PRIORS
    assert PRIOR_KEYS["estimated_masks"] == "pseudo_masks" and "pseudo_masks" in SPATIAL_EXTRAS
    out = estimated_entries(path, ["estimated_masks"], ["b", "a"], [3, 0],
                            class_names=["bg", "A"], size=4, spacing=None, where="data")
    assert torch.equal(out["pseudo_masks"].long(), torch.from_numpy(masks[::-1].copy()))
    # a file of estimate-priors (no masks) read for estimated_masks: one line
    plain = save_estimates(_estimates(None), tmp_path / "plain.npz")
    assert load_estimates(plain).masks is None
    with pytest.raises(WeaksegError, match="has no masks"):
        estimated_entries(plain, ["estimated_masks"], ["a"], [0], class_names=["bg", "A"],
                          size=4, spacing=None, where="data")
    with pytest.raises(WeaksegError, match=r"need masks \(2, 4, 4\)"):
        _estimates(np.zeros((2, 3, 3), np.int64))


# ------------------------------------------------------------------------------ the path


def _classifier_config(root: Path) -> dict:
    raw = tiny_config(train__epochs=1)
    raw["model"] = {"name": "unet2d_cam", "params": {"base_channels": 4, "depth": 2}}
    raw["data"]["annotation"] = "none"
    raw["data"]["priors"] = ["tags"]
    raw["loss"] = [{"name": "tag_bce"}]
    return raw


@pytest.fixture(scope="module")
def cam_run(tmp_path_factory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("cam")
    raw = _classifier_config(root)
    cfg = root / "cam.yaml"
    cfg.write_text(yaml.safe_dump(raw))
    train(config_from_dict(raw), root / "run", log=_quiet, progress=False)
    return {"root": root, "cfg": cfg, "ckpt": root / "run" / "best.pt"}


def test_cam_command_then_segmentation_on_the_masks(cam_run, tmp_path, capsys):
    out = tmp_path / "cams.npz"
    assert main(["cam", "--checkpoint", str(cam_run["ckpt"]), "--config", str(cam_run["cfg"]),
                 "--out", str(out), "--refine", "size", "--plot", "--plot-slices", "2"]) == 0
    said = capsys.readouterr().out
    assert "CAM pseudo-masks (threshold 0.3, refinement size) of 12 training slices" in said
    assert "pseudo-mask Dice against the training slices' full label maps" in said
    assert (tmp_path / "cams.png").read_bytes()[:4] == b"\x89PNG"
    est = load_estimates(out)
    assert est.masks is not None and est.masks.shape == (12, 32, 32)
    assert set(np.unique(est.masks)) <= {0, 1, 2, 3}
    assert np.allclose(est.fractions.sum(1), 1) and "refinement size" in est.method
    seg = tiny_config(train__epochs=1)
    seg["data"].update(annotation="none", priors=["tags", "estimated_masks"], estimates=str(out))
    seg["loss"] = [{"name": "pseudo_ce"}, {"name": "tags", "weight": 0.1}]
    result = train(config_from_dict(seg), tmp_path / "seg", log=_quiet, progress=False)
    assert math.isfinite(result.best_score)


def test_cam_estimates_errors(cam_run, tmp_path):
    cfg = config_from_dict(_classifier_config(cam_run["root"]))
    with pytest.raises(WeaksegError, match="threshold must be a number"):
        cam_estimates(cam_run["ckpt"], cfg, threshold=1.2)
    with pytest.raises(WeaksegError, match="unknown CAM refinement"):
        cam_estimates(cam_run["ckpt"], cfg, refine="dense")
    raw = _classifier_config(cam_run["root"])
    raw["data"]["priors"] = []
    raw["loss"] = [{"name": "entropy"}]
    with pytest.raises(WeaksegError, match="need image tags"):
        cam_estimates(cam_run["ckpt"], config_from_dict(raw))
    seg = tiny_config(train__epochs=1)
    train(config_from_dict(seg), tmp_path / "unet", log=_quiet, progress=False)
    with pytest.raises(WeaksegError, match="is a unet2d model, not a CAM classifier"):
        cam_estimates(tmp_path / "unet" / "best.pt", cfg)


@pytest.mark.parametrize("refine", ["none", "size", "crf", "graphcut", "size+crf",
                                    "size+graphcut"])
def test_every_refinement_on_the_training_slices(cam_run, refine):
    """Every refinement gives one mask per training slice, keyed like the slices, with no
    class the slice's tags call absent; size bounds are met where they apply."""
    raw = _classifier_config(cam_run["root"])
    raw["data"]["priors"] = ["tags", "bounds_from_tags"]
    cfg = config_from_dict(raw)
    result = cam_estimates(cam_run["ckpt"], cfg, threshold=0.3, refine=refine)
    est = result.estimates
    assert result.plot is None and est.masks is not None and est.masks.shape == (12, 32, 32)
    assert est.keys[:4] == ["phantom_000"] * 4 and est.index[:4] == [0, 1, 2, 3]
    vset = DATASETS.build("phantom", num_volumes=4, size=32, slices=4, seed=0)
    truth = np.concatenate([v.label for v in vset.volumes[:3]])
    present = F.one_hot(torch.from_numpy(truth).long(), 4).amax((1, 2)).numpy().astype(bool)
    for c in range(1, 4):
        assert not (est.masks[~present[:, c]] == c).any()
    # the stored diagnostic Dice, against a direct count on the phantom's label maps
    assert est.mask_dice is not None and est.mask_dice.shape == (4,)
    for c in range(4):
        inter = np.logical_and(est.masks == c, truth == c).sum()
        total = (est.masks == c).sum() + (truth == c).sum()
        assert est.mask_dice[c] == pytest.approx(2 * inter / total)
    if refine.startswith("size"):  # at most the largest class size of the training masks
        for c in range(1, 4):
            true = (truth == c).sum((1, 2))[present[:, c]]
            got = (est.masks == c).sum((1, 2))[present[:, c]]
            assert (got <= true.max()).all(), (c, got, true)


def test_refine_size_cuts_before_it_grows():
    """A class that floods the slice is cut first, so the others can grow into the space."""
    cams = torch.zeros(1, 3, 4, 4)
    cams[0, 2] = torch.linspace(0, 1, 16).view(4, 4)
    cams[0, 1, 0] = 1.0
    cams[0, 1, 1] = 0.5
    labels = torch.full((1, 4, 4), 2)
    out = refine_size(labels, cams, torch.tensor([[[0.0, 16.0], [4.0, 8.0], [0.0, 5.0]]]))
    assert int((out == 2).sum()) == 5 and (out[0, 3, 3] == 2)
    assert int((out == 1).sum()) == 4 and (out[0, 0] == 1).all()
