"""The ``weakseg`` command line.

Every subcommand is a function taking parsed arguments, so tests can call it.
User errors print one line (``error: ...``) and exit with status 2.
The commands import torch and the engine inside their functions, so that ``weakseg --help``
and argument errors answer without loading torch (about a second).
"""

from __future__ import annotations

import argparse
import math
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any, NoReturn

from weakseg.errors import WeaksegError
from weakseg.registry import Registry
from weakseg.safeio import check_output_file, check_output_folder, is_within, remove_stale_temps

__all__ = ["build_parser", "main"]

DESCRIPTION = """\
Train medical image segmentation networks from weak annotations
(scribbles, points, boxes, tags) with priors and constraints.

quick start:
  weakseg demo                                   full vs scribble supervision on the phantom
  weakseg train --config configs/acdc_scribbles_pce.yaml --out runs/pce
  weakseg evaluate --checkpoint runs/pce/best.pt --data ../shared/data/acdc --patients 91-100
  weakseg predict --checkpoint runs/pce/best.pt --input images/ --output predictions/
  weakseg report runs/pce runs/crf                   curves and overlays side by side (HTML)
  weakseg estimate-priors --checkpoint runs/src/best.pt --config configs/lge_curriculum.yaml \
      --out runs/lge_estimates.npz          target label distributions for curriculum DA
  weakseg cam --checkpoint runs/cam/best.pt --config configs/acdc_tags_cam_seg.yaml \
      --out runs/cam_masks.npz --refine size+crf --plot   CAM pseudo-masks from image tags
  weakseg train-size-regressor --config configs/acdc_semi_n3_points_size.yaml \
      --out runs/semi_n3_sizes.npz          size bounds from 3 fully labelled patients
  weakseg list losses
"""

EPILOG = """\
errors: a mistake in the input prints one line, 'error: <what is wrong and how to fix it>', and
exits with status 2; inputs are never modified. --debug shows the traceback of an unexpected
error. predict refuses to write into its input (--force replaces existing label maps elsewhere);
evaluate refuses volumes without a label map (--allow-missing skips and lists them);
estimate-priors and cam refuse to write inside a data folder (--force replaces an earlier file).
"""


def _cmd_demo(args: argparse.Namespace) -> int:
    from weakseg.demo import run_demo

    if args.epochs < 1:
        raise WeaksegError(f"--epochs must be ≥ 1, got {args.epochs}")
    if args.size < 16 or args.size % 16:
        raise WeaksegError(f"--size must be a multiple of 16 (U-Net down-sampling), got "
                           f"{args.size}")
    run_demo(args.out, epochs=args.epochs, size=args.size, progress=not args.quiet)
    return 0


def _cmd_train(args: argparse.Namespace) -> int:
    from weakseg.config import load_config
    from weakseg.engine.distributed import from_env
    from weakseg.engine.trainer import train

    overrides = list(args.set) + ([f"data.fold={args.fold}"] if args.fold is not None else [])
    cfg = load_config(args.config, overrides)
    out = Path(args.out) if args.out else Path("runs") / (
        Path(args.config).stem if args.config else "default"
    )
    result = train(cfg, out, resume=args.resume, progress=not args.quiet)
    if not from_env().main:  # torchrun: rank 0 reports
        return 0
    if math.isnan(result.best_score):
        print(f"no validation split (data.val unset): kept the last epoch, {result.best_epoch}; "
              f"checkpoints, logs and metrics in {out}")
    else:
        print(f"best epoch {result.best_epoch} (validation mean Dice {result.best_score:.4f}); "
              f"checkpoints, logs and metrics in {out}")
    return 0


