"""`vaelab report` and `vaelab compare`: self-contained HTML, tables with units, CSV, Markdown."""

from __future__ import annotations

import base64
import csv
import io
import json
import shutil
from html.parser import HTMLParser

import pytest
import torch
from PIL import Image

from test_figures import run2d, run4d, tiny_run  # noqa: F401  (shared session fixtures)
from vaelab import figures
from vaelab.cli import main
from vaelab.compare import config_differences, overlaid_curves, run_labels
from vaelab.report import findings_html, summarize_run
from vaelab.rundir.load import load_run

FAST = {"iw_samples": 5, "limit": 300}  # evaluation settings that keep the tests quick
FAST_ARGS = ["--iw-samples", "5", "--limit", "300", "--quiet"]
_made: dict[str, object] = {}


def tiny_report(tmp_path_factory):
    """The 2-D run's report, made once per session through the CLI (shared with test_browser)."""
    if "report" not in _made:
        out = tmp_path_factory.mktemp("report") / "report.html"
        assert main(["report", str(tiny_run(tmp_path_factory, "2d")), "--out", str(out), *FAST_ARGS]) == 0
        _made["report"] = out
    return _made["report"]


def tiny_comparison(tmp_path_factory):
    """`vaelab compare` of the 2-D and 4-D runs, with probes, made once per session."""
    if "compare" not in _made:
        out = tmp_path_factory.mktemp("compare")
        runs = [str(tiny_run(tmp_path_factory, name)) for name in ("2d", "4d")]
        assert main(["compare", *runs, "--out", str(out), "--probe-labels", "20", *FAST_ARGS]) == 0
        _made["compare"] = out
    return _made["compare"]


class Page(HTMLParser):
    """The <img> sources, other links, scripts and visible text of an HTML page."""

    BLOCKS = ("td", "th", "tr", "p", "div", "h1", "h2", "h3", "h4", "figcaption", "pre", "title")

    def __init__(self, text: str):
        super().__init__()
        self.images, self.links, self.scripts, self.text = [], [], 0, []
        self.feed(text)

    def handle_starttag(self, tag, attrs):
        if tag in self.BLOCKS:
            self.text.append(" ")  # block and cell borders separate words
        attrs = dict(attrs)
        if tag == "img":
            self.images.append(attrs.get("src", ""))
        elif tag == "script":
            self.scripts += 1
        for key in ("href", "src"):
            if key in attrs and tag != "img":
                self.links.append(attrs[key])

    def handle_data(self, data):
        self.text.append(data)

    @property
    def words(self) -> str:
        return " ".join("".join(self.text).split())


def decoded_images(page: Page) -> list[Image.Image]:
    out = []
    for src in page.images:
        kind, _, payload = src.partition(";base64,")
        assert kind in ("data:image/png", "data:image/gif"), src[:40]
        image = Image.open(io.BytesIO(base64.b64decode(payload)))
        image.load()
        out.append(image)
    return out


@pytest.fixture(scope="module")
def report_2d(tmp_path_factory):
    return tiny_report(tmp_path_factory)


def test_report_is_self_contained_with_every_figure(report_2d):
    page = Page(report_2d.read_text())
    images = decoded_images(page)
    # every figure, plus the animated progress GIF this run saved
    assert len(images) == len(figures.FIGURES) + 1
    assert sum(image.format == "GIF" for image in images) == 1
    assert all(image.width > 100 for image in images)
    assert page.links == [] and page.scripts == 0  # nothing loaded from elsewhere
    for title, _ in figures.FIGURES.values():
        assert title in page.words


def test_report_shows_the_eval_metrics_with_units_and_the_config(report_2d, run2d):  # noqa: F811
    words = Page(report_2d.read_text()).words
    result = run2d.evaluate("test", seed=0, **FAST)
    assert f"ELBO {result['elbo']:,.3f} nats/image (higher is better)" in words
    assert f"-log p(x), importance-weighted (K=5) {result['nll_iw']:,.3f} nats/image" in words
    assert f"active units {result['active_units']} of 2" in words
    assert "bits per dimension n/a none: not a model of 8-bit pixels" in words  # binarized MNIST
    assert "300 (mnist-sample test)" in words
    assert "model.latent_dim 2" in words and "train.sample_every 1" in words
    assert "stable training: 2 epochs with no NaN events" in words


