"""ACDC "less than a click" benchmark (issue 10): tags only through CAM pseudo-masks,
points + curriculum size bounds, semi-supervision with N fully labelled patients, and the
anatomical knowledge priors, next to full supervision.

Usage (every training is `weakseg train --resume`, every other stage is skipped when its
output exists, so an interrupted benchmark continues where it stopped):

    python benchmarks/acdc_less_than_a_click.py plan                    # every command, nothing run
    python benchmarks/acdc_less_than_a_click.py run tags --threads 1 --dry-run
    python benchmarks/acdc_less_than_a_click.py run references tags curriculum semi3 --threads 1
    python benchmarks/acdc_less_than_a_click.py run semi_sweep knowledge --threads 1
    python benchmarks/acdc_less_than_a_click.py report \
        --notes benchmarks/acdc_less_than_a_click_notes.md
    python benchmarks/acdc_less_than_a_click.py plot                    # semi_supervised.png only
    python benchmarks/acdc_less_than_a_click.py overlay

Rows (``<name>`` is seed 0, ``<name>@<seed>`` retrains with ``train.seed=<seed>``; every
stage of a seeded row uses that seed, its CAM classifier and size regressor included):

- ``full``, ``points_size_lagrangian_per_image``: ``configs/acdc_constraints_<name>.yaml``
  (full supervision; points + size bounds from tags and training-set statistics, the
  "oracle-statistics bounds"). Shared with acdc_proposals: a finished run of the same name
  in $WEAKSEG_BENCH_SHARED (default benchmarks/results/acdc_proposals) is reused, never
  written to.
- ``tags_cam``: the CAM classifier (``configs/acdc_tags_cam.yaml``; its Dice is the arg-max
  of the raw class maps).
- ``tags_cam_seg``, ``tags_cam_<refine>_seg`` (refine ``size``, ``crf``, ``graphcut``,
  ``size_crf``, ``size_graphcut``): three stages, train the classifier ``tags_cam[@seed]``
  → ``weakseg cam --refine <refine> --plot`` writes ``tags_cam[@seed]/cam_<refine>.npz`` →
  train ``configs/acdc_tags_cam_seg.yaml`` on those masks.
- ``semi_n<N>_<term>``: ``configs/acdc_semi_n3_<term>.yaml`` with ``data.full_labels`` set to
  the first N training patients (021, 021-023, 021-027); ``pce`` is the supervised term
  alone, ``entropy`` / ``size`` / any other shipped term the "with" candidates, and
  ``semi_n3_points_size`` the points + curriculum size bounds row. A config whose
  ``data.priors`` lists ``bounds_from_estimates`` gets first stages
  ``weakseg train-size-regressor``: ``--holdout 1`` writing ``_sizes/<row>_heldout.npz``
  (its error on the last fully labelled patient; skipped for N = 1) and ``--holdout 0``
  writing ``_sizes/<row>.npz`` (fitted on all N), then trains with ``data.estimates``
  pointing at the latter.
- ``points_size_knowledge``: ``configs/acdc_click_<name>.yaml`` (any ``acdc_click_*`` row).
- ``<row>_lcc``: ``weakseg evaluate --largest-component`` of ``<row>``'s selected model on
  the validation patients (post-processing form of the one-component prior; no training).

Groups (expanded over --seeds, default 0,1): ``references``, ``tags``, ``curriculum``,
``semi3``, ``semi_sweep`` (N = 1 and 7 for ``pce`` and the best "with" term at N = 3, so run
it after ``semi3``), ``knowledge``, ``all``.

Results in benchmarks/results/acdc_less_than_a_click/<row> (or $WEAKSEG_BENCH_RESULTS/<row>).
"""

from __future__ import annotations

import argparse
import csv
import datetime
import os
import re
import shlex
import shutil
import subprocess
import sys
from dataclasses import dataclass, field
from pathlib import Path

import yaml

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import load_run, md_table, row_stats  # noqa: E402
from acdc_scribbles import CLASSES, REPO, _machine_line  # noqa: E402
from acdc_scribbles import overlay as _overlay  # noqa: E402

RESULTS = Path(os.environ.get("WEAKSEG_BENCH_RESULTS")
               or REPO / "benchmarks" / "results" / "acdc_less_than_a_click")
#: finished runs of the SHARED rows are also looked up here (read only); "" turns it off
_shared_env = os.environ.get("WEAKSEG_BENCH_SHARED")
SHARED_FROM = (None if _shared_env == "" else
               Path(_shared_env or REPO / "benchmarks" / "results" / "acdc_proposals"))