def _cmd_evaluate(args: argparse.Namespace) -> int:
    from weakseg.data.folders import read_labelled
    from weakseg.data.splits import select_groups
    from weakseg.engine.inference import checkpoint_geometry
    from weakseg.engine.trainer import evaluate_volumes, load_model_from_checkpoint

    out = Path(args.out) if args.out else Path(args.checkpoint).parent / (
        f"evaluate_{Path(args.data).resolve().name}.csv"
    )
    check_output_file(out, "--out", ".csv")
    _check_exists(args.data, "--data", "a folder of .h5 files or an nnU-Net raw folder")
    device = _device_and_threads(args)
    model, ckpt = load_model_from_checkpoint(args.checkpoint)
    model.to(device)
    vset = read_labelled(args.data, num_classes=len(ckpt["class_names"]))
    volumes = select_groups(vset.volumes, args.patients)
    if not volumes:
        raise WeaksegError(f"--patients {args.patients} selects no volume in {args.data}")
    weak_only = [v.key for v in volumes if v.label is None and v.annotations]
    if weak_only and len(weak_only) < len(volumes):
        print(f"note: {len(weak_only)} volumes have weak labels only and are not scored: "
              f"{_listing(weak_only)}", file=sys.stderr)
        volumes = [v for v in volumes if v.key not in set(weak_only)]
    missing = [v.key for v in volumes if v.label is None]
    if missing:
        listed = _listing(missing)
        if not args.allow_missing or len(missing) == len(volumes):
            fix = ("no volume can be scored; give a folder with full label maps" if
                   len(missing) == len(volumes) else
                   "pass --allow-missing to score the others, or select volumes with --patients")
            raise WeaksegError(f"{len(missing)} of {len(volumes)} volumes have no full label map "
                               f"({listed}); {fix}")
        print(f"warning: skipping {len(missing)} volumes without a full label map: {listed}",
              file=sys.stderr)
        volumes = [v for v in volumes if v.label is not None]
    metrics = evaluate_volumes(model, volumes, list(ckpt["class_names"]), device=device,
                               tta=args.tta, progress=not args.quiet,
                               keep_largest=args.largest_component, **checkpoint_geometry(ckpt))
    metrics.write_csv(out)
    print(metrics.format_table())
    print(f"per-volume metrics of {len(volumes)} volumes written to {out}")
    return 0


def _cmd_predict(args: argparse.Namespace) -> int:
    import numpy as np
    from tqdm.auto import tqdm

    from weakseg.data.folders import check_prediction_targets, read_images, write_prediction
    from weakseg.engine.inference import (
        checkpoint_geometry,
        largest_component,
        predict_probabilities,
    )
    from weakseg.engine.trainer import load_model_from_checkpoint

    out = check_output_folder(args.output, "--output")
    _check_exists(args.input, "--input", "a folder (or file) of .h5 or NIfTI images")
    device = _device_and_threads(args)
    model, ckpt = load_model_from_checkpoint(args.checkpoint)
    model.to(device)
    volumes = read_images(args.input)
    if not volumes:
        raise WeaksegError(f"no images found in {args.input}")
    for vol in volumes:
        if vol.channels != int(ckpt["in_channels"]):
            raise WeaksegError(
                f"{vol.key} has {vol.channels} channels but the model expects "
                f"{ckpt['in_channels']}"
            )
    targets = check_prediction_targets(args.input, out, volumes, force=args.force,
                                       probabilities=args.probabilities)
    remove_stale_temps(out)  # left by a killed predict
    written: list[Path] = []
    try:
        for vol in tqdm(volumes, desc="predict", disable=args.quiet):
            probs = predict_probabilities(model, vol, device=device, tta=args.tta,
                                          **checkpoint_geometry(ckpt))
            pred = probs.argmax(axis=0).astype(np.uint8)
            if args.largest_component:
                pred = largest_component(pred)
            written += write_prediction(vol, pred, out,
                                        probs if args.probabilities else None)
    except KeyboardInterrupt:
        print(f"interrupted; {_partial(written, targets, out)}", file=sys.stderr)
        return 130
    except Exception as exc:
        detail = str(exc) if isinstance(exc, WeaksegError) else (
            f"unexpected {type(exc).__name__}: {exc}")
        raise WeaksegError(f"{detail}; {_partial(written, targets, out)}") from exc
    finally:
        remove_stale_temps(out)
    print(f"wrote {len(volumes)} label maps to {out}"
          + (" with class probabilities" if args.probabilities else ""))
    return 0


