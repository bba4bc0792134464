"""The test study's report, opened in a real headless Chromium: no broken image or link, nothing wider than a
1400 px window, in its folder, after the folder was moved on its own, and inside Snakemake's own report zip; the
activation cards' links resolve from the cards' folder; the report says up front what was measured."""

from __future__ import annotations

import json
import re
import shutil
import zipfile

import pytest

from browser import check_page, markdown_links, require_chromium
from workflow_helpers import snakemake

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def reports(study):
    return study[0] / "results" / "test" / "reports"


def test_report_in_a_browser_has_nothing_broken(reports):
    require_chromium()
    page = check_page(reports / "report.html")
    assert page.images >= 6 and page.links >= 20
    assert not page.problems(), "\n".join(page.problems())


def test_the_report_folder_travels_on_its_own(reports, tmp_path):
    """Moved elsewhere alone (as a zip would carry it), with the results folder out of reach."""
    require_chromium()
    moved = tmp_path / "mailed" / "reports"
    shutil.copytree(reports, moved)
    page = check_page(moved / "report.html")
    assert not page.problems(), "\n".join(page.problems())
    html = (moved / "report.html").read_text()
    assert not re.search(r'(href|src)="(\.\./|/|file:)', html)  # every link inside the report folder, relative
    for card in (moved / "cards").glob("*.md"):
        assert not markdown_links(card), (card.name, markdown_links(card))


def test_the_report_inside_snakemakes_report_zip(study, tmp_path):
    require_chromium()
    out = tmp_path / "report.zip"
    snakemake(study[0], "--report", str(out))
    with zipfile.ZipFile(out) as z:
        z.extractall(tmp_path / "unzipped")
    ours = [p for p in (tmp_path / "unzipped").rglob("report.html") if "data" in p.parts]
    assert len(ours) == 1, ours
    page = check_page(ours[0])
    assert page.images >= 6
    assert not page.problems(), "\n".join(page.problems())


def test_the_report_says_what_was_measured_up_front(reports, study):
    require_chromium()
    page = check_page(reports / "report.html")
    text = page.text
    first = text.index("What was measured here")
    claims = text.index("The paper's claims, recomputed")
    assert first < claims < text.index("Figures\n")
    intro = text[first:claims]
    # The test study's two checkpoints are seeded random inits, not among the paper's 27, not in the claims.
    assert "tiny-llama" in intro and "tiny-gemma3" in intro
    assert "random init, not trained" in intro and "Neither is among the paper's 27 published checkpoints" in intro
    assert intro.count("random initialisation (not trained): never in the claims") == 2
    # Calibration files are linked in that first section.
    assert "act_scales.pt" in intro and "imatrix.gguf" in intro
    # One heading for the claims (it was two in a row).
    assert len(re.findall(r"[Cc]laims[^\n]*recomputed", text)) == 1
    # The empty comparison table says why it is empty.
    assert "no checkpoint measured here is one of the paper's published checkpoints" in text
    # gemma-2b, a Gemma 1 model in the paper's gemma2 folder, is explained where it is listed.
    assert "listed under family gemma2 (the paper's folder), though its architecture is model_type gemma" in text


def test_settings_and_libraries_are_tables_and_linear_inputs_tell_the_truth(reports, study):
    html = (reports / "report.html").read_text()
    assert '"attn_implementation"' not in html and '{"accelerate"' not in html  # no raw JSON
    stats = json.loads((study[0] / "results" / "test" / "measure" / "tiny-llama" / "activation_stats.json").read_text())
    assert stats["provenance"]["settings"]["linear_inputs"] is True  # calibration files were written from them
    assert re.search(r"<th>linear_inputs</th><td>yes</td>", html)


def test_the_papers_forms_are_in_the_report(reports, study):
    """Issue 22's outputs through the workflow: the INT-8 rows say their definition, the top-5 files and their
    indicators (measured beside published), and the bootstrap experiment A in the paper's layout beside the paper's."""
    require_chromium()
    res = study[0] / "results" / "test"
    text = check_page(reports / "report.html").text
    int8 = json.loads((res / "int8" / "tiny-llama" / "int8_check.json").read_text())
    assert int8["definition"] == "paper" and int8["split"]["calibration_ids"]
    assert "The definition column says how a row was computed" in text
    for ck in ("tiny-llama", "tiny-gemma3"):
        top5 = json.loads((res / "top5" / ck / f"{ck}_top5_stats.json").read_text())
        # every eligible point's top 5, the largest 100 of them (a tiny model has fewer than 20 points)
        assert len(top5["global_top5_abs"]) == min(100, 5 * len(top5["per_layer_stats"])) and top5["per_layer_stats"]
    import pandas as pd

    ind = pd.read_csv(res / "aggregate" / "top5_indicators.csv")
    assert set(ind[ind["source"] == "measured"]["name"]) == {"tiny-llama", "tiny-gemma3"}
    assert (ind["source"] == "published").sum() == 27
    assert "The top values: structural indicators" in text
    boot = pd.read_csv(res / "aggregate" / "bootstrap.csv")
    assert set(boot[boot["source"] == "published"]["checkpoint"]) == {"Qwen3.5-0.8B", "gemma-3-4b-it", "Qwen3-30B-A3B", "Qwen3-32B"}
    assert {"r0", "r4", "mean", "cv_percent_paper", "cv_percent_std", "diff_to_full_percent"} <= set(boot.columns)
    assert "Bootstrap experiment A" in text and "CV% (paper: range/mean)" in text