DOCS = REPO / "docs" / "benchmarks"
DOC_NAME = "acdc_less_than_a_click.md"
PLOT_NAME = "semi_supervised.png"
SHARED = {"full", "points_size_lagrangian_per_image"}
SEEDS = (0, 1)
#: data.full_labels of N fully labelled patients: the first N training patients
FULL_LABELS = {1: "21", 3: "21-23", 7: "21-27"}
SEMI_NS = (1, 3, 7)
#: the supervised-only semi row and the "with an unlabelled term" candidates of the plan
SEMI_WITHOUT = "pce"
SEMI_WITH = ("entropy", "size")
CAM_THRESHOLD = 0.3
CLASSIFIER = "tags_cam"
ORACLE_POINTS = "points_size_lagrangian_per_image"
CURRICULUM_POINTS = "semi_n3_points_size"
KNOWLEDGE = "points_size_knowledge"
GROUPS: dict[str, list[str]] = {
    "references": ["full", ORACLE_POINTS],
    "tags": ["tags_cam_seg", "tags_cam_size_seg", "tags_cam_size_crf_seg"],
    "curriculum": [CURRICULUM_POINTS],
    "semi3": [f"semi_n3_{t}" for t in (SEMI_WITHOUT, *SEMI_WITH)],
    "semi_sweep": [],  # filled from the finished semi3 rows: see _semi_sweep
    "knowledge": [KNOWLEDGE, f"{ORACLE_POINTS}_lcc", f"{KNOWLEDGE}_lcc"],
}
SECTIONS = ["Reference", "Tags only (CAM)", "Points + size bounds",
            "Semi-supervised (N fully labelled patients)", "Knowledge priors (C14)"]
TARGETS = {"tags": 50.0, "curriculum_points": 2.0, "semi": 85.0}

_CAM_ROW = re.compile(r"^tags_cam_(?:(?P<refine>[a-z_]+?)_)?seg$")
_SEMI_ROW = re.compile(r"^semi_n(?P<n>\d+)_(?P<term>[a-z0-9_]+)$(?<!_lcc)")


# ------------------------------------------------------------------ rows → stages


@dataclass
class Stage:
    """One step of a row: ``done`` exists when it has finished."""

    what: str
    cmd: list[str]
    done: Path
    resume: Path | None = None  # train: last.pt, whose presence adds --resume
    log: Path | None = None     # short commands: their stdout is also written here
    notes: list[str] = field(default_factory=list)

    def command(self) -> list[str]:
        extra = ["--resume"] if self.resume is not None and self.resume.exists() else []
        if extra and "--set" in self.cmd:
            i = self.cmd.index("--set")
            return [*self.cmd[:i], *extra, *self.cmd[i:]]
        return self.cmd + extra


def _split(name: str) -> tuple[str, int]:
    base, _, seed = name.partition("@")
    return base, int(seed or 0)


def _suffix(seed: int) -> str:
    return f"@{seed}" if seed else ""


def _cli(*args: str) -> list[str]:
    return [sys.executable, "-m", "weakseg.cli", *args]


def _rel(path: Path) -> str:
    """Paths under the repository as relative ones (shorter commands)."""
    try:
        return str(path.relative_to(REPO))
    except ValueError:
        return str(path)


def run_folder(name: str) -> Path:
    """Where the finished run ``name`` lives: RESULTS, or SHARED_FROM for a shared row
    finished there and not here."""
    base, _ = _split(name)
    own = RESULTS / name
    if (base in SHARED and SHARED_FROM is not None and not (own / "summary.json").exists()
            and (SHARED_FROM / name / "summary.json").exists()):
        return SHARED_FROM / name
    return own


def config_of(base: str) -> tuple[Path, list[str]]:
    """``(config, extra overrides)`` of a training row (seed and threads excluded)."""
    if base in SHARED:
        return REPO / "configs" / f"acdc_constraints_{base}.yaml", []
    if base == CLASSIFIER:
        return REPO / "configs" / "acdc_tags_cam.yaml", []
    if _CAM_ROW.match(base):
        return REPO / "configs" / "acdc_tags_cam_seg.yaml", []
    m = _SEMI_ROW.match(base)
    if m:
        n, term = int(m["n"]), m["term"]
        cfg = REPO / "configs" / f"acdc_semi_n3_{term}.yaml"
        if n == 3:
            return cfg, []
        if n not in FULL_LABELS:
            raise SystemExit(f"{base}: N = {n} is not one of {sorted(FULL_LABELS)} "
                             "(FULL_LABELS in this script)")
        return cfg, [f"data.full_labels={FULL_LABELS[n]}"]
    return REPO / "configs" / f"acdc_click_{base}.yaml", []