def _listing(names: list[str], shown: int = 5) -> str:
    more = f" and {len(names) - shown} more" if len(names) > shown else ""
    return ", ".join(names[:shown]) + more


def _check_exists(path: str, option: str, what: str) -> None:
    if not Path(path).expanduser().exists():
        raise WeaksegError(f"{option} {path} does not exist; give {what}")


def _cmd_estimate_priors(args: argparse.Namespace) -> int:
    from weakseg.adapt.curriculum import estimate_priors, estimated_block
    from weakseg.config import load_config
    from weakseg.data.estimates import save_estimates

    out = check_output_file(args.out, "--out", ".npz")
    cfg = load_config(args.config, args.set)
    where, block = estimated_block(cfg)
    for folder in _data_folders(cfg):
        if is_within(out, folder):
            raise WeaksegError(f"--out {out} is inside the data folder {folder} (an input, "
                               "never written to); write it elsewhere, e.g. "
                               f"runs/{out.name}")
    if out.exists() and not args.force:
        raise WeaksegError(f"--out {out} exists; pass --force to replace it")
    device = _device_and_threads(args)
    est = estimate_priors(args.checkpoint, cfg, grid=args.grid, tta=args.tta, device=device,
                          progress=not args.quiet)
    save_estimates(est, out)
    shares = ", ".join(f"{c} {v:.4f}" for c, v in zip(est.class_names, est.fractions.mean(0),
                                                       strict=True))
    print(f"estimated the class fractions of {len(est)} slices of {where} ({block.name}, "
          f"{len(set(est.keys))} volumes) and of their {est.grid} x {est.grid} grid cells "
          f"with {args.checkpoint} (mean: {shares}); written to {out}")
    print(f"train with {where}.priors: [estimated_fractions, estimated_cell_fractions] and "
          f"{where}.estimates: {out} (loss label_distribution)")
    return 0


def _cmd_train_size_regressor(args: argparse.Namespace) -> int:
    from weakseg.adapt.size_regression import train_size_regressor
    from weakseg.config import load_config
    from weakseg.data.estimates import save_estimates

    out = check_output_file(args.out, "--out", ".npz")
    cfg = load_config(args.config, args.set)
    for folder in _data_folders(cfg):
        if is_within(out, folder):
            raise WeaksegError(f"--out {out} is inside the data folder {folder} (an input, "
                               f"never written to); write it elsewhere, e.g. runs/{out.name}")
    if out.exists() and not args.force:
        raise WeaksegError(f"--out {out} exists; pass --force to replace it")
    for option in ("steps", "batch_size"):
        if getattr(args, option) < 1:
            raise WeaksegError(f"--{option.replace('_', '-')} must be ≥ 1, got "
                               f"{getattr(args, option)}")
    fit = train_size_regressor(cfg, holdout=args.holdout, steps=args.steps,
                               batch_size=args.batch_size, lr=args.lr,
                               device=_device_and_threads(args), progress=not args.quiet)
    est = fit.estimates
    save_estimates(est, out)
    print(f"size regressor fitted on {len(fit.fit_groups)} fully labelled patients "
          f"({', '.join(fit.fit_groups[:5])}{'…' if len(fit.fit_groups) > 5 else ''})")
    if est.mae is not None:
        errors = ", ".join(f"{c} {v:.4f}" for c, v in zip(est.class_names, est.mae, strict=True))
        print(f"its mean absolute error of the class fractions on {est.mae_slices} slices of "
              f"held-out patients ({', '.join(fit.heldout_groups)}): {errors}")
    else:
        print("its error is not measured (--holdout 0: no held-out patient)")
    print(f"estimated the class sizes of {fit.weak_slices} weakly labelled slices "
          f"({len(est)} training slices in all); written to {out}")
    print(f"train with data.priors: [bounds_from_estimates], data.estimates: {out} (bounds: "
          "estimate x (1 -+ data.prior_params.bounds_from_estimates.margin, default 0.1)) and "
          "a constraint loss {family: size}")
    return 0


