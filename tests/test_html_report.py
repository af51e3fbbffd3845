"""`trl_soft.reporting.html`: the one-page HTML report of a finished run, opened in a real browser (headless Chromium).

One tiny real run per module (the tiny Llama, two rounds, behaviour on a few benign and unknowable items judged by the
rule judge) writes `report.html` at its end; the browser renders it, and the screenshot must show the table and the
plots (several horizontal bands that are not one colour), with no console error. A model answer carrying markup must
reach the page as text.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
from pathlib import Path

import pytest

from tests.conftest import make_tiny_llama, prompt_dataset, tiny_config

CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")
INJECTED = '<img src="x" onerror="console.error(\'answer ran as markup\')"><b>bold?</b>'


@pytest.fixture(scope="module")
def finished_run(tmp_path_factory, tokenizer):
    from trl_soft import SOFTTrainer

    out = tmp_path_factory.mktemp("html") / "run"
    args = tiny_config(
        out, num_rounds=2, behaviour_eval=["benign", "unknowable"], behaviour_limit=6, behaviour_fewshot="none",
        behaviour_max_new_tokens=8, rejection_patience=3, final_model="last",
    )
    SOFTTrainer(model=make_tiny_llama(tokenizer), args=args, train_dataset=prompt_dataset(8),
                processing_class=tokenizer).train()
    return out


def _screenshot(page: Path, png: Path) -> str:
    """Chromium's console log while it renders `page` into `png` (1280 x 2400): headless, offline (no update, sync or
    background request), in a profile of its own."""
    profile = png.parent / "chromium-profile"
    done = subprocess.run(
        [CHROMIUM, "--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
         "--disable-background-networking", "--disable-component-update", "--disable-sync",
         f"--user-data-dir={profile}", "--hide-scrollbars", f"--screenshot={png}", "--window-size=1280,2400",
         "--enable-logging=stderr", "--v=0", page.as_uri()],
        capture_output=True, text=True, timeout=120,
    )
    assert done.returncode == 0, done.stderr[-2000:]
    return done.stderr


def test_a_run_ends_with_a_self_contained_report(finished_run):
    page = finished_run / "report.html"
    text = page.read_text(encoding="utf-8")
    assert (finished_run / "rounds.png").stat().st_size > 10_000
    assert "data:image/png;base64," in text  # the plot is inside the page
    for external in ("<script", "<link", "src=\"http", "src='http", "@import"):
        assert external not in text
    assert "<h2>Rounds</h2>" in text and "val NLL" in text and "Filtered answers" in text
    assert "Behaviour answers, start vs each round" in text and "<th>round 2</th>" in text


def test_the_report_renders_in_a_browser_with_plots_table_and_escaped_answers(finished_run, tmp_path):
    if CHROMIUM is None:
        message = ("chromium is not installed (Debian: apt-get install chromium; .ci/run installs it); the page is "
                   "checked without it by test_a_run_ends_with_a_self_contained_report")
        if os.environ.get("CI"):  # where the tests are the check, the page must have been rendered
            pytest.fail(message)
        pytest.skip(message)
    from PIL import Image

    from trl_soft.cli import main

    # An answer that is markup: the page must show it as text (no image request, no handler run).
    run = tmp_path / "run"
    shutil.copytree(finished_run, run, ignore=shutil.ignore_patterns("model", "final_model", "engine_weights"))
    samples = run / "round_1" / "behaviour.jsonl"
    rows = [json.loads(line) for line in samples.read_text().splitlines()]
    rows[0]["answer"], rows[0]["score"] = INJECTED, 1 - rows[0]["score"]  # changed: shown first
    samples.write_text("".join(json.dumps(r) + "\n" for r in rows))
    assert main(["report", str(run), "--html"]) == 0
    text = (run / "report.html").read_text(encoding="utf-8")
    assert INJECTED not in text and "&lt;img src=&quot;x&quot; onerror=" in text

    png = tmp_path / "report.png"
    log = _screenshot(run / "report.html", png)
    console = [line for line in log.splitlines() if "CONSOLE" in line or "Uncaught" in line]
    assert not console, console
    image = Image.open(png).convert("L")
    assert image.size == (1280, 2400)
    # The page's first 2400 pixels hold the title, verdict, table and plots: most 200-pixel bands carry content.
    bands = [image.crop((0, top, 1280, top + 200)) for top in range(0, 2400, 200)]
    varied = [band.getextrema()[0] != band.getextrema()[1] for band in bands]
    assert sum(varied) >= 8, varied
    # The plots are dark lines and coloured fills on white: many distinct grey levels, not only text.
    assert len(set(image.crop((0, 800, 1280, 2400)).getdata())) > 64


def test_every_manifest_value_is_escaped(tmp_path):
    """A manifest someone edited (or a copied run folder) with markup in each field: the page shows it as text."""
    from dataclasses import fields

    from trl_soft.reporting.html import render_report
    from trl_soft.state import SOFTState

    mark = '<script>alert(1)</script>'
    values = {f.name: mark for f in fields(SOFTState)}
    values["history"] = [{"round": mark, "kept": mark, "filtered": {mark: mark}, mark: mark}]
    values["base_metrics"] = {"round": 0, mark: mark}
    values["fingerprint"] = {mark: mark}
    state = SOFTState(**values)
    page = render_report(tmp_path, state)
    assert "<script" not in page and "&lt;script&gt;" in page