def _uses_size_regressor(config: Path) -> bool:
    data = (yaml.safe_load(config.read_text()) or {}).get("data") or {}
    return "bounds_from_estimates" in (data.get("priors") or [])


def _train_stage(name: str, config: Path, sets: list[str], threads: int) -> Stage:
    _, seed = _split(name)
    out = RESULTS / name
    cmd = _cli("train", "--config", _rel(config), "--out", _rel(out), "--quiet",
               "--set", f"train.threads={threads}", *sets)
    if seed:
        cmd.append(f"train.seed={seed}")
    return Stage(f"train {name}", cmd, out / "summary.json", resume=out / "last.pt")


def stages(name: str, threads: int) -> list[Stage]:
    """Every stage of row ``name`` in order (those of the rows it starts from included)."""
    base, seed = _split(name)
    if base.endswith("_lcc"):
        parent = base[: -len("_lcc")] + _suffix(seed)
        folder = run_folder(parent)
        config = yaml.safe_load(config_of(_split(parent)[0])[0].read_text())["data"]
        out = RESULTS / name / "evaluate_lcc.csv"
        cmd = _cli("evaluate", "--checkpoint", _rel(folder / "best.pt"),
                   "--data", config["root"], "--patients", str(config["val"]),
                   "--largest-component", "--out", _rel(out), "--quiet")
        return [*stages(parent, threads), Stage(f"evaluate {parent} + largest component",
                                                cmd, out, log=out.with_suffix(".log"))]
    if base in SHARED and run_folder(name) != RESULTS / name:
        folder = run_folder(name)
        return [Stage(f"train {name} (reused from {_rel(folder)})", [], folder / "summary.json")]
    config, sets = config_of(base)
    if not config.exists():
        raise SystemExit(f"{name}: no config {_rel(config)} (see the row list: --help)")
    m = _CAM_ROW.match(base)
    if m:
        refine = (m["refine"] or "none").replace("_", "+")
        classifier = CLASSIFIER + _suffix(seed)
        masks = RESULTS / classifier / f"cam_{m['refine'] or 'none'}.npz"
        cam = _cli("cam", "--checkpoint", _rel(RESULTS / classifier / "best.pt"),
                   "--config", _rel(config), "--out", _rel(masks),
                   "--threshold", f"{CAM_THRESHOLD:g}", "--refine", refine, "--plot")
        return [*stages(classifier, threads),
                Stage(f"CAM pseudo-masks ({refine}) of {classifier}", cam, masks,
                      log=masks.with_suffix(".log")),
                _train_stage(name, config, [*sets, f"data.estimates={_rel(masks)}"], threads)]
    if _uses_size_regressor(config):
        # the bounds: a regressor fitted on all N patients (--holdout 0); its error: the same
        # fit without the last patient, measured on it (--holdout 1; none for N = 1)
        m = _SEMI_ROW.match(base)
        reg_sets = [*sets, *([f"train.seed={seed}"] if seed else [])]
        found = []
        for holdout, sizes in [(1, RESULTS / "_sizes" / f"{name}_heldout.npz"),
                               (0, RESULTS / "_sizes" / f"{name}.npz")]:
            if holdout and m and int(m["n"]) == 1:
                continue
            reg = _cli("train-size-regressor", "--config", _rel(config), "--out", _rel(sizes),
                       "--holdout", str(holdout), "--quiet")
            if reg_sets:
                reg += ["--set", *reg_sets]
            what = "error of the size regressor" if holdout else "size regressor"
            found.append(Stage(f"{what} of {name} (--holdout {holdout})", reg, sizes,
                               log=sizes.with_suffix(".log")))
        return [*found,
                _train_stage(name, config, [*sets, f"data.estimates={_rel(sizes)}"], threads)]
    return [_train_stage(name, config, sets, threads)]


# ------------------------------------------------------------------ groups


def _semi_sweep(seeds: tuple[int, ...]) -> tuple[list[str], str]:
    """N = 1, 7 rows of the supervised term and of the best "with" term at N = 3."""
    best = _best_semi_term()
    terms = [SEMI_WITHOUT, best] if best else [SEMI_WITHOUT, *SEMI_WITH]
    why = (f"best 'with' term at N = 3: {best}" if best else
           "no semi_n3_<term> row finished yet: every candidate listed; run semi3 first")
    names = [f"semi_n{n}_{t}" for t in terms for n in SEMI_NS if n != 3]
    return [n + _suffix(s) for n in names for s in seeds], why