def _cmd_cam(args: argparse.Namespace) -> int:
    from weakseg.config import load_config
    from weakseg.data.estimates import save_estimates
    from weakseg.pseudo.cam import cam_estimates, check_threshold

    out = check_output_file(args.out, "--out", ".npz")
    threshold = check_threshold(args.threshold)
    if args.plot_slices < 1:
        raise WeaksegError(f"--plot-slices must be ≥ 1, got {args.plot_slices}")
    cfg = load_config(args.config, args.set)
    plot = out.with_suffix(".png") if args.plot else None
    for path in (out, plot):
        for folder in _data_folders(cfg):
            if path is not None and is_within(path, folder):
                raise WeaksegError(f"--out {out} is inside the data folder {folder} (an input, "
                                   f"never written to); write it elsewhere, e.g. "
                                   f"runs/{out.name}")
    if out.exists() and not args.force:
        raise WeaksegError(f"--out {out} exists; pass --force to replace it")
    result = cam_estimates(args.checkpoint, cfg, threshold=threshold, refine=args.refine,
                           plot_slices=args.plot_slices if plot else 0,
                           device=_device_and_threads(args))
    est = result.estimates
    save_estimates(est, out)
    shares = ", ".join(f"{c} {v:.4f}" for c, v in zip(est.class_names, est.fractions.mean(0),
                                                       strict=True))
    print(f"CAM pseudo-masks (threshold {threshold:g}, refinement {args.refine}) of "
          f"{len(est)} training slices ({len(set(est.keys))} volumes) with {args.checkpoint} "
          f"(mean class fractions: {shares}); written to {out}")
    if est.mask_dice is not None:
        dice = ", ".join(f"{c} {v:.3f}" for c, v in zip(est.class_names[1:], est.mask_dice[1:],
                                                        strict=True))
        print(f"pseudo-mask Dice against the training slices' full label maps (a diagnostic, "
              f"not used for training): {dice}")
    if plot is not None and result.plot is not None:
        from weakseg.report.cam import plot_cams

        p = result.plot
        plot_cams(plot, p["images"][:, 0].numpy(), p["cams"].numpy(),
                  {"threshold": p["threshold"].numpy(), f"refined ({p['refine']})":
                   p["refined"].numpy(), "ground truth": p["truth"].numpy()},
                  tags=p["tags"].numpy(), row_titles=p["titles"], class_names=p["class_names"])
        print(f"picture of {len(p['titles'])} validation slices written to {plot}")
    print(f"train with data.priors: [estimated_masks], data.estimates: {out} and the loss "
          "pseudo_ce (configs/acdc_tags_cam_seg.yaml)")
    return 0


def _data_folders(cfg: Any) -> list[Path]:
    """The folders a config reads data from (``root``, ``params.root`` or ``params.roots``
    of ``data`` and ``data.target``), those that exist."""
    found: list[Path] = []
    for block in (cfg.data, cfg.data.target):
        if block is None:
            continue
        roots = block.params.get("roots") or []
        for root in [block.root, block.params.get("root"),
                     *([roots] if isinstance(roots, str) else list(roots))]:
            if isinstance(root, str) and Path(root).expanduser().is_dir():
                found.append(Path(root).expanduser())
    return found


def _cmd_report(args: argparse.Namespace) -> int:
    from weakseg.report.html import build_report

    out = Path(args.out) if args.out else Path(args.runs[0]) / "report.html"
    check_output_file(out, "--out", ".html")
    path = build_report(args.runs, out, volumes=args.volumes, overlays=not args.no_overlays)
    print(f"wrote {path} (open it in a browser; it needs no server)")
    return 0


def _partial(written: list[Path], targets: list[Path], out: Path) -> str:
    """Which predictions were written and which were not (after an error)."""
    done = ", ".join(p.name for p in written[:5]) or "none"
    todo = [t.name for t in targets if t not in written]
    left = ", ".join(todo[:5]) + (f" and {len(todo) - 5} more" if len(todo) > 5 else "")
    return (f"wrote {len(written)} of {len(targets)} label maps to {out} ({done}); "
            f"not written: {left}")


