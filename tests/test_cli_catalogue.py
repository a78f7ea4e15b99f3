"""The catalogue of bad inputs: every command, every mistake a user makes.

Each case runs the real command line (``weakseg.cli.main``) and asserts what the README
promises: exit status 2, exactly one ``error:`` line that names the problem (the ``match``
text), no traceback, and not one byte changed in the input folders (every input file is
hashed before and after). Outputs go to a fresh folder per case.
"""

from __future__ import annotations

import hashlib
import json
import shutil
from pathlib import Path

import h5py
import nibabel as nib
import numpy as np
import pytest
import torch
import yaml

from weakseg.cli import main
from weakseg.data import DATASETS

from .conftest import tiny_config, write_h5_folder
from .test_data_monuseg import _fake as fake_monuseg

AFFINE = np.diag([1.5, 1.5, 8.0, 1.0])


def _nii(arr: np.ndarray, path: Path) -> None:
    nib.save(nib.Nifti1Image(np.ascontiguousarray(np.transpose(arr, (2, 1, 0))), AFFINE), path)


def _write_nnunet(root: Path, vset, *, labelled: int, classes: int = 4) -> None:
    """imagesTr (4 cases, the first ``labelled`` with dense labels), imagesTs (2 cases)."""
    for sub in ("imagesTr", "labelsTr", "imagesTs"):
        (root / sub).mkdir(parents=True)
    for i, vol in enumerate(vset.volumes):
        _nii(vol.image, root / "imagesTr" / f"case{i:03d}_0000.nii.gz")
        if i < labelled:
            label = np.minimum(vol.label, classes - 1).astype(np.uint8)
            _nii(label, root / "labelsTr" / f"case{i:03d}.nii.gz")
        if i < 2:
            _nii(vol.image, root / "imagesTs" / f"test{i:03d}_0000.nii.gz")
    labels = dict(zip(["background", "RV", "Myo", "LV"][:classes], range(classes), strict=True))
    (root / "dataset.json").write_text(json.dumps(
        {"channel_names": {"0": "MRI"}, "labels": labels, "numTraining": 4,
         "file_ending": ".nii.gz"}))


@pytest.fixture(scope="module")
def inputs(tmp_path_factory) -> dict[str, Path]:
    """Every input file of the catalogue, under one root that is hashed around each case."""
    root = tmp_path_factory.mktemp("inputs")
    vset = DATASETS.build("phantom", num_volumes=4, size=32, slices=4, seed=3)
    write_h5_folder(root / "h5", vset)
    _write_nnunet(root / "nn", vset, labelled=4)
    _write_nnunet(root / "nn_partial", vset, labelled=3)
    _write_nnunet(root / "nn_unlabelled", vset, labelled=0)
    _write_nnunet(root / "nn_3classes", vset, labelled=4, classes=3)
    (root / "two_channels").mkdir()
    two = np.stack([vset.volumes[0].image] * 2, axis=-1)  # (Z, H, W, 2)
    nib.save(nib.Nifti1Image(np.transpose(two, (2, 1, 0, 3)), AFFINE),
             root / "two_channels" / "twochannels.nii.gz")
    (root / "rank").mkdir()
    with h5py.File(root / "rank" / "patient001_frame01.h5", "w") as f:
        f["image"] = np.zeros((2, 32, 32), np.float32)
        f["label"] = np.zeros((32, 32, 2, 1), np.uint8)
    (root / "corrupt").mkdir()
    (root / "corrupt" / "patient001_frame01.h5").write_bytes(b"not an hdf5 file")
    (root / "empty").mkdir()
    _broken_readers(root, vset)

    raw = tiny_config(train__epochs=1)
    raw["data"] = {"name": "acdc_h5", "root": str(root / "h5"), "annotation": "scribble",
                   "size": 32, "train": "1-3", "val": "4"}
    cfg = root / "cfg.yaml"
    cfg.write_text(yaml.safe_dump(raw))
    (root / "dup.yaml").write_text(cfg.read_text() + "train: {epochs: 5}\n")
    (root / "list.yaml").write_text("- model\n- data\n")
    (root / "binary.yaml").write_bytes(b"\xff\xfe\x00binary")
    bounds = yaml.safe_load(cfg.read_text())
    bounds["data"]["annotation"] = "sim:points"
    bounds["loss"].append({"name": "size", "weight": 1.0,
                           "params": {"bounds": [[0.0, 0.5], [0.0, 0.5]], "fraction": True}})
    (root / "bounds.yaml").write_text(yaml.safe_dump(bounds))

    run = root / "run"
    assert main(["train", "--config", str(cfg), "--out", str(run), "--quiet"]) == 0
    ckpt = torch.load(run / "best.pt", weights_only=True)
    (root / "garbage.pt").write_bytes(b"not a checkpoint")
    torch.save({"format": "weakseg-checkpoint-v1"}, root / "no_keys.pt")
    edited = dict(ckpt, config={**ckpt["config"], "model": {"name": "unet2d",
                                                            "params": {"base_channels": 8}}})
    torch.save(edited, root / "edited.pt")
    torch.save(dict(ckpt, config={"train": {"lr": "fast"}}), root / "bad_config.pt")
    torch.save({"x": torch.nn.Linear(2, 2)}, root / "pickled_module.pt")  # refused by weights_only
    # label distributions of the training slices of cfg (patients 1-3), for curriculum DA
    assert main(["estimate-priors", "--checkpoint", str(run / "best.pt"), "--config", str(cfg),
                 "--out", str(root / "estimates.npz"), "--quiet"]) == 0
    return {"root": root, "ckpt": run / "best.pt", "cfg": cfg}