def expand(names: list[str], seeds: tuple[int, ...]) -> list[str]:
    """Group names → rows × seeds (a row name given as such is kept as it is)."""
    out: list[str] = []
    for name in names:
        if name == "all":
            out += expand(list(GROUPS), seeds)
        elif name == "semi_sweep":
            rows, why = _semi_sweep(seeds)
            print(f"# semi_sweep: {why}", flush=True)
            out += rows
        elif name in GROUPS:
            out += [r + _suffix(s) for r in GROUPS[name] for s in seeds]
        else:
            out.append(name)
    return list(dict.fromkeys(out))


def run(names: list[str], threads: int, seeds: tuple[int, ...], dry_run: bool) -> None:
    env = {**os.environ, "OMP_NUM_THREADS": str(threads), "MKL_NUM_THREADS": str(threads)}
    rows = expand(names, seeds)
    trainings, seen = 0, set()
    for name in rows:
        print(f"## {name}", flush=True)
        todo = stages(name, threads)
        if todo[-1].done.exists():  # finished: its earlier stages are not needed again
            todo = todo[-1:]
        for stage in todo:
            if stage.done in seen:  # a shared first stage (CAM classifier, parent model)
                continue
            seen.add(stage.done)
            if stage.done.exists():
                print(f"{stage.what}: done already ({_rel(stage.done)})", flush=True)
                continue
            cmd = stage.command()
            trainings += stage.resume is not None
            if dry_run:
                print(f"# {stage.what}" + (" (resumes)" if "--resume" in cmd else ""))
                print(shlex.join(cmd), flush=True)
                continue
            print(shlex.join(cmd), flush=True)
            if stage.log is None:
                subprocess.run(cmd, check=True, cwd=REPO, env=env)
                continue
            stage.log.parent.mkdir(parents=True, exist_ok=True)
            done = subprocess.run(cmd, cwd=REPO, env=env, stdout=subprocess.PIPE, text=True)
            print(done.stdout, end="", flush=True)
            stage.log.write_text(shlex.join(cmd) + "\n" + done.stdout)
            if done.returncode:
                raise SystemExit(f"{stage.what} failed (exit {done.returncode})")
    if dry_run:
        print(f"# {len(rows)} rows, {trainings} trainings to run or resume "
              "(15 epochs each, about 40-60 min on 1 thread of this machine)")


# ------------------------------------------------------------------ results


def _lcc_run(name: str) -> tuple[dict, list[dict[str, str]]] | None:
    """A ``<row>_lcc`` folder as a run: the mean row of its evaluate CSV as val_metrics and
    the parent's selected epoch; no training log."""
    path = RESULTS / name / "evaluate_lcc.csv"
    if not path.exists():
        return None
    with open(path, newline="") as f:
        mean = next(r for r in csv.DictReader(f) if r["key"] == "mean")
    base, seed = _split(name)
    parent = load_run(run_folder(base[: -len("_lcc")] + _suffix(seed)))
    return ({"val_metrics": {k: float(v) for k, v in mean.items() if k != "key"},
             "best_epoch": parent[0]["best_epoch"] if parent else "–"}, [])


def seeds_of(base: str) -> dict[int, tuple[dict, list[dict[str, str]]]]:
    """Finished runs of row ``base`` by seed (RESULTS first, then SHARED_FROM)."""
    folders = [RESULTS]
    if base in SHARED and SHARED_FROM is not None:
        folders.append(SHARED_FROM)
    found: dict[int, tuple[dict, list[dict[str, str]]]] = {}
    for root in folders:
        for folder in [root / base, *sorted(root.glob(f"{base}@*"))]:
            seed = int(folder.name.partition("@")[2] or 0)
            if seed in found:
                continue
            got = _lcc_run(folder.name) if base.endswith("_lcc") else load_run(folder)
            if got is not None:
                found[seed] = got
    return found


def known_rows() -> list[str]:
    """Row names with at least one finished seed, in report order."""
    names: set[str] = set()
    for root in [RESULTS, *([SHARED_FROM] if SHARED_FROM is not None else [])]:
        if not root.is_dir():
            continue
        for folder in root.iterdir():
            base = folder.name.partition("@")[0]
            if root != RESULTS and base not in SHARED:
                continue
            if (folder / "summary.json").exists() or (folder / "evaluate_lcc.csv").exists():
                names.add(base)
    return sorted(names, key=_order_key)


def section(base: str) -> int:
    if base == "full":
        return 0
    if base == CLASSIFIER or _CAM_ROW.match(base) or base.startswith("tags_"):
        return 1
    if base in (ORACLE_POINTS, CURRICULUM_POINTS):
        return 2
    if _SEMI_ROW.match(base):
        return 3
    return 4


