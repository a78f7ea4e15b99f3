"""The ``weakseg`` command line.

Every subcommand is a function taking parsed arguments, so tests can call it.
User errors print one line (``error: ...``) and exit with status 2.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence
from pathlib import Path

from weakseg.errors import WeaksegError

__all__ = ["build_parser", "main"]

DESCRIPTION = """\
Train medical image segmentation networks from weak annotations
(scribbles, points, boxes, tags) with priors and constraints.

quick start:
  weakseg demo                                   full vs scribble supervision on the phantom
  weakseg train --config configs/acdc_scribbles_pce.yaml --out runs/pce
  weakseg evaluate --checkpoint runs/pce/best.pt --data ../shared/data/acdc --patients 91-100
  weakseg predict --checkpoint runs/pce/best.pt --input images/ --output predictions/
  weakseg list losses
"""


def _cmd_demo(args: argparse.Namespace) -> int:
    from weakseg.demo import run_demo

    run_demo(args.out, epochs=args.epochs, size=args.size, progress=not args.quiet)
    return 0


def _cmd_train(args: argparse.Namespace) -> int:
    from weakseg.config import load_config
    from weakseg.engine.trainer import train

    cfg = load_config(args.config, args.set)
    out = Path(args.out) if args.out else Path("runs") / (
        Path(args.config).stem if args.config else "default"
    )
    result = train(cfg, out, resume=args.resume, progress=not args.quiet)
    print(f"best epoch {result.best_epoch} (validation mean Dice {result.best_score:.4f}); "
          f"checkpoints, logs and metrics in {out}")
    return 0


def _cmd_evaluate(args: argparse.Namespace) -> int:
    from weakseg.data.folders import read_labelled
    from weakseg.data.splits import select_groups
    from weakseg.engine.trainer import evaluate_volumes, load_model_from_checkpoint

    model, ckpt = load_model_from_checkpoint(args.checkpoint)
    vset = read_labelled(args.data, num_classes=len(ckpt["class_names"]))
    volumes = select_groups(vset.volumes, args.patients)
    if not volumes:
        raise WeaksegError(f"--patients {args.patients} selects no volume in {args.data}")
    metrics = evaluate_volumes(model, volumes, list(ckpt["class_names"]), size=int(ckpt["size"]),
                               progress=not args.quiet)
    out = Path(args.out) if args.out else Path(args.checkpoint).parent / (
        f"evaluate_{Path(args.data).name}.csv"
    )
    metrics.write_csv(out)
    print(metrics.format_table())
    print(f"per-volume metrics written to {out}")
    return 0


def _cmd_predict(args: argparse.Namespace) -> int:
    from tqdm.auto import tqdm

    from weakseg.data.folders import read_images, write_prediction
    from weakseg.engine.inference import predict_volume
    from weakseg.engine.trainer import load_model_from_checkpoint

    model, ckpt = load_model_from_checkpoint(args.checkpoint)
    volumes = read_images(args.input)
    if not volumes:
        raise WeaksegError(f"no images found in {args.input}")
    for vol in volumes:
        if vol.channels != int(ckpt["in_channels"]):
            raise WeaksegError(
                f"{vol.key} has {vol.channels} channels but the model expects "
                f"{ckpt['in_channels']}"
            )
    out = Path(args.output)
    for vol in tqdm(volumes, desc="predict", disable=args.quiet):
        pred = predict_volume(model, vol, size=int(ckpt["size"]))
        write_prediction(vol, pred, out)
    print(f"wrote {len(volumes)} label maps to {out}")
    return 0


def _cmd_list(args: argparse.Namespace) -> int:
    from weakseg.annotate import ANNOTATORS
    from weakseg.data import DATASETS
    from weakseg.losses import LOSSES
    from weakseg.models import MODELS

    registries = {"models": MODELS, "losses": LOSSES, "datasets": DATASETS,
                  "annotators": ANNOTATORS}
    kinds = [args.kind] if args.kind else list(registries)
    for kind in kinds:
        reg = registries[kind]
        print(f"{kind}:")
        for name in reg.names():
            print(f"  {name:<20} {reg.help(name)}")
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="weakseg", description=DESCRIPTION,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    from weakseg import __version__

    parser.add_argument("--version", action="version", version=f"weakseg {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="command")

    p = sub.add_parser("demo", help="full vs scribble supervision on the embedded phantom (<5 min)")
    p.add_argument("--out", default="demo_out", help="output folder (default: demo_out)")
    p.add_argument("--epochs", type=int, default=30, help="epochs per run (default: 30)")
    p.add_argument("--size", type=int, default=64, help="phantom slice size (default: 64)")
    p.add_argument("--quiet", action="store_true", help="no progress bars")
    p.set_defaults(func=_cmd_demo)

    p = sub.add_parser("train", help="train from a YAML recipe")
    p.add_argument("--config", help="YAML config (see configs/); defaults when omitted")
    p.add_argument("--set", action="extend", nargs="+", default=[], metavar="KEY=VALUE",
                   help="override config values, e.g. --set train.epochs=5 data.size=96 "
                        "(repeatable)")
    p.add_argument("--out", help="run folder (default: runs/<config name>)")
    p.add_argument("--resume", action="store_true", help="continue the run in --out from last.pt")
    p.add_argument("--quiet", action="store_true", help="no progress bars")
    p.set_defaults(func=_cmd_train)

    p = sub.add_parser("evaluate", help="3D Dice/HD95/ASD per volume of a checkpoint on a folder")
    p.add_argument("--checkpoint", required=True, help="best.pt or last.pt of a run")
    p.add_argument("--data", required=True, help="folder of .h5 files or an nnU-Net raw folder")
    p.add_argument("--patients", help="only these patients/cases, e.g. 91-100")
    p.add_argument("--out", help="CSV path (default: next to the checkpoint)")
    p.add_argument("--quiet", action="store_true", help="no progress bars")
    p.set_defaults(func=_cmd_evaluate)

    p = sub.add_parser("predict", help="write label maps for every image of a folder")
    p.add_argument("--checkpoint", required=True, help="best.pt of a run")
    p.add_argument("--input", required=True, help="folder (or file) of .h5 or NIfTI images")
    p.add_argument("--output", required=True, help="output folder (same format as the input)")
    p.add_argument("--quiet", action="store_true", help="no progress bars")
    p.set_defaults(func=_cmd_predict)

    p = sub.add_parser("list", help="registered models, losses, data sets and annotators")
    p.add_argument("kind", nargs="?", choices=["models", "losses", "datasets", "annotators"])
    p.set_defaults(func=_cmd_list)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if not getattr(args, "command", None):
        parser.print_help()
        return 0
    try:
        return int(args.func(args))
    except WeaksegError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("interrupted; rerun with --resume to continue from the last epoch", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