def _broken_readers(root: Path, vset) -> None:
    """One broken copy of a NIfTI / MoNuSeg data set per mistake a reader must name."""
    for name in ("nn_json", "nn_shape", "nn_orphan", "nn_nan"):
        shutil.copytree(root / "nn", root / name)
    (root / "nn_json" / "dataset.json").write_text("{")
    _nii(np.zeros((4, 16, 16), np.uint8), root / "nn_shape" / "labelsTr" / "case000.nii.gz")
    _nii(np.zeros((4, 32, 32), np.uint8), root / "nn_orphan" / "labelsTr" / "cas000.nii.gz")
    nan = vset.volumes[0].image.copy()
    nan[0, 0, 0] = np.nan
    _nii(nan, root / "nn_nan" / "imagesTr" / "case000_0000.nii.gz")
    mixed = root / "nn_mixed"  # nnU-Net v2 ignore label: case003 scribbled, the rest dense
    shutil.copytree(root / "nn", mixed)
    spec = json.loads((mixed / "dataset.json").read_text())
    spec["labels"]["ignore"] = 4
    (mixed / "dataset.json").write_text(json.dumps(spec))
    weak = vset.volumes[3].label.astype(np.uint8)
    weak[1:] = 4
    _nii(weak, mixed / "labelsTr" / "case003.nii.gz")
    fake_monuseg(root / "mo_json").joinpath("split.json").write_text("[not json")
    fake_monuseg(root / "mo_split").joinpath("split.json").write_text('{"train": [1, 2]}')
    fake_monuseg(root / "mo_noinst")
    shutil.rmtree(root / "mo_noinst" / "labels_instance")


def _digest(root: Path) -> dict[str, str]:
    return {str(p.relative_to(root)): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(root.rglob("*")) if p.is_file()}


def _run(argv: list[str], inputs: dict[str, Path], out: Path, capsys) -> tuple[int, str]:
    root = inputs["root"]
    subs = {"{IN}": str(root), "{CKPT}": str(inputs["ckpt"]), "{CFG}": str(inputs["cfg"]),
            "{OUT}": str(out)}
    argv = [_sub(a, subs) for a in argv]
    before = _digest(root)
    capsys.readouterr()
    try:
        rc = main(argv)
    except SystemExit as exc:  # argparse
        rc = int(exc.code or 0)
    err = capsys.readouterr().err
    assert _digest(root) == before, f"inputs changed by {argv}"
    return rc, err


def _sub(arg: str, subs: dict[str, str]) -> str:
    for key, value in subs.items():
        arg = arg.replace(key, value)
    return arg


def _assert_one_line_error(rc: int, err: str, match: str) -> None:
    assert "Traceback" not in err
    lines = [line for line in err.splitlines() if line.strip()]
    assert rc == 2, err
    assert len(lines) == 1 and lines[0].startswith("error: "), err
    assert match in lines[0], lines[0]


def _train(*sets: str, config: str = "{CFG}") -> list[str]:
    argv = ["train", "--config", config, "--out", "{OUT}/run", "--quiet"]
    for item in sets:
        argv += ["--set", item]
    return argv


def _curriculum(*sets: str, estimates: str = "{IN}/estimates.npz") -> list[str]:
    """A phantom target with estimated priors and the label-distribution loss on it."""
    return _train("data.val=", "data.target.name=phantom",
                  "data.target.params={num_volumes: 2, size: 32, slices: 2}",
                  "data.target.train=0-1",
                  "data.target.priors=[estimated_fractions, estimated_cell_fractions]",
                  f"data.target.estimates={estimates}",
                  "loss=[{name: partial_ce}, {name: label_distribution, domain: target}]", *sets)


def _nifti(name: str) -> list[str]:
    return _train("data.name=nifti", f"data.root={{IN}}/{name}", "data.annotation=full",
                  "data.train=0-2", "data.val=3")


def _monuseg(name: str) -> list[str]:
    return _train("data.name=monuseg", f"data.root={{IN}}/{name}", "data.annotation=full",
                  "data.train=split:train", "data.val=split:val", "model.params.depth=2")