def test_collapse_and_nan_episodes_are_said_plainly(tmp_path_factory, tmp_path):
    copy = tmp_path / "run"
    shutil.copytree(tiny_run(tmp_path_factory, "4d"), copy)
    rows = [json.loads(line) for line in (copy / "metrics.jsonl").read_text().splitlines()]
    rows[1].update(nan_events=3, skipped_steps=3)
    (copy / "metrics.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    run = load_run(copy)
    first = next(m for m in run.model.decoder.modules() if isinstance(m, torch.nn.Linear))
    with torch.no_grad():
        first.weight.zero_()  # the decoder now ignores z
    # two epochs are inside the warm-up: like the training log, the report gives no verdict yet
    early = summarize_run(run, **FAST)
    assert not early.collapsed and early.findings[0].title == "too early to judge collapse"
    # one epoch more, and it is posterior collapse
    rows.append({**rows[-1], "epoch": 3})
    (copy / "metrics.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    text = findings_html(summarize_run(run, **FAST).findings)  # the report's Diagnostics section
    assert 'class="finding collapse"' in text
    words = Page(text).words
    assert "samples independent of z: decoding different prior draws" in words
    assert "epoch 2: 3 non-finite loss or gradient event(s); epoch 2: 3 batch(es) skipped" in words


def test_report_cli_defaults_and_bad_input(run4d, tmp_path, capsys, monkeypatch):  # noqa: F811
    import vaelab.report

    written = {}

    def fake_write_report(run, out, **options):
        written.update(out=out, **options)
        return run.path / "report.html"

    monkeypatch.setattr(vaelab.report, "write_report", fake_write_report)
    assert main(["report", str(run4d.path), "--iw-samples", "7", "--quiet"]) == 0
    assert written["out"] is None and written["iw_samples"] == 7 and written["probe_labels"] == 0
    assert capsys.readouterr().out.strip() == f"wrote {run4d.path / 'report.html'}"
    monkeypatch.undo()
    assert main(["report", str(run4d.path), "--out", str(tmp_path / "nowhere" / "r.html"), "--iw-samples", "0"]) == 2
    assert capsys.readouterr().err.strip().startswith("vaelab: error: cannot write")
    assert main(["report", str(tmp_path), "--iw-samples", "0"]) == 2
    assert "not a vaelab run directory" in capsys.readouterr().err
    assert main(["report", str(run4d.path), "--iw-samples", "-1"]) == 2


# -- compare ---------------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def comparison(tmp_path_factory):
    return tiny_comparison(tmp_path_factory)


def test_compare_csv_has_one_row_per_run_with_its_eval(comparison, run2d, run4d):  # noqa: F811
    rows = list(csv.DictReader((comparison / "compare.csv").open()))
    assert [r["run"] for r in rows] == ["2d", "4d"]
    assert [int(r["latent_dim"]) for r in rows] == [2, 4]
    for row, run in zip(rows, (run2d, run4d)):
        result = run.evaluate("test", seed=0, **FAST)
        assert float(row["test_elbo_nats"]) == pytest.approx(result["elbo"], rel=1e-9)
        assert float(row["test_nll_iw_nats"]) == pytest.approx(result["nll_iw"], rel=1e-9)
        assert int(row["active_units"]) == result["active_units"]
        assert 0 <= float(row["probe_logreg_error_pct"]) <= 100
        assert 0 <= float(row["probe_knn_error_pct"]) <= 100
        assert int(row["epochs"]) == 2
    # config keys that differ label the comparison; the CSV carries them as JSON
    assert rows[0]["model.latent_dim"] == "2" and rows[1]["model.latent_dim"] == "4"
    assert "bits_per_dim" not in rows[0]  # a column no run has is left out


def test_compare_markdown_and_html(comparison):
    md = (comparison / "compare.md").read_text()
    assert "| run | dataset | nats measured over | latent dim |" in md and "ELBO (nats/image)" in md
    assert "| 2d | mnist-sample | binary pixels | 2 |" in md and "| 4d | mnist-sample | binary pixels | 4 |" in md
    assert "WARNING" not in md  # one space: nothing to warn about
    for name in ("curves.png", "2d-samples.png", "4d-manifold.png", "4d-latent_space.png"):
        assert f"]({name})" in md and (comparison / name).is_file()
    page = Page((comparison / "compare.html").read_text())
    images = decoded_images(page)
    assert len(images) == 1 + 3 * 2 and page.links == []
    assert "Config differences" in page.words and "model.latent_dim" in page.words
    # runs side by side: one metric per row, one run per column, in the order given
    rows = list(csv.DictReader((comparison / "compare.csv").open()))
    cells = [f"{float(r['test_elbo_nats']):,.2f}" for r in rows]
    assert "metric 2d 4d" in page.words and f"ELBO (nats/image) {cells[0]} {cells[1]}" in page.words


def test_compare_curves_overlay_every_run(run2d, run4d, tmp_path):  # noqa: F811
    path = overlaid_curves([("a", run2d.metrics()), ("b", run4d.metrics())], tmp_path / "c.png")
    assert Image.open(path).size[0] > 500


def test_run_labels_and_config_differences(tmp_path):
    assert run_labels([tmp_path / "x" / "run", tmp_path / "y" / "run"]) == ["x/run", "y/run"]
    assert run_labels([tmp_path / "a", tmp_path / "b"]) == ["a", "b"]
    assert run_labels([tmp_path / "a", tmp_path / "a"]) == [f"{tmp_path.name}/a#1", f"{tmp_path.name}/a#2"]
    a = {"model": {"latent_dim": 2, "hidden": [500]}, "train": {"epochs": 5}}
    b = {"model": {"latent_dim": 20, "hidden": [500]}, "train": {"epochs": 5}}
    assert config_differences([a, b]) == ["model.latent_dim"]


def test_compare_cli_bad_input(tmp_path, capsys):
    assert main(["compare", str(tmp_path / "missing"), "--out", str(tmp_path / "cmp")]) == 2
    assert "not a vaelab run directory" in capsys.readouterr().err


def test_compare_skips_files_and_refuses_a_non_run_folder_before_writing(run2d, tmp_path, capsys):  # noqa: F811
    results = tmp_path / "results.csv"  # what `compare runs/latent/*` picks up after a sweep
    results.write_text("a,b\n")
    out = tmp_path / "cmp"
    assert main(["compare", str(tmp_path / "empty-folder"), str(run2d.path), "--out", str(out), "--iw-samples", "0",
                 "--quiet"]) == 2
    assert not out.exists()  # refused before any PNG was written
    assert main(["compare", str(results), "--out", str(out)]) == 2
    assert "are files" in capsys.readouterr().err
    assert main(["compare", str(results), str(run2d.path), "--out", str(out), "--iw-samples", "0", "--quiet"]) == 0
    assert f"skipped {results}" in capsys.readouterr().out


def test_compare_warns_when_runs_measure_nats_in_different_spaces(run2d, tmp_path):  # noqa: F811
    import vaelab
    from vaelab.config import Config

    config = Config()
    config.apply_overrides(["data.name=mnist-sample", "data.limit=300", "data.transform=scale", "model.hidden=16",
                            "model.latent_dim=2", "train.epochs=1", "train.threads=1"])
    grey = vaelab.train(config.validate(), tmp_path / "grey", progress=False)  # a Bernoulli on grey levels
    out = tmp_path / "cmp"
    assert main(["compare", str(run2d.path), str(grey), "--out", str(out), "--iw-samples", "0", "--quiet"]) == 0
    md = (out / "compare.md").read_text()
    assert "WARNING: these runs measure their nats over 2 different spaces" in md
    assert "binary pixels" in md and "grey levels under a Bernoulli cross-entropy" in md
    rows = list(csv.DictReader((out / "compare.csv").open()))
    assert {r["data_space"] for r in rows} == {"binary pixels",
                                              "grey levels under a Bernoulli cross-entropy (not a normalized likelihood)"}