def _order_key(base: str) -> tuple:
    refine_order = ["none", "size", "crf", "graphcut", "size_crf", "size_graphcut"]
    m, s = _CAM_ROW.match(base), _SEMI_ROW.match(base)
    if m:
        r = m["refine"] or "none"
        return (section(base), 1, refine_order.index(r) if r in refine_order else 99, base)
    if s and base != CURRICULUM_POINTS:
        return (section(base), s["term"] != SEMI_WITHOUT, s["term"], int(s["n"]))
    return (section(base), base.endswith("_lcc"), not base.startswith(ORACLE_POINTS), base)


def _best_semi_term(stats: dict[str, dict] | None = None) -> str | None:
    """The "with" term of highest mean Dice at N = 3 among the finished rows."""
    means = {}
    for term in _semi_terms():
        name = f"semi_n3_{term}"
        st = stats.get(name) if stats is not None else (
            row_stats(r, CLASSES) if (r := seeds_of(name)) else None)
        if st is not None:
            means[term] = st["mean"]
    return max(means, key=means.__getitem__) if means else None


def _semi_terms() -> list[str]:
    """Every "with" term: a shipped configs/acdc_semi_n3_<term>.yaml or a finished row."""
    terms = {p.stem[len("acdc_semi_n3_"):] for p in (REPO / "configs").glob("acdc_semi_n3_*.yaml")}
    if RESULTS.is_dir():
        terms |= {m["term"] for p in RESULTS.iterdir()
                  if (m := _SEMI_ROW.match(p.name.partition("@")[0]))}
    return sorted(terms - {SEMI_WITHOUT, "points_size"})


# ------------------------------------------------------------------ targets


def _established(*rows: dict | None) -> bool:
    return all(r is not None and len(r["seeds"]) >= 2 for r in rows)


def _verdict(ok: bool, *rows: dict | None) -> str:
    if not ok:
        return "**not met**"
    return "**met**" if _established(*rows) else "met on one seed (not established: needs 2)"


def targets(stats: dict[str, dict]) -> list[list[str]]:
    """One line per target of the issue: the numbers compared and the verdict, computed."""
    full = stats["full"]["mean"]
    lines = []
    tags = {n: s for n, s in stats.items() if _CAM_ROW.match(n)}
    if tags:
        best = max(tags, key=lambda n: tags[n]["mean"])
        pct = 100 * tags[best]["mean"] / full
        lines.append(["tags only ≥ 50 % of full", f"best tags row `{best}`: {pct:.1f} % "
                      f"({tags[best]['mean']:.3f} / {full:.3f})",
                      _verdict(pct >= TARGETS["tags"], tags[best])])
    else:
        lines.append(["tags only ≥ 50 % of full", "no CAM segmentation row finished",
                      "not measured"])
    cur, ora = stats.get(CURRICULUM_POINTS), stats.get(ORACLE_POINTS)
    if cur and ora:
        gap = 100 * (ora["mean"] - cur["mean"])
        lines.append(["points + curriculum bounds within 2 points of the oracle bounds",
                      f"`{CURRICULUM_POINTS}` {cur['mean']:.3f} vs `{ORACLE_POINTS}` "
                      f"{ora['mean']:.3f}: oracle − curriculum = {gap:+.1f} Dice points",
                      _verdict(gap <= TARGETS["curriculum_points"], cur, ora)])
    else:
        lines.append(["points + curriculum bounds within 2 points of the oracle bounds",
                      f"needs `{CURRICULUM_POINTS}` and `{ORACLE_POINTS}`", "not measured"])
    best = _best_semi_term(stats)
    if best:
        st = stats[f"semi_n3_{best}"]
        pct = 100 * st["mean"] / full
        lines.append(["semi-supervised N = 3 + priors ≥ 85 % of full",
                      f"best N = 3 row with an unlabelled term `semi_n3_{best}`: {pct:.1f} % "
                      f"({st['mean']:.3f})", _verdict(pct >= TARGETS["semi"], st)])
    else:
        lines.append(["semi-supervised N = 3 + priors ≥ 85 % of full",
                      "no semi_n3_<term> row with an unlabelled term finished", "not measured"])
    base = stats.get(ORACLE_POINTS)
    for name, what in [(KNOWLEDGE, "as constraints in training"),
                       (f"{ORACLE_POINTS}_lcc", "as post-processing: largest component kept"),
                       (f"{KNOWLEDGE}_lcc", "both")]:
        st = stats.get(name)
        if st and base:
            lines.append([f"knowledge priors: HD95 drops ({what})",
                          f"`{name}` HD95 {st['hd95']:.1f} vs `{ORACLE_POINTS}` "
                          f"{base['hd95']:.1f} (Dice {st['mean']:.3f} vs {base['mean']:.3f})",
                          _verdict(st["hd95"] < base["hd95"], st, base)])
        else:
            lines.append([f"knowledge priors: HD95 drops ({what})",
                          f"needs `{name}` and `{ORACLE_POINTS}`", "not measured"])
    return lines