TRAIN_CASES = {
    "config missing": (["train", "--config", "{IN}/missing.yaml"], "config file not found"),
    "config is a folder": (["train", "--config", "{IN}"], "is a folder"),
    "config not a mapping": (_train(config="{IN}/list.yaml"), "must be a YAML mapping"),
    "config not text": (_train(config="{IN}/binary.yaml"), "not a text file"),
    "duplicate yaml key": (_train(config="{IN}/dup.yaml"), "key 'train' appears twice"),
    "unknown section key": (_train("train.epoch=3"), "did you mean 'epochs'"),
    "bad override": (_train("train.epochs"), "use key=value"),
    "lr nan": (_train("train.lr=.nan"), "'train.lr' must be a finite number"),
    "lr inf": (_train("train.lr=.inf"), "'train.lr' must be a finite number"),
    "lr zero": (_train("train.lr=0"), "'train.lr' must be > 0"),
    "lr text": (_train("train.lr=fast"), "'train.lr' must be a number"),
    "epochs zero": (_train("train.epochs=0"), "'train.epochs' must be ≥ 1"),
    "batch size float": (_train("train.batch_size=2.5"), "'train.batch_size' must be an integer"),
    "weight decay negative": (_train("train.weight_decay=-1"), "'train.weight_decay' must be ≥ 0"),
    "momentum above one": (_train("train.momentum=2"), "'train.momentum' must be < 1"),
    "threads zero": (_train("train.threads=0"), "'train.threads' must be ≥ 1"),
    "threads negative": (_train("train.threads=-1"), "'train.threads' must be ≥ 1"),
    "seed negative": (_train("train.seed=-1"), "'train.seed' must be ≥ 0"),
    "optimizer typo": (_train("train.optimizer=adma"), "did you mean 'adam'"),
    "augment not bool": (_train("train.augment=maybe"), "must be true or false"),
    "device unknown": (_train("train.device=gpu7"), "bad train.device 'gpu7'"),
    "init missing": (_train("train.init={IN}/nothere.pt"), "train.init: checkpoint not found"),
    "init not a checkpoint": (_train("train.init={IN}/garbage.pt"),
                              "train.init: cannot read checkpoint"),
    "init other network": (_train("train.init={CKPT}", "model.params.base_channels=8"),
                           "do not fit this config's network"),
    "model unknown": (_train("model.name=unet"), "unknown model 'unet'"),
    "model params unknown key": (_train("model.params.chanels=8"), "did you mean 'base_channels'"),
    "model params text": (_train("model.params.base_channels=abc"),
                          "'base_channels' of model 'unet2d' (model.params) must be an integer"),
    "model params negative": (_train("model.params.base_channels=-1"),
                              "invalid parameters for model 'unet2d'"),
    "model params nan": (_train("model.params.dropout=.nan"), "must be a finite number"),
    "model params not a mapping": (_train("model.params=3"), "'model.params' must be a mapping"),
    "data set unknown": (_train("data.name=acdc"), "unknown data set 'acdc'"),
    "data params unknown key": (_train("data.params.patient=5"), "did you mean 'patients'"),
    "data root missing": (_train("data.root={IN}/nope"), "data folder not found"),
    "data root empty": (_train("data.root={IN}/empty"), "no .h5 files"),
    "data corrupt h5": (_train("data.root={IN}/corrupt"), "cannot read"),
    "data label rank": (_train("data.root={IN}/rank", "data.train=1", "data.val="),
                        "does not match image shape"),
    "nifti dataset.json not JSON": (_nifti("nn_json"), "dataset.json"),
    "nifti label of another shape": (_nifti("nn_shape"), "does not match"),
    "nifti label without image": (_nifti("nn_orphan"), "cas000"),
    "nifti image with NaN": (_nifti("nn_nan"), "NaN"),
    "monuseg split.json not JSON": (_monuseg("mo_json"), "cannot read"),
    "monuseg split.json not names": (_monuseg("mo_split"), "a list of tile names per split"),
    "monuseg without instance labels": (_monuseg("mo_noinst"), "labels_instance"),
    "spacing on data without spacing": (_train("data.spacing=median"),
                                        "needs the voxel spacing of each volume"),
    "spacing not two numbers": (_train("data.spacing=[1.5]"), "must be median or [y, x] in mm"),
    "spacing negative": (_train("data.spacing=[-1, 1]"), "must be median or [y, x] in mm"),
    "data size not multiple of 16": (_train("data.size=40"), "multiple of 16"),
    "data crop above size": (_train("data.crop=64"), "data.crop' must be a multiple of 16"),
    "train selects nothing": (_train("data.train=77"), "data.train='77' selects no volume"),
    "val selects nothing": (_train("data.val=77"), "data.val='77' selects no volume"),
    "train and val overlap": (_train("data.val=1"), "in both train and val"),
    "bad range": (_train("data.train=9-1"), "start 9 is after end 1"),
    "annotation unknown": (_train("data.annotation=points"), "no annotation 'points'"),
    "annotator unknown": (_train("data.annotation=sim:scrible"), "did you mean 'scribble'"),
    "annotation params unknown key": (
        _train("data.annotation=sim:scribble", "data.annotation_params.widht=3"),
        "did you mean 'width'"),
    "annotation params wrong type": (
        _train("data.annotation=sim:points", "data.annotation_params.radius=big"),
        "'radius' of annotator 'points' (data.annotation_params) must be an integer"),
    "annotation params without simulation": (
        _train("data.annotation_params.width=3"), "apply to simulated annotations only"),
    "annotation params reserved": (
        _train("data.annotation=sim:scribble", "data.annotation_params.seed=3"),
        "use data.annotation_seed"),
    "model params set by the data": (_train("model.params.num_classes=3"), "is set by weakseg"),
    "prior unknown": (_train("data.priors=[tag]"), "did you mean 'tags'"),
    "loss unknown": (_train("loss.0.name=partial"), "unknown loss 'partial'"),
    "loss weight nan": (_train("loss.0.weight=.nan"), "weight must be finite"),
    "loss weight negative": (_train("loss.0.weight=-1"), "weight must be finite and ≥ 0"),
    "loss params unknown key": (_train("loss.0.params.ignore=1"), "did you mean 'ignore_index'"),
    "loss needs a prior": (_train("loss.0.name=tags"), "add data.priors: [tags]"),
    "size bounds for the wrong number of classes": (
        _train(config="{IN}/bounds.yaml"), "does not fit the data: constraint 'size'"),
    "target classes differ": (
        _train("data.val=", "data.target.name=nifti", "data.target.root={IN}/nn_3classes",
               "data.target.val=3"), "source and target must share one class set"),
    "target key unknown": (_train("data.val=", "data.target.name=phantom",
                                  "data.target.anotation=none"),
                           "'data.target.anotation' (did you mean 'annotation'?)"),
    "target without a name": (_train("data.val=", "data.target.val=3"),
                              "data.target needs a 'name'"),
    "partial_ce on an unlabelled target": (
        _train("data.val=", "data.target.name=phantom", "data.target.train=0-1",
               "loss.0.domain=target"), "learns from labels, but data.target.annotation is none"),
    "target term without a target block": (_train("loss.0.domain=target"),
                                           "needs a data.target block"),
    "loss domain typo": (_train("loss.0.domain=targte"), "did you mean 'target'"),
    "source val with a target": (_train("data.target.name=phantom", "data.target.val=3"),
                                 "data.val='4' is set, but with data.target"),
    "prior sums above one": (_train("loss.0.name=marginal_prior",
                                    "loss.0.params.prior={RV: 0.7, LV: 0.6}"), "must sum to ≤ 1"),
    "prior of the wrong length": (_train("loss.0.name=marginal_prior",
                                         "loss.0.params.prior=[0.5, 0.5]"),
                                  "prior has 2 values but the data has 4 classes"),
    "prior names an unknown class": (_train("loss.0.name=marginal_prior",
                                            "loss.0.params.prior={rv: 0.1}"),
                                     "names class 'rv', which the data does not have (did you "
                                     "mean 'RV'?)"),
    "prior from_init without train.init": (
        _train("loss.0.name=marginal_prior", "loss.0.params.prior=from_init"),
        "train.init is unset"),
    "prior from_init of a run without full labels": (
        _train("loss.0.name=marginal_prior", "loss.0.params.prior=from_init",
               "train.init={CKPT}"), "stores no class fractions"),
    "estimates file missing": (_curriculum(estimates="{IN}/nope.npz"),
                               "data.target.estimates: estimates file"),
    "estimates file not an estimates file": (_curriculum(estimates="{IN}/garbage.pt"),
                                             "cannot read"),
    "estimates of other slices": (_curriculum(estimates="{IN}/estimates.npz"),
                                  "has no estimate for 4 of the 4 training slices (phantom_000"),
    "estimates of another canvas": (_curriculum("data.size=64", "data.target.params.size=64"),
                                    "was estimated on a 32² canvas at square resize, this run "
                                    "trains on a 64² canvas"),
    "target prior from labels": (_curriculum("data.target.priors=[tags]"),
                                 "data.target.priors 'tags' is computed from full label maps"),
    "estimated prior without estimates": (_curriculum("data.target.estimates="),
                                          "data.target.estimates is unset"),
    "estimated prior with a crop": (_curriculum("data.crop=16"),
                                    "gives class fractions of whole slices"),
    "label_distribution without its priors": (
        _curriculum("data.target.priors=[estimated_fractions]"),
        "needs 'cell_fractions' in every batch on data.target"),
    "full labels outside train": (_train("data.full_labels=4"),
                                  "data.full_labels='4' names patients outside "
                                  "data.train='1-3' (4)"),
    "full labels with full annotation": (_train("data.full_labels=1", "data.annotation=full"),
                                         "data.annotation is full"),
    "full labels select nothing": (_train("data.full_labels=case9*"), "selects no patient"),
    "full labels of unlabelled patients": (
        _train("data.name=nifti", "data.root={IN}/nn_partial", "data.annotation=none",
               "data.train=0-3", "data.val=", "data.full_labels=2-3"),
        "selects 2 patients but only 1 of them have full label maps"),
    "size bounds without estimates": (_train("data.priors=[bounds_from_estimates]"),
                                      "data.estimates is unset"),
    "prior_params typo": (_train("data.priors=[bounds_from_estimates]",
                                 "data.estimates={IN}/estimates.npz",
                                 "data.prior_params={bounds_from_estimates: {margn: 0.2}}"),
                          "has no parameter 'margn' (did you mean 'margin'?)"),
    "out is an existing file": (["train", "--config", "{CFG}", "--out", "{CFG}"],
                                "is an existing file"),
    "out already holds a run": (["train", "--config", "{CFG}", "--out", "{IN}/run"],
                                "already holds a run"),
    "resume without last.pt": (["train", "--config", "{CFG}", "--out", "{OUT}/typo", "--resume"],
                               "nothing to resume"),
    "unknown option": (["train", "--confg", "{CFG}"], "unrecognized arguments"),
}
CHECKPOINT_CASES = {
    "checkpoint missing": ("{IN}/nope.pt", "checkpoint not found"),
    "checkpoint is a folder": ("{IN}/run", "is a folder (it holds best.pt)"),
    "checkpoint not a checkpoint": ("{IN}/garbage.pt", "not a weakseg checkpoint, damaged"),
    "checkpoint with a pickled module": ("{IN}/pickled_module.pt", "refused as unsafe"),
    "checkpoint without keys": ("{IN}/no_keys.pt", "lacks 'config'"),
    "checkpoint config edited": ("{IN}/edited.pt", "weights do not fit the network"),
    "checkpoint config invalid": ("{IN}/bad_config.pt", "holds an invalid config"),
}

