"""Per-slice priors (data.priors): values in training pixels, errors, augmentation."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from weakseg.data import DATASETS
from weakseg.data.base import Volume
from weakseg.data.priors import PRIORS, check_priors, describe_priors
from weakseg.data.slices import augment_batch, build_slices, resize_labels
from weakseg.errors import WeaksegError

C = 4


@pytest.fixture(scope="module")
def volumes() -> list[Volume]:
    return DATASETS.build("phantom", num_volumes=2, size=48, slices=3, seed=0).volumes


def _resized(volumes: list[Volume], size: int) -> np.ndarray:
    return np.concatenate([resize_labels(torch.from_numpy(v.label.astype(np.int64)),
                                         (size, size)).numpy() for v in volumes])


def _build(volumes: list[Volume], priors: list[str]):
    return build_slices(volumes, annotation="sim:points", num_classes=C, size=32, priors=priors)


def test_no_priors_no_extras(volumes):
    assert _build(volumes, []).extras == {}


def test_tags_boxes_and_bounds_from_tags_in_training_pixels(volumes):
    data = _build(volumes, ["tags", "boxes", "bounds_from_tags"])
    labels = _resized(volumes, 32)                                     # (N, 32, 32)
    n = labels.shape[0]
    assert set(data.extras) == {"tags", "boxes", "bounds"}
    tags, boxes, bounds = data.extras["tags"], data.extras["boxes"], data.extras["bounds"]
    assert tags.shape == (n, C) and tags.dtype == torch.bool
    assert boxes.shape == (n, C, 32, 32) and boxes.dtype == torch.bool
    assert bounds.shape == (n, C, 2) and bounds.dtype == torch.float32
    sizes = np.stack([(labels == c).sum((1, 2)) for c in range(C)], 1)   # (N, C)
    assert np.array_equal(tags.numpy(), sizes > 0)
    # boxes: none for the background, the tight box of each present foreground class
    assert not boxes[:, 0].any()
    for i in range(n):
        for c in range(1, C):
            mask = labels[i] == c
            box = boxes[i, c].numpy()
            if not mask.any():
                assert not box.any()
                continue
            ys, xs = np.nonzero(mask)
            tight = np.zeros_like(mask)
            tight[ys.min() : ys.max() + 1, xs.min() : xs.max() + 1] = True
            assert np.array_equal(box, tight)
    # bounds from tags: (min, max) size over all training slices where present, (0, 0) absent
    for c in range(C):
        present = sizes[:, c] > 0
        expected = [sizes[present, c].min(), sizes[present, c].max()]
        assert bounds[present, c].tolist() == [expected] * int(present.sum())
        assert (bounds[~present, c] == 0).all()


def test_bounds_from_boxes_and_oracle_bounds(volumes):
    labels = _resized(volumes, 32)
    sizes = np.stack([(labels == c).sum((1, 2)) for c in range(C)], 1)
    boxes = _build(volumes, ["boxes"]).extras["boxes"]
    bounds = _build(volumes, ["bounds_from_boxes"]).extras["bounds"]
    area = boxes.sum((2, 3)).float()
    assert torch.equal(bounds[:, 1:, 0], 0.5 * area[:, 1:])
    assert torch.allclose(bounds[:, 1:, 1], 0.9 * area[:, 1:])
    assert (bounds[:, 0, 0] == 0).all() and torch.isinf(bounds[:, 0, 1]).all()
    oracle = _build(volumes, ["oracle_bounds"]).extras["bounds"].numpy()
    assert np.allclose(oracle, np.stack([0.9 * sizes, 1.1 * sizes], -1))


@pytest.mark.parametrize(
    "priors, match",
    [
        (["tag"], "unknown prior 'tag'.*did you mean 'tags'"),
        (["bounds_from_tags", "oracle_bounds"], "'bounds_from_tags' and 'oracle_bounds'"),
        (["tags", "tags"], "'tags' is listed twice"),
    ],
)
def test_bad_priors(priors, match):
    with pytest.raises(WeaksegError, match=match) as info:
        check_priors(priors)
    assert "\n" not in str(info.value)


def test_priors_need_full_label_maps(volumes):
    vol = volumes[0]
    weak = Volume(vol.key, vol.group, vol.image, annotations=dict(vol.annotations))
    build_slices([weak], annotation="scribble", num_classes=C, size=32)   # fine without priors
    with pytest.raises(WeaksegError, match="computed from full label maps.*phantom_000"):
        build_slices([weak], annotation="scribble", num_classes=C, size=32, priors=["tags"])


def test_describe_priors_names_the_oracle_and_the_statistic():
    lines = describe_priors(list(PRIORS[:3]) + ["oracle_bounds"], num_slices=12)
    assert any("data-set statistic" in line and "12 training slices" in line for line in lines)
    assert "oracle_bounds: reads the ground truth; for ablations only" in lines[-1]


def test_augment_moves_boxes_with_the_image_and_keeps_the_draws():
    gen = torch.Generator().manual_seed(0)
    n, size = 16, 12
    boxes = torch.zeros(n, 2, size, size, dtype=torch.bool)
    for i in range(n):
        y0, x0 = torch.randint(0, size - 4, (2,), generator=gen).tolist()
        boxes[i, 1, y0 : y0 + 2 + i % 3, x0 : x0 + 4] = True
    ramp = torch.arange(size * size).view(size, size) / (2.0 * size * size)  # < 0.5, no symmetry
    images = boxes[:, 1:].float() + ramp
    targets = boxes[:, 1].long()
    tags = boxes.flatten(2).any(-1)
    bounds = torch.rand(n, 2, 2, generator=gen)
    extras = {"boxes": boxes, "tags": tags, "bounds": bounds}
    x0, y0 = augment_batch(images, targets, torch.Generator().manual_seed(3))
    x, y, out = augment_batch(images, targets, torch.Generator().manual_seed(3), extras)
    assert torch.equal(x, x0) and torch.equal(y, y0)          # same draws as without extras
    assert not torch.equal(x, images)                          # something did rotate/flip
    assert torch.equal(out["boxes"][:, 1], x[:, 0] >= 1)       # the box follows its image
    assert torch.equal(out["boxes"][:, 1].long(), y)
    assert out["tags"] is tags and out["bounds"] is bounds     # invariant under rot90/flip
    assert extras["boxes"] is boxes                            # the input dict is not modified


def test_annotation_none_trains_from_priors_alone(volumes):
    data = build_slices(volumes, annotation="none", num_classes=C, size=32,
                        priors=["tags", "bounds_from_tags"])
    assert data.labelled_fraction == 0.0 and set(data.extras) == {"tags", "bounds"}
    with pytest.raises(WeaksegError, match="nothing to learn from"):
        build_slices(volumes, annotation="none", num_classes=C, size=32)


# ------------------------------------------------------- the registry, crops, index


def test_crop_recomputes_tags_and_boxes_of_the_window():
    """A crop that cuts a class away must drop its tag, and boxes must be those of the
    window (the old random_crop kept the slice's tags and cut its box masks)."""
    from weakseg.annotate.boxes import box_masks, boxes_from_mask, tags_from_mask
    from weakseg.data.slices import random_crop

    n, size, crop = 32, 16, 6
    labels = torch.zeros(n, size, size, dtype=torch.long)
    labels[:, 1:4, 1:4] = 1                                   # top-left only
    labels[:, 10:15, 2:14] = 2                                # bottom band
    labels[:, 3:12, 12:13] = 3                                # thin right column
    full = labels.numpy()
    extras = {"tags": torch.from_numpy(tags_from_mask(full, num_classes=C)),
              "boxes": torch.from_numpy(box_masks(np.where(
                  np.arange(C)[None, :, None] == 0, -1,
                  boxes_from_mask(full, num_classes=C)), (size, size)))}
    images = labels[:, None].float()
    _, cy, out = random_crop(images, labels, torch.Generator().manual_seed(0), crop, extras,
                             labels=labels.to(torch.uint8))
    window = cy.numpy()                                       # the crops' full labels
    expected_tags = tags_from_mask(window, num_classes=C)
    assert not expected_tags.all()                            # some crop lost a class
    assert torch.equal(out["tags"], torch.from_numpy(expected_tags))
    boxes = boxes_from_mask(window, num_classes=C)
    boxes[:, 0] = -1
    assert torch.equal(out["boxes"], torch.from_numpy(box_masks(boxes, (crop, crop))))
    # the old behaviour (tags kept, box masks cut) is wrong for these crops
    assert not torch.equal(out["tags"], extras["tags"])


def test_crop_needs_the_label_maps_and_forbids_whole_slice_bounds():
    from weakseg.data.slices import random_crop

    x, y = torch.zeros(2, 1, 8, 8), torch.zeros(2, 8, 8, dtype=torch.long)
    gen = torch.Generator().manual_seed(0)
    with pytest.raises(WeaksegError, match="recompute \\['tags'\\]"):
        random_crop(x, y, gen, 4, {"tags": torch.ones(2, C, dtype=torch.bool)})
    with pytest.raises(WeaksegError, match="'bounds'.*whole slices"):
        random_crop(x, y, gen, 4, {"bounds": torch.zeros(2, C, 2)})
    index = torch.tensor([5, 7])
    assert random_crop(x, y, gen, 4, {"index": index})[2]["index"] is index


def test_build_slices_keeps_crop_labels_only_for_recomputed_priors(volumes):
    assert _build(volumes, ["bounds_from_tags"]).crop_labels is None
    data = _build(volumes, ["tags"])
    assert data.crop_labels is not None and data.crop_labels.dtype == torch.uint8
    assert torch.equal(data.crop_labels.long(), torch.from_numpy(_resized(volumes, 32)))


def test_registry_names_keys_and_transforms():
    from weakseg.data.priors import (
        PRIOR_KEYS,
        PRIOR_REGISTRY,
        SAMPLE_KEYS,
        SPATIAL_EXTRAS,
    )

    assert PRIORS == ("tags", "boxes", "bounds_from_tags", "bounds_from_boxes",
                      "oracle_bounds", "estimated_fractions", "estimated_cell_fractions",
                      "bounds_from_estimates", "estimated_masks")
    assert PRIOR_KEYS["bounds_from_boxes"] == "bounds"
    assert SPATIAL_EXTRAS == {"boxes", "cell_fractions", "pseudo_masks"}
    assert SAMPLE_KEYS == {"index"} and "index" not in PRIORS
    assert {PRIOR_REGISTRY.get(n).on_crop for n in ("tags", "boxes")} == {"recompute"}
    with pytest.raises(WeaksegError, match="did you mean 'boxes'"):
        PRIOR_REGISTRY.get("boxs")
    with pytest.raises(WeaksegError, match="did you mean 'tags'"):
        check_priors(["tagz"])


def test_sample_entries_carry_the_index(volumes):
    data = _build(volumes, ["tags"])
    positions = torch.tensor([3, 0, 2])
    entries = data.entries(positions)
    assert set(entries) == {"tags", "index"}
    assert torch.equal(entries["index"], positions)
    assert torch.equal(entries["tags"], data.extras["tags"][positions])
    assert set(_build(volumes, []).entries(positions)) == {"index"}


def test_annotate_does_not_import_data():
    """No data <-> annotate cycle: annotate imports nothing of weakseg.data (at any level),
    and either package imports first in a fresh interpreter."""
    import ast
    import subprocess
    import sys
    from pathlib import Path

    import weakseg.annotate
    from weakseg.data.base import IGNORE_INDEX
    from weakseg.labels import IGNORE_INDEX as LABELS_IGNORE

    assert IGNORE_INDEX == LABELS_IGNORE
    for path in Path(weakseg.annotate.__file__).parent.glob("*.py"):
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.ImportFrom):
                assert not (node.module or "").startswith("weakseg.data"), path
            elif isinstance(node, ast.Import):
                assert not any(a.name.startswith("weakseg.data") for a in node.names), path
    for first in ("weakseg.annotate", "weakseg.data.priors", "weakseg.data.slices"):
        subprocess.run([sys.executable, "-c", f"import {first}"], check=True)