# ------------------------------------------------------------------ report


def _regressor_table() -> str:
    import numpy as np

    rows = []
    for path in sorted((RESULTS / "_sizes").glob("*.npz")):
        with np.load(path) as z:
            names = [str(c) for c in z["class_names"]]
            source = str(z["source"])
            if "mae" not in z.files:  # --holdout 0: the bounds' file, no held-out patient
                continue
            mae = z["mae"]
            rows.append([path.stem.removesuffix("_heldout"), source, int(z["mae_slices"]),
                         *[f"{100 * v:.2f}" for v in mae]])
    if not rows:
        return "No size regressor has run yet."
    head = ["row", "fitted on", "held-out slices",
            *[f"MAE {c} (% of the slice)" for c in names]]
    return md_table(head, rows)


def _cam_pictures(out_dir: Path) -> list[str]:
    """Copy the CAM pictures of seed 0 (raw CAM, thresholded, refined, truth) next to the
    report; their markdown lines."""
    lines = []
    for png in sorted((RESULTS / CLASSIFIER).glob("cam_*.png")):
        target = out_dir / f"acdc_less_than_a_click_{png.name}"
        shutil.copyfile(png, target)
        refine = png.stem[len("cam_"):].replace("_", "+")
        lines.append(f"![CAM, refinement {refine}]({target.name})")
    return lines