EVALUATE_CASES = {
    **{name: (["evaluate", "--checkpoint", ck, "--data", "{IN}/h5"], match)
       for name, (ck, match) in CHECKPOINT_CASES.items()},
    "data missing": (["evaluate", "--checkpoint", "{CKPT}", "--data", "{IN}/nope"],
                     "/nope does not exist; give a folder of .h5"),
    "data empty": (["evaluate", "--checkpoint", "{CKPT}", "--data", "{IN}/empty"],
                   "no supported images"),
    "threads zero": (["evaluate", "--checkpoint", "{CKPT}", "--data", "{IN}/h5", "--threads",
                      "0"], "argument --threads: must be a positive integer (CPU threads)"),
    "data is an h5 file": (["evaluate", "--checkpoint", "{CKPT}", "--data",
                            "{IN}/h5/patient001_frame01.h5"], "give the folder that holds it"),
    "data label rank": (["evaluate", "--checkpoint", "{CKPT}", "--data", "{IN}/rank"],
                        "does not match image shape"),
    "patients select nothing": (["evaluate", "--checkpoint", "{CKPT}", "--data", "{IN}/h5",
                                 "--patients", "77"], "selects no volume"),
    "patients bad range": (["evaluate", "--checkpoint", "{CKPT}", "--data", "{IN}/h5",
                            "--patients", "9-1"], "start 9 is after end 1"),
    "a volume without labels": (["evaluate", "--checkpoint", "{CKPT}", "--data",
                                 "{IN}/nn_partial"], "pass --allow-missing"),
    "no volume with labels": (["evaluate", "--checkpoint", "{CKPT}", "--data",
                               "{IN}/nn_unlabelled", "--allow-missing"],
                              "no volume can be scored"),
    "classes differ": (["evaluate", "--checkpoint", "{CKPT}", "--data", "{IN}/nn_3classes"],
                       "declares 3 classes but the checkpoint predicts 4"),
    "out is a folder": (["evaluate", "--checkpoint", "{CKPT}", "--data", "{IN}/h5", "--out",
                         "{OUT}"], "is a folder"),
    "out is not a csv": (["evaluate", "--checkpoint", "{CKPT}", "--data", "{IN}/h5", "--out",
                          "{IN}/h5/patient001_frame01.h5"], "must end in .csv"),
    "missing required option": (["evaluate", "--checkpoint", "{CKPT}"], "required: --data"),
}