LIST_KINDS = ("models", "losses", "constraints", "objectives", "proposals", "priors",
              "datasets", "annotators")


def _registries() -> dict[str, Registry[Any]]:
    from weakseg.annotate import ANNOTATORS
    from weakseg.constrain.families import CONSTRAINTS
    from weakseg.constrain.objectives import OBJECTIVES
    from weakseg.data import DATASETS
    from weakseg.data.priors import PRIOR_REGISTRY
    from weakseg.losses import LOSSES
    from weakseg.losses.proposals.base import PROPOSALS
    from weakseg.models import MODELS

    found: dict[str, Registry[Any]] = {
        "models": MODELS, "losses": LOSSES, "constraints": CONSTRAINTS, "objectives": OBJECTIVES,
        "proposals": PROPOSALS, "priors": PRIOR_REGISTRY, "datasets": DATASETS,
        "annotators": ANNOTATORS,
    }
    return {k: found[k] for k in LIST_KINDS}


def _cmd_list(args: argparse.Namespace) -> int:
    registries = _registries()
    kinds = [args.kind] if args.kind else list(registries)
    for kind in kinds:
        reg = registries[kind]
        print(f"{kind}:")
        for name in reg.names():
            print(f"  {name:<20} {reg.help(name)}")
    return 0


def _threads(text: str) -> int:
    """``--threads N``: a positive integer (argparse turns the error into one line)."""
    try:
        value = int(text)
    except ValueError:
        value = 0
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be a positive integer (CPU threads), got "
                                         f"{text!r}")
    return value


def _device_and_threads(args: argparse.Namespace) -> Any:
    """The torch device of ``--device`` after ``--threads`` (when given) set the CPU threads."""
    import torch

    from weakseg.engine.device import resolve_device

    if args.threads is not None:
        torch.set_num_threads(args.threads)
    return resolve_device(args.device)


def _device_options(p: argparse.ArgumentParser) -> None:
    p.add_argument("--device", default="auto",
                   help="auto (CUDA when available), cpu, cuda, cuda:N or mps (default: auto)")
    p.add_argument("--threads", type=_threads, metavar="N",
                   help="CPU threads of torch (default: torch's own choice)")


def _inference_options(p: argparse.ArgumentParser) -> None:
    _device_options(p)
    p.add_argument("--tta", action="store_true",
                   help="test-time augmentation: average the softmax over the 4 flips")
    p.add_argument("--largest-component", action="store_true",
                   help="keep only the largest connected component (3D, face neighbours) of "
                        "every foreground class in the label map; the rest becomes background")


class _Parser(argparse.ArgumentParser):
    """argparse with one-line errors, like every other weakseg error."""

    def error(self, message: str) -> NoReturn:
        self.exit(2, f"error: {message}; see '{self.prog} --help'\n")