def report(names: list[str], notes: str, out_dir: Path) -> None:
    names = names or known_rows()
    stats = {n: row_stats(r, CLASSES) for n in names if (r := seeds_of(n))}
    if "full" not in stats:
        raise SystemExit("the full-supervision run is missing; run it first "
                         "(python benchmarks/acdc_less_than_a_click.py run full)")
    full = stats["full"]["mean"]
    head = ["method", "seeds", "Dice per seed", "Dice mean", "% of full",
            *[f"Dice {c}" for c in CLASSES], "HD95 mean", "best epoch", "s/epoch"]
    tables = []
    for k, title in enumerate(SECTIONS):
        rows, own = [], 0
        for name in sorted(stats, key=_order_key):
            reference = (name == "full" and k) or (name == ORACLE_POINTS and k == 4)
            if section(name) != k and not reference:
                continue
            own += not reference
            st = stats[name]
            rows.append([
                name, ", ".join(map(str, st["seeds"])),
                " / ".join(f"{d:.3f}" for d in st["dice"]), f"**{st['mean']:.3f}**",
                f"{100 * st['mean'] / full:.1f}",
                *[f"{st['per_class'][c]:.3f}" for c in CLASSES], f"{st['hd95']:.1f}",
                ", ".join(map(str, st["best"])),
                "–" if st["s_epoch"] is None else f"{st['s_epoch']:.0f}",
            ])
        if own:
            tables.append(f"### {title}\n\n{md_table(head, rows)}")
    goal = md_table(["target (issue 10)", "measured", "verdict"], targets(stats))
    plot_line = ""
    if plot(out_dir, stats) is not None:
        plot_line = f"![mean Dice vs N fully labelled patients]({PLOT_NAME})"
    pictures = "\n".join(_cam_pictures(out_dir)) if (RESULTS / CLASSIFIER).is_dir() else ""
    folders = [p for n in stats for root in {RESULTS, run_folder(n).parent}
               for p in [root / n, *root.glob(f"{n}@*")]
               if (p / "summary.json").exists() or (p / "evaluate_lcc.csv").exists()]
    dates = " and ".join(sorted({datetime.date.fromtimestamp(max(
        f.stat().st_mtime for f in p.iterdir())).isoformat() for p in folders}))
    reused = sorted({_rel(run_folder(n).parent) for n in stats if run_folder(n).parent != RESULTS})
    machine = re.sub(r", \d+ torch threads", "", _machine_line())
    text = f"""# ACDC: less than a click (tags, curriculum size bounds, a few full masks, priors)

Measured {dates} on this machine: see "Machine" below.

**Protocol** (the reduced CPU protocol of `acdc_constraints.md`). ACDC (WSL4MIS h5), 2D U-Net
16-32-64-128-256 (1.81 M parameters), 128×128 slices, train on patients 021–090 (140 volumes,
1284 slices), select the best epoch on patients 091–100 (20 volumes) by mean 3D Dice and report
its 3D metrics on the same patients (validation numbers, slightly optimistic for every row
alike). Same network and budget for every trained row — 15 epochs × 160 steps, batch 8, Adam
lr 1e-3, poly decay, rot90/flip augmentation. Tags (which classes a slice shows) and points
are simulated from the masks; "oracle-statistics bounds" are the per-class (min, max) sizes
over all training masks given to the tagged classes (`bounds_from_tags`). Tags-only rows are
three stages: a CAM classifier (`tags_cam`, the U-Net encoder + global average pooling +
linear, multi-label BCE, the same budget; its Dice is the arg-max of its raw class maps),
`weakseg cam` (threshold {CAM_THRESHOLD:g}, then the named refinement: `size` cuts/grows each
class to the tag bounds by CAM rank, `crf` the dense-CRF mean-field with the CAM as unary),
and a U-Net trained on the refined masks (`pseudo_ce` + the tags' suppression); s/epoch is
that of the last stage. Curriculum size bounds: a small CNN fitted on the fully labelled
patients' slices (all N; its error measured by a second fit without the last of them)
predicts every other slice's class sizes; bounds estimate × (1 ∓ 0.1), per-image Lagrangian.
Semi-supervised rows: N fully labelled patients (021, 021–023, 021–027), the other training
patients unlabelled (no tag, no pixel), patients drawn uniformly (most batches hold no
labelled slice). `_lcc` rows are the selected model of the named row with only the largest
connected component of each class kept (`weakseg evaluate --largest-component`; no
training). Seeds change the network initialisation, batch order and augmentation, and the
CAM classifier and size regressor of the row (the weak labels stay). HD95 in voxels. s/epoch:
median training-pass time with 1 torch thread, two runs sharing the 2 cores (noisy by ±20 %).
{f"Rows reused from {', '.join(reused)} (same config and protocol)." if reused else ""}

{(chr(10) * 2).join(tables)}

### Targets

Computed from the table (a target is established with two seeds of every row compared).

{goal}

### Size regressor error

Mean absolute error of its predicted class fractions on the slices of the last fully
labelled patient, held out of a fit on the others (`--holdout 1`), in % of the slice. The
bounds of each row come from the fit on all N patients (`--holdout 0`); N = 1 has no error.

{_regressor_table()}

### Pictures

{plot_line}

{pictures}

Configs: `configs/acdc_constraints_{{full,{ORACLE_POINTS}}}.yaml`, `configs/acdc_tags_cam.yaml`,
`configs/acdc_tags_cam_seg.yaml`, `configs/acdc_semi_n3_<term>.yaml` (N ≠ 3:
`--set data.full_labels=...`), `configs/acdc_click_<row>.yaml`. Every command of a row:
`python benchmarks/acdc_less_than_a_click.py run <row> --dry-run`.

{notes}

## Commands

```bash
python benchmarks/acdc_less_than_a_click.py plan                   # every command, nothing run
python benchmarks/acdc_less_than_a_click.py run references tags curriculum semi3 --threads 1
python benchmarks/acdc_less_than_a_click.py run semi_sweep knowledge --threads 1   # after semi3
python benchmarks/acdc_less_than_a_click.py report \\
    --notes benchmarks/acdc_less_than_a_click_notes.md
python benchmarks/acdc_less_than_a_click.py overlay
```

## Machine

{machine}
"""
    out_dir.mkdir(parents=True, exist_ok=True)
    (out_dir / DOC_NAME).write_text(text)
    print(text)