def _predict(inp: str, out: str, *extra: str, ckpt: str = "{CKPT}") -> list[str]:
    return ["predict", "--checkpoint", ckpt, "--input", inp, "--output", out, "--quiet", *extra]


PREDICT_CASES = {
    **{name: (_predict("{IN}/h5", "{OUT}/pred", ckpt=ck), match)
       for name, (ck, match) in CHECKPOINT_CASES.items()},
    "output is the h5 input folder": (_predict("{IN}/h5", "{IN}/h5"), "is the input folder"),
    "output is the input folder with --force": (_predict("{IN}/h5", "{IN}/h5", "--force"),
                                                "is the input folder"),
    "output is the folder of an input file": (
        _predict("{IN}/h5/patient001_frame01.h5", "{IN}/h5", "--force"), "is the input folder"),
    "output is the NIfTI input folder": (_predict("{IN}/nn/imagesTs", "{IN}/nn/imagesTs"),
                                         "is the input folder"),
    "output is labelsTr of the input data set": (
        _predict("{IN}/nn/imagesTs", "{IN}/nn/labelsTr"), "holds input images or labels"),
    "output is labelsTr of the input root": (_predict("{IN}/nn", "{IN}/nn/labelsTr"),
                                             "holds input images or labels"),
    "output is imagesTr of the input data set": (
        _predict("{IN}/nn/imagesTs", "{IN}/nn/imagesTr"), "holds input images or labels"),
    "output inside the input": (_predict("{IN}/h5", "{IN}/h5/predictions"),
                                "holds input images or labels"),
    "output contains the input": (_predict("{IN}/nn/imagesTs", "{IN}/nn"),
                                  "holds input images or labels"),
    "output is an existing file": (_predict("{IN}/h5", "{CFG}"), "is an existing file"),
    "input missing": (_predict("{IN}/nope", "{OUT}/pred"), "does not exist; give a folder"),
    "threads not a number": (_predict("{IN}/h5", "{OUT}/pred", "--threads", "two"),
                             "argument --threads: must be a positive integer (CPU threads), "
                             "got 'two'"),
    "input without images": (_predict("{IN}/empty", "{OUT}/pred"), "no supported images"),
    "input corrupt": (_predict("{IN}/corrupt", "{OUT}/pred"), "cannot read"),
    "input with other channels": (_predict("{IN}/two_channels", "{OUT}/pred"),
                                  "has 2 channels but the model expects 1"),
}

