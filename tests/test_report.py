"""weakseg report: one self-contained HTML page for several runs; rendered in headless
Chromium where it is installed."""

from __future__ import annotations

import re
import shutil
import subprocess
from pathlib import Path

import pytest
import yaml

from weakseg.cli import main

from .conftest import tiny_config


@pytest.fixture(scope="module")
def two_runs(tmp_path_factory) -> list[Path]:
    root = tmp_path_factory.mktemp("runs")
    runs = []
    for name, loss in (("pce", [{"name": "partial_ce"}]),
                       ("pce_entropy", [{"name": "partial_ce"},
                                        {"name": "entropy", "weight": 0.1}])):
        raw = tiny_config(train__epochs=2)
        raw["loss"] = loss
        cfg = root / f"{name}.yaml"
        cfg.write_text(yaml.safe_dump(raw))
        assert main(["train", "--config", str(cfg), "--out", str(root / name), "--quiet"]) == 0
        runs.append(root / name)
    return runs


def test_report_holds_table_curves_and_overlays(two_runs, tmp_path, capsys):
    out = tmp_path / "report.html"
    assert main(["report", *map(str, two_runs), "--out", str(out)]) == 0
    page = out.read_text()
    assert page.count("<tr>") == 3  # header + one row per run
    assert "pce_entropy" in page and "entropy×0.1" in page
    for title in ("training loss per term", "validation Dice per class", "learning rate"):
        assert f"<h3>{title}</h3>" in page
    # one validation volume (phantom 3) × columns image, weak labels, ground truth, 2 runs
    assert page.count("class='overlay'") == 5
    assert "weak labels (scribble)" in page
    assert not re.search(r"(src|href)=['\"]https?:", page)  # no network


def test_report_without_overlays_reads_no_data(two_runs, tmp_path, monkeypatch):
    import weakseg.report.html as report

    def fail(*a, **k):
        raise AssertionError("data read")

    monkeypatch.setattr(report, "load_data", fail)
    out = tmp_path / "r.html"
    assert main(["report", str(two_runs[0]), "--out", str(out), "--no-overlays"]) == 0
    assert "class='overlay'" not in out.read_text()


@pytest.mark.parametrize("argv, match", [
    (["report", "{TMP}/nope"], "does not exist"),
    (["report", "{TMP}"], "is not a weakseg run folder"),
    (["report", "{RUN}", "--out", "{TMP}/r.txt"], "must end in .html"),
    (["report", "{RUN}", "--volumes", "0", "--out", "{TMP}/r.html"], "--volumes must be ≥ 1"),
])
def test_report_bad_input(argv, match, two_runs, tmp_path, capsys):
    argv = [a.replace("{TMP}", str(tmp_path)).replace("{RUN}", str(two_runs[0])) for a in argv]
    assert main(argv) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("error: ") and "\n" not in err and match in err


CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")


@pytest.mark.skipif(CHROMIUM is None, reason="Debian's chromium is not installed here")
def test_report_renders_in_headless_chromium(two_runs, tmp_path):
    out = tmp_path / "report.html"
    assert main(["report", *map(str, two_runs), "--out", str(out)]) == 0
    flags = [CHROMIUM, "--headless", "--no-sandbox", "--disable-gpu", "--no-first-run",
             "--disable-background-networking", "--disable-component-update",
             f"--user-data-dir={tmp_path / 'profile'}"]
    dom = subprocess.run(flags + ["--dump-dom", out.as_uri()], capture_output=True, text=True,
                         timeout=120, check=True).stdout
    # the script ran: every overlay image got its slice, the slice label was written
    assert len(re.findall(r"<img class=\"overlay\"[^>]*src=\"data:image/png", dom)) == 5
    assert "slice 3 / 4" in dom
    shot = tmp_path / "shot.png"
    subprocess.run(flags + ["--window-size=1200,2400", f"--screenshot={shot}", out.as_uri()],
                   capture_output=True, timeout=120, check=True)
    import matplotlib.image as mpimg

    pixels = mpimg.imread(shot)
    assert pixels.shape[0] > 1000 and float(pixels[..., :3].std()) > 0.05  # not a blank page