def plot(out_dir: Path, stats: dict[str, dict] | None = None) -> Path | None:
    """Mean Dice vs N fully labelled patients, without and with each unlabelled term
    (seed range as error bars), full supervision on all 70 patients as a line."""
    if stats is None:
        names = [n for n in known_rows() if _SEMI_ROW.match(n) or n == "full"]
        stats = {n: row_stats(r, CLASSES) for n in names if (r := seeds_of(n))}
    curves: dict[str, list[tuple[int, dict]]] = {}
    for name, st in stats.items():
        m = _SEMI_ROW.match(name)
        if m and name != CURRICULUM_POINTS:
            curves.setdefault(m["term"], []).append((int(m["n"]), st))
    if not curves:
        print("no semi-supervised row finished: no plot")
        return None
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    best = _best_semi_term(stats)
    fig, ax = plt.subplots(figsize=(6, 4))
    for term in sorted(curves, key=lambda t: (t != SEMI_WITHOUT, t)):
        pts = sorted(curves[term], key=lambda p: p[0])
        xs = [n for n, _ in pts]
        ys = [st["mean"] for _, st in pts]
        err = [[st["mean"] - st["min"] for _, st in pts], [st["max"] - st["mean"] for _, st in pts]]
        label = ("without (partial CE on the N patients)" if term == SEMI_WITHOUT else
                 f"with {term}" + (" (best at N = 3)" if term == best else ""))
        ax.errorbar(xs, ys, yerr=err, marker="o", capsize=3, label=label,
                    linestyle="--" if term == SEMI_WITHOUT else "-")
    if "full" in stats:
        f = stats["full"]["mean"]
        ax.axhline(f, color="k", label=f"full supervision, 70 patients ({f:.3f})")
        ax.axhline(TARGETS["semi"] / 100 * f, color="k", linestyle=":",
                   label=f"{TARGETS['semi']:.0f} % of full (target at N = 3)")
    ax.set_xscale("log")
    ax.minorticks_off()
    ax.set_xticks(list(SEMI_NS))
    ax.set_xticklabels([str(n) for n in SEMI_NS])
    ax.set_xlabel("N fully labelled patients (the other training patients unlabelled)")
    ax.set_ylabel("mean 3D Dice, validation 091–100")
    ax.set_ylim(0, 1)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=7, loc="lower right")
    ax.set_title("ACDC semi-supervised (bars: range over seeds)", fontsize=9)
    fig.tight_layout()
    out_dir.mkdir(parents=True, exist_ok=True)
    path = out_dir / PLOT_NAME
    fig.savefig(path, dpi=120)
    plt.close(fig)
    print(f"wrote {path}")
    return path


def overlay(names: list[str], patients: str, out_dir: Path) -> None:
    """Mid-ventricle slices of a few validation volumes: truth, each run's prediction
    (acdc_scribbles.overlay, with the shared rows read where they were run)."""
    out_dir.mkdir(parents=True, exist_ok=True)
    _overlay(names, patients, results=run_folder,
             path=out_dir / "acdc_less_than_a_click_overlay.png", annotation=None)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__,
                                formatter_class=argparse.RawTextHelpFormatter)
    sub = p.add_subparsers(dest="cmd", required=True)
    r = sub.add_parser("run", help="run rows or groups (resumable)")
    r.add_argument("names", nargs="+", help="rows, <row>@<seed>, or groups: "
                   + ", ".join([*GROUPS, "all"]))
    r.add_argument("--threads", type=int, default=2)
    r.add_argument("--seeds", default=",".join(map(str, SEEDS)),
                   help="seeds a group expands to (default: 0,1)")
    r.add_argument("--dry-run", action="store_true",
                   help="print the commands that would run; run nothing")
    pl = sub.add_parser("plan", help="run --dry-run (default: all)")
    pl.add_argument("names", nargs="*", default=["all"])
    pl.add_argument("--threads", type=int, default=1)
    pl.add_argument("--seeds", default=",".join(map(str, SEEDS)))
    for name, what in [("report", f"write {DOC_NAME} (and {PLOT_NAME})"),
                       ("plot", f"write {PLOT_NAME} only"),
                       ("overlay", "validation overlays of the named runs")]:
        q = sub.add_parser(name, help=what)
        q.add_argument("--out-dir", default=str(DOCS),
                       help="folder of the markdown / pictures (default: docs/benchmarks)")
        if name == "report":
            q.add_argument("names", nargs="*", help="rows (default: every finished one)")
            q.add_argument("--notes", default="",
                           help="markdown file with the discussion section")
        if name == "overlay":
            q.add_argument("names", nargs="*",
                           default=["full", "tags_cam_size_crf_seg", ORACLE_POINTS,
                                    CURRICULUM_POINTS, KNOWLEDGE])
            q.add_argument("--patients", default="91-100")
    args = p.parse_args()
    if args.cmd in ("run", "plan"):
        seeds = tuple(int(s) for s in args.seeds.split(",") if s.strip())
        run(args.names, args.threads, seeds, dry_run=args.cmd == "plan" or args.dry_run)
    elif args.cmd == "report":
        report(args.names, Path(args.notes).read_text() if args.notes else "",
               Path(args.out_dir))
    elif args.cmd == "plot":
        plot(Path(args.out_dir))
    else:
        overlay(args.names, args.patients, Path(args.out_dir))


if __name__ == "__main__":
    main()