def build_parser() -> argparse.ArgumentParser:
    from weakseg import __version__

    debug: argparse.ArgumentParser = argparse.ArgumentParser(add_help=False)
    debug.add_argument("--debug", action="store_true", default=argparse.SUPPRESS,
                       help="show the full traceback of an unexpected error")
    parser = _Parser(
        prog="weakseg", description=DESCRIPTION, epilog=EPILOG, parents=[debug],
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--version", action="version", version=f"weakseg {__version__}")
    sub: Any = parser.add_subparsers(dest="command", metavar="command", parser_class=_Parser)

    p = sub.add_parser("demo", parents=[debug],
                       help="full vs scribble supervision on the embedded phantom (<5 min)")
    p.add_argument("--out", default="demo_out", help="output folder (default: demo_out)")
    p.add_argument("--epochs", type=int, default=30, help="epochs per run (default: 30)")
    p.add_argument("--size", type=int, default=64, help="phantom slice size (default: 64)")
    p.add_argument("--quiet", action="store_true", help="no progress bars")
    p.set_defaults(func=_cmd_demo)

    p = sub.add_parser("train", parents=[debug], help="train from a YAML recipe")
    p.add_argument("--config", help="YAML config (see configs/); defaults when omitted")
    p.add_argument("--set", action="extend", nargs="+", default=[], metavar="KEY=VALUE",
                   help="override config values, e.g. --set train.epochs=5 data.size=96 "
                        "(repeatable)")
    p.add_argument("--out", help="run folder (default: runs/<config name>)")
    p.add_argument("--fold", type=int, metavar="K",
                   help="cross-validation fold K of data.train (splits_final.json, else a "
                        "seeded 5-fold by patient); same as --set data.fold=K")
    p.add_argument("--resume", action="store_true",
                   help="continue the run in --out from its last.pt (an error if there is none)")
    p.add_argument("--quiet", action="store_true", help="no progress bars")
    p.set_defaults(func=_cmd_train)

    p = sub.add_parser("evaluate", parents=[debug],
                       help="3D Dice/HD95/ASD per volume of a checkpoint on a folder")
    p.add_argument("--checkpoint", required=True, help="best.pt or last.pt of a run")
    p.add_argument("--data", required=True, help="folder of .h5 files or an nnU-Net raw folder")
    p.add_argument("--patients", help="only these patients/cases, e.g. 91-100")
    p.add_argument("--out", help="CSV path (default: next to the checkpoint)")
    _inference_options(p)
    p.add_argument("--allow-missing", action="store_true",
                   help="skip (and list) volumes without a full label map instead of failing")
    p.add_argument("--quiet", action="store_true", help="no progress bars")
    p.set_defaults(func=_cmd_evaluate)

    p = sub.add_parser("predict", parents=[debug],
                       help="write label maps for every image of a folder")
    p.add_argument("--checkpoint", required=True, help="best.pt of a run")
    p.add_argument("--input", required=True, help="folder (or file) of .h5 or NIfTI images")
    p.add_argument("--output", required=True,
                   help="output folder (same format as the input); never the input folder")
    _inference_options(p)
    p.add_argument("--probabilities", action="store_true",
                   help="also write the softmax probabilities (NIfTI: <case>_probabilities"
                        ".nii.gz, 4D; h5: a 'probabilities' data set)")
    p.add_argument("--force", action="store_true",
                   help="replace existing label maps in --output, or write inside the data set's "
                        "folders; input files are never overwritten")
    p.add_argument("--quiet", action="store_true", help="no progress bars")
    p.set_defaults(func=_cmd_predict)

    # the options every command that writes an estimates file shares
    estimates = argparse.ArgumentParser(add_help=False)
    estimates.add_argument("--set", action="extend", nargs="+", default=[], metavar="KEY=VALUE",
                           help="override config values, as for train")
    _device_options(estimates)
    estimates.add_argument("--force", action="store_true",
                           help="replace an existing --out file")

    p = sub.add_parser("estimate-priors", parents=[debug, estimates],
                       help="estimate the class fractions of the target's training slices "
                            "with a source model (curriculum domain adaptation)")
    p.add_argument("--checkpoint", required=True,
                   help="best.pt of a run trained on the source domain")
    p.add_argument("--config", required=True,
                   help="the adaptation config: its data.target.train slices are estimated "
                        "(data.train without a target block), on its data.size / data.spacing")
    p.add_argument("--out", required=True,
                   help="the .npz file to write (never inside a data folder)")
    p.add_argument("--grid", type=int, default=4,
                   help="g: class fractions also per cell of a g x g grid; must divide "
                        "data.size (default: 4)")
    p.add_argument("--tta", action="store_true",
                   help="average the softmax over the 4 flips of each slice")
    p.add_argument("--quiet", action="store_true", help="no progress bars")
    p.set_defaults(func=_cmd_estimate_priors)

    p = sub.add_parser("train-size-regressor", parents=[debug, estimates],
                       help="fit a size regressor on the data.full_labels patients and "
                            "estimate the class sizes of the other training slices "
                            "(curriculum size bounds)")
    p.add_argument("--config", required=True,
                   help="a semi-supervised config (data.full_labels); its data.train slices "
                        "are estimated on its data.size / data.spacing")
    p.add_argument("--out", required=True,
                   help="the .npz estimates file to write (never inside a data folder)")
    p.add_argument("--holdout", type=int, default=1,
                   help="fully labelled patients held out to measure the regressor's error "
                        "(default: 1; 0: fit on all, no error measured)")
    p.add_argument("--steps", type=int, default=1000, help="training steps (default: 1000)")
    p.add_argument("--batch-size", type=int, default=16, help="slices per step (default: 16)")
    p.add_argument("--lr", type=float, default=1e-3, help="Adam learning rate (default: 1e-3)")
    p.add_argument("--quiet", action="store_true", help="no progress bars")
    p.set_defaults(func=_cmd_train_size_regressor)

    p = sub.add_parser("cam", parents=[debug, estimates],
                       help="pseudo-masks of the training slices from the class activation "
                            "maps of a classifier trained on image tags (C13)")
    p.add_argument("--checkpoint", required=True,
                   help="best.pt of a CAM classifier run (model unet2d_cam, loss tag_bce)")
    p.add_argument("--config", required=True,
                   help="config whose data.train slices get masks, on its data.size / "
                        "data.spacing; its data.priors must list tags")
    p.add_argument("--out", required=True,
                   help="the .npz estimates file to write (never inside a data folder)")
    p.add_argument("--threshold", type=float, default=0.3,
                   help="CAM threshold in (0, 1): below it in every present class, background "
                        "(default: 0.3)")
    p.add_argument("--refine", default="none",
                   choices=("none", "size", "crf", "graphcut", "size+crf", "size+graphcut"),
                   help="none: threshold only; size: cut/grow each class to the size bounds "
                        "of bounds_from_tags; crf / graphcut: dense CRF mean-field / Potts "
                        "graph cut with the CAM as unary; size+...: both (default: none)")
    p.add_argument("--plot", action="store_true",
                   help="also write <out>.png: raw CAM, thresholded and refined masks and ground "
                        "truth of validation slices (data.val)")
    p.add_argument("--plot-slices", type=int, default=6,
                   help="validation slices in the picture (default: 6)")
    p.set_defaults(func=_cmd_cam)

    p = sub.add_parser("report", parents=[debug],
                       help="one HTML page to browse runs side by side (curves, overlays)")
    p.add_argument("runs", nargs="+", metavar="RUN_DIR", help="run folders of 'weakseg train'")
    p.add_argument("--out", help="HTML file (default: <first RUN_DIR>/report.html)")
    p.add_argument("--volumes", type=int, default=4,
                   help="validation volumes shown with overlays (default: 4)")
    p.add_argument("--no-overlays", action="store_true",
                   help="summary and curves only (no data or checkpoint is read)")
    p.set_defaults(func=_cmd_report)

    p = sub.add_parser("list", parents=[debug],
                       help="registered models, losses, constraints, objectives, proposals, "
                            "priors, data sets and annotators")
    p.add_argument("kind", nargs="?", choices=LIST_KINDS)
    p.set_defaults(func=_cmd_list)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Run the command line; returns the exit status (0 ok, 2 user error, 1 internal error,
    130 interrupted)."""
    parser = build_parser()
    args = parser.parse_args(argv)
    if not getattr(args, "command", None):
        parser.print_help()
        return 0
    try:
        return int(args.func(args))
    except WeaksegError as exc:
        if getattr(args, "debug", False):
            raise
        print(f"error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        hint = {"train": "; rerun with --resume to continue from the last epoch",
                "demo": "; rerun the demo to continue where it stopped"}.get(args.command, "")
        print(f"interrupted{hint}", file=sys.stderr)
        return 130
    except Exception as exc:  # a bug or an input we do not check yet: one line, not a traceback
        if getattr(args, "debug", False):
            raise
        what = " ".join(str(exc).split())[:200]
        print(f"error: unexpected {type(exc).__name__}: {what}; this is a weakseg bug or an "
              f"unchecked input, rerun with --debug for the traceback and report it",
              file=sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(main())