if not torch.cuda.is_available():
    TRAIN_CASES["cuda on a CPU-only torch"] = (_train("train.device=cuda"), "train.device=cuda")
    EVALUATE_CASES["cuda on a CPU-only torch"] = (
        ["evaluate", "--checkpoint", "{CKPT}", "--data", "{IN}/h5", "--device", "cuda"],
        "--device=cuda but this torch")
    PREDICT_CASES["cuda on a CPU-only torch"] = (_predict("{IN}/h5", "{OUT}/pred", "--device",
                                                          "cuda"), "--device=cuda but this torch")

def _estimate(*extra: str, ckpt: str = "{CKPT}", out: str = "{OUT}/e.npz") -> list[str]:
    return ["estimate-priors", "--checkpoint", ckpt, "--config", "{CFG}", "--out", out,
            "--quiet", *extra]


ESTIMATE_CASES = {
    **{name: (_estimate(ckpt=ck), match) for name, (ck, match) in CHECKPOINT_CASES.items()},
    "config missing": (["estimate-priors", "--checkpoint", "{CKPT}", "--config",
                        "{IN}/missing.yaml", "--out", "{OUT}/e.npz"], "config file not found"),
    "classes differ": (_estimate("--set", "data.val=", "data.target.name=nifti",
                                 "data.target.root={IN}/nn_3classes", "data.target.train=0-1"),
                       "but data.target (nifti) has ['background', 'RV', 'Myo'] and 1; "
                       "estimate with a source run on the same classes"),
    "target without train": (_estimate("--set", "data.val=", "data.target.name=phantom",
                                       "data.target.val=3"), "data.target.train is unset"),
    "spacing differs from the checkpoint": (_estimate("--set", "data.spacing=[2, 2]"),
                                            "was trained on square resize (no spacing) but the "
                                            "config's data.spacing is 2 × 2 mm"),
    "grid does not divide the size": (_estimate("--grid", "5"),
                                      "--grid 5 must divide data.size 32 into equal cells"),
    "grid zero": (_estimate("--grid", "0"), "--grid 0 must divide data.size 32"),
    "out inside the data folder": (_estimate(out="{IN}/h5/e.npz"),
                                   "is inside the data folder"),
    "out inside the target's data folder": (
        _estimate("--set", "data.val=", "data.target.name=nifti", "data.target.root={IN}/nn",
                  "data.target.train=0-1", out="{IN}/nn/labelsTr/e.npz"),
        "is inside the data folder"),
    "out not npz": (_estimate(out="{OUT}/e.csv"), "must end in .npz"),
    "threads negative": (_estimate("--threads", "-2"), "--threads: must be a positive integer"),
    "out is a folder": (_estimate(out="{OUT}"), "is a folder"),
    "out exists": (_estimate(out="{IN}/estimates.npz"), "exists; pass --force to replace it"),
    "missing required option": (["estimate-priors", "--checkpoint", "{CKPT}", "--config",
                                 "{CFG}"], "required: --out"),
}
if not torch.cuda.is_available():
    ESTIMATE_CASES["cuda on a CPU-only torch"] = (_estimate("--device", "cuda"),
                                                  "--device=cuda but this torch")

def _regressor(*sets: str, out: str = "{OUT}/s.npz", extra: tuple[str, ...] = ()
               ) -> list[str]:
    argv = ["train-size-regressor", "--config", "{CFG}", "--out", out, "--quiet", *extra]
    return argv + (["--set", *sets] if sets else [])


REGRESSOR_CASES = {
    "no fully labelled image": (_regressor(), "data.full_labels is unset"),
    "holdout leaves no patient": (_regressor("data.full_labels=1"),
                                  "--holdout 1 leaves no fully labelled patient"),
    "full labels of unlabelled patients": (
        _regressor("data.name=nifti", "data.root={IN}/nn_partial", "data.annotation=none",
                   "data.train=0-3", "data.val=", "data.full_labels=2-3"),
        "selects 2 patients but only 1 of them have full label maps"),
    "steps zero": (_regressor("data.full_labels=1-2", extra=("--steps", "0")),
                   "--steps must be ≥ 1"),
    "out inside the data folder": (_regressor("data.full_labels=1-2", out="{IN}/h5/s.npz"),
                                   "is inside the data folder"),
    "out exists": (_regressor("data.full_labels=1-2", out="{IN}/estimates.npz"),
                   "exists; pass --force to replace it"),
    "out not npz": (_regressor(out="{OUT}/s.csv"), "must end in .npz"),
}

def _cam(*extra: str, ckpt: str = "{CKPT}", out: str = "{OUT}/c.npz",
         tags: bool = True) -> list[str]:
    return ["cam", "--checkpoint", ckpt, "--config", "{CFG}", "--out", out, *extra,
            *(["--set", "data.priors=[tags]"] if tags else [])]