def test_trainer_crops_recompute_tags_and_boxes_alike(volumes):
    """In training batches cut to a crop window, a class is tagged exactly when its box is
    in the window (before: the slice's tags were kept while the boxes were cut)."""
    from weakseg.engine.trainer import train_one_epoch
    from weakseg.losses.recipe import LossRecipe, LossTerm
    from weakseg.models import MODELS

    seen: list[dict[str, torch.Tensor]] = []

    class Spy(LossRecipe):
        def forward(self, logits, batch):
            seen.append({k: v.clone() for k, v in batch.items()})
            return super().forward(logits, batch)

    data = _build(volumes, ["tags", "boxes"])
    recipe = Spy([LossTerm("partial_ce"),
                  LossTerm("constraint", params={"constraint": "tags",
                                                 "objective": "penalty"})], num_classes=C)
    model = MODELS.build("unet2d", in_channels=1, num_classes=C, base_channels=4, depth=2)
    opt = torch.optim.SGD(model.parameters(), lr=0.0)
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda _: 1.0)
    train_one_epoch(model, recipe, data, opt, sched, batch_size=4, seed=0, crop=8, steps=8)
    assert len(seen) == 8 and all(b["image"].shape[-2:] == (8, 8) for b in seen)
    tags = torch.cat([b["tags"] for b in seen])
    boxed = torch.cat([b["boxes"].flatten(2).any(-1) for b in seen])
    assert torch.equal(tags[:, 1:], boxed[:, 1:])
    assert not tags[:, 1:].all()                      # some crop did cut a class away
    for b in seen:  # ``index`` names each sample's slice: a window shows no class it lacks
        assert bool((b["tags"] <= data.extras["tags"][b["index"]]).all())