CAM_CASES = {
    **{name: (_cam(ckpt=ck), match) for name, (ck, match) in CHECKPOINT_CASES.items()},
    "checkpoint not a CAM model": (_cam(), "is a unet2d model, not a CAM classifier"),
    "tags missing": (_cam(tags=False), "CAM pseudo-masks need image tags"),
    "threshold above 1": (_cam("--threshold", "1.5"), "CAM threshold must be a number in (0, 1)"),
    "threshold nan": (_cam("--threshold", "nan"), "CAM threshold must be a number in (0, 1)"),
    "threshold not a number": (_cam("--threshold", "high"), "invalid float value: 'high'"),
    "unknown refinement": (_cam("--refine", "crff"), "invalid choice: 'crff'"),
    "plot slices zero": (_cam("--plot", "--plot-slices", "0"), "--plot-slices must be ≥ 1"),
    "out inside the data folder": (_cam(out="{IN}/h5/c.npz"), "is inside the data folder"),
    "out not npz": (_cam(out="{OUT}/c.csv"), "must end in .npz"),
    "out exists": (_cam(out="{IN}/estimates.npz"), "exists; pass --force to replace it"),
}

DEMO_CASES = {
    "epochs zero": (["demo", "--epochs", "0", "--out", "{OUT}/demo"], "--epochs must be ≥ 1"),
    "size not multiple of 16": (["demo", "--size", "40", "--out", "{OUT}/demo"],
                                "--size must be a multiple of 16"),
    "epochs not a number": (["demo", "--epochs", "ten"], "invalid int value: 'ten'"),
    "out is an existing file": (["demo", "--out", "{CFG}"], "is an existing file"),
}

LIST_CASES = {
    "unknown kind": (["list", "model"], "invalid choice: 'model'"),
    "unknown command": (["trian"], "invalid choice: 'trian'"),
}


def _ids(cases: dict) -> list[str]:
    return list(cases)


@pytest.mark.parametrize("case", _ids(TRAIN_CASES))
def test_train_bad_input(case, inputs, tmp_path, capsys):
    argv, match = TRAIN_CASES[case]
    _assert_one_line_error(*_run(argv, inputs, tmp_path, capsys), match)
    assert not (tmp_path / "run" / "last.pt").exists()


@pytest.mark.parametrize("case", _ids(EVALUATE_CASES))
def test_evaluate_bad_input(case, inputs, tmp_path, capsys):
    argv, match = EVALUATE_CASES[case]
    _assert_one_line_error(*_run(argv, inputs, tmp_path, capsys), match)


@pytest.mark.parametrize("case", _ids(PREDICT_CASES))
def test_predict_bad_input(case, inputs, tmp_path, capsys):
    argv, match = PREDICT_CASES[case]
    _assert_one_line_error(*_run(argv, inputs, tmp_path, capsys), match)
    assert not (tmp_path / "pred").exists() or not any((tmp_path / "pred").iterdir())


@pytest.mark.parametrize("case", _ids(ESTIMATE_CASES))
def test_estimate_priors_bad_input(case, inputs, tmp_path, capsys):
    argv, match = ESTIMATE_CASES[case]
    _assert_one_line_error(*_run(argv, inputs, tmp_path, capsys), match)
    assert not list(tmp_path.glob("*.npz"))


@pytest.mark.parametrize("case", _ids(REGRESSOR_CASES))
def test_train_size_regressor_bad_input(case, inputs, tmp_path, capsys):
    argv, match = REGRESSOR_CASES[case]
    _assert_one_line_error(*_run(argv, inputs, tmp_path, capsys), match)
    assert not list(tmp_path.glob("*.npz"))


@pytest.mark.parametrize("case", _ids(CAM_CASES))
def test_cam_bad_input(case, inputs, tmp_path, capsys):
    argv, match = CAM_CASES[case]
    _assert_one_line_error(*_run(argv, inputs, tmp_path, capsys), match)
    assert not list(tmp_path.glob("*.npz")) and not list(tmp_path.glob("*.png"))


@pytest.mark.parametrize("case", _ids(DEMO_CASES))
def test_demo_bad_input(case, inputs, tmp_path, capsys):
    argv, match = DEMO_CASES[case]
    _assert_one_line_error(*_run(argv, inputs, tmp_path, capsys), match)


@pytest.mark.parametrize("case", _ids(LIST_CASES))
def test_list_and_parser_bad_input(case, inputs, tmp_path, capsys):
    argv, match = LIST_CASES[case]
    _assert_one_line_error(*_run(argv, inputs, tmp_path, capsys), match)


# ------------------------------------------------------------ what the options allow


def test_predict_force_replaces_earlier_predictions_only(inputs, tmp_path, capsys):
    out = tmp_path / "pred"
    argv = _predict(str(inputs["root"] / "h5"), str(out))
    argv = [a.replace("{CKPT}", str(inputs["ckpt"])) for a in argv]
    assert main(argv) == 0
    first = _digest(out)
    rc, err = _run(argv, inputs, tmp_path, capsys)
    _assert_one_line_error(rc, err, "pass --force to replace them")
    assert _digest(out) == first
    (out / "patient001_frame01.h5").write_bytes(b"stale")
    before = _digest(inputs["root"])
    assert main(argv + ["--force"]) == 0
    assert _digest(inputs["root"]) == before
    with h5py.File(out / "patient001_frame01.h5") as f:
        assert f["prediction"].shape == (4, 32, 32)


def test_predict_force_into_labels_folder_of_a_copy(inputs, tmp_path):
    """--force allows a data set's labelsTr that is not the input (e.g. pseudo-labels)."""
    copy = tmp_path / "nn"
    shutil.copytree(inputs["root"] / "nn", copy)
    argv = ["predict", "--checkpoint", str(inputs["ckpt"]), "--input", str(copy / "imagesTs"),
            "--output", str(copy / "labelsTr"), "--quiet"]
    assert main(argv) == 2
    before = _digest(copy / "labelsTr")
    assert main(argv + ["--force"]) == 0
    after = _digest(copy / "labelsTr")
    assert {k: v for k, v in after.items() if k in before} == before  # train labels untouched
    assert {"test000.nii.gz", "test001.nii.gz"} <= set(after)


def test_evaluate_allow_missing_skips_and_lists(inputs, tmp_path, capsys):
    csv_path = tmp_path / "m.csv"
    rc, err = _run(["evaluate", "--checkpoint", "{CKPT}", "--data", "{IN}/nn_partial",
                    "--allow-missing", "--quiet", "--out", str(csv_path)], inputs, tmp_path,
                   capsys)
    assert rc == 0
    assert "warning: skipping 1 volumes without a full label map: case003" in err
    rows = csv_path.read_text().splitlines()
    assert [r.split(",")[0] for r in rows[1:]] == ["case000", "case001", "case002", "mean"]


def test_evaluate_scores_the_dense_maps_of_a_mixed_folder(inputs, tmp_path, capsys):
    csv_path = tmp_path / "m.csv"
    rc, err = _run(["evaluate", "--checkpoint", "{CKPT}", "--data", "{IN}/nn_mixed", "--quiet",
                    "--out", str(csv_path)], inputs, tmp_path, capsys)
    assert rc == 0, err
    assert "note: 1 volumes have weak labels only and are not scored: case003" in err
    rows = csv_path.read_text().splitlines()
    assert [r.split(",")[0] for r in rows[1:]] == ["case000", "case001", "case002", "mean"]


def test_unexpected_error_is_one_line_with_debug_pointer(inputs, tmp_path, capsys, monkeypatch):
    import weakseg.cli as cli

    def boom(args):
        raise RuntimeError("something\nbroke")

    monkeypatch.setattr(cli, "_cmd_list", boom)
    assert main(["list"]) == 1
    err = capsys.readouterr().err.strip()
    assert err.count("\n") == 0 and "unexpected RuntimeError: something broke" in err
    assert "--debug" in err
    with pytest.raises(RuntimeError):
        main(["list", "--debug"])


def test_predict_error_midway_says_what_was_written(inputs, tmp_path, capsys, monkeypatch):
    import weakseg.engine.inference as inference

    out = tmp_path / "pred"
    out.mkdir()
    stale = out / ".weakseg-tmp-dead-patient001_frame01.h5"  # left by a killed predict
    stale.write_bytes(b"torn")
    real = inference.predict_probabilities
    calls = []

    def flaky(model, volume, **kw):
        calls.append(volume.key)
        if len(calls) == 2:
            raise MemoryError("out of memory")
        return real(model, volume, **kw)

    monkeypatch.setattr(inference, "predict_probabilities", flaky)
    rc, err = _run(_predict("{IN}/h5", str(out)), inputs, tmp_path, capsys)
    _assert_one_line_error(rc, err, "unexpected MemoryError: out of memory; wrote 1 of 4 label "
                                    "maps")
    assert "(patient001_frame01.h5); not written: patient002_frame01.h5, patient003" in err
    assert sorted(p.name for p in out.iterdir()) == ["patient001_frame01.h5"]  # no temp files
    with h5py.File(out / "patient001_frame01.h5") as f:
        assert f["prediction"].shape == (4, 32, 32)


def test_train_resume_cleans_stale_temps_and_no_fake_validation(inputs, tmp_path, capsys):
    from weakseg.config import load_config
    from weakseg.engine.trainer import train

    sets = ["data.val=", "train.epochs=2"]
    cfg = load_config(inputs["cfg"], sets)
    out = tmp_path / "run"
    train(cfg, out, progress=False, log=lambda s: None, stop_after_epoch=1)
    for name in (".weakseg-tmp-dead-last.pt", ".last.pt.k1ll3d"):
        (out / name).write_bytes(b"torn")
    argv = ["train", "--config", str(inputs["cfg"]), "--out", str(out), "--resume", "--quiet"]
    assert main(argv + ["--set", *sets]) == 0
    text = capsys.readouterr().out
    assert "no validation split (data.val unset): kept the last epoch, 2" in text
    assert "validation mean Dice" not in text
    assert not [p for p in out.iterdir() if p.name.startswith((".weakseg-tmp", ".last.pt."))]
    assert json.loads((out / "summary.json").read_text())["best_val_dice"] is None


def test_entry_point_prints_one_line(tmp_path):
    import subprocess
    import sys

    proc = subprocess.run(
        [sys.executable, "-m", "weakseg.cli", "train", "--config", str(tmp_path / "x.yaml")],
        capture_output=True, text=True, check=False)
    assert proc.returncode == 2
    assert proc.stderr.strip() == f"error: config file not found: {tmp_path / 'x.yaml'}"
