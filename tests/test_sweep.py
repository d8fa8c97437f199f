"""`vaelab sweep`: the grid, run directories, resumability, the results tables, jobs."""

from __future__ import annotations

import csv
import json
import math

import pytest

from vaelab import cli, rundir
from vaelab.config import Config
from vaelab.errors import VaelabError
from vaelab.rundir.load import load_run
from vaelab.sweep import combinations, parse_grid, plan, run_name, sweep
from vaelab.training.trainer import train


pytestmark = pytest.mark.usefixtures("one_torch_thread")


TINY = ["data.name=mnist-sample", "data.limit=240", "model.hidden=24", "train.epochs=1", "train.batch_size=100",
        "train.log_latent_stats=false"]


def tiny_base(*extra: str) -> Config:
    c = Config()
    c.apply_overrides([*TINY, *extra])
    return c


def read_csv(path):
    with open(path, newline="") as f:
        return list(csv.DictReader(f))


def test_grid_parsing():
    grid = parse_grid(["model.latent_dim=2,5,20", "model.hidden=[500],[500,500]", "train.lr= 1e-3 ,3e-4"])
    assert grid == {"model.latent_dim": ["2", "5", "20"], "model.hidden": ["[500]", "[500,500]"],
                    "train.lr": ["1e-3", "3e-4"]}
    assert len(combinations(grid)) == 12
    assert combinations({"a.b": ["1", "2"], "c.d": ["x"]}) == [{"a.b": "1", "c.d": "x"}, {"a.b": "2", "c.d": "x"}]
    assert run_name({"model.latent_dim": "2", "data.name": "folder:/data/x"}) == \
        "model.latent_dim=2,data.name=folder:_data_x"
    for bad, message in [("model.latent_dims=2,3", "did you mean model.latent_dim"),
                         ("model.latent_dim", "expects key=v1,v2"), ("model.latent_dim=", "has no values"),
                         ("model.latent_dim=2,2", "repeats a value")]:
        with pytest.raises(VaelabError, match=message):
            parse_grid([bad])
    with pytest.raises(VaelabError, match="twice"):
        parse_grid(["train.lr=1", "train.lr=2"])


def test_every_combination_is_validated_before_anything_runs(tmp_path):
    with pytest.raises(VaelabError, match="sweep run model.latent_dim=0: model.latent_dim must be at least 1"):
        sweep(tiny_base(), parse_grid(["model.latent_dim=2,0"]), tmp_path / "s")
    assert not (tmp_path / "s").exists()
    folder = tmp_path / "images"  # a folder of images has no test split: said before training
    folder.mkdir()
    from PIL import Image

    for i in range(4):
        Image.new("L", (8, 8), color=i * 60).save(folder / f"{i}.png")
    with pytest.raises(VaelabError, match="has no test split; evaluate on the images held out of train with --split"):
        sweep(tiny_base(f"data.name=folder:{folder}"), parse_grid(["model.latent_dim=2"]), tmp_path / "s")
    assert not (tmp_path / "s").exists()
    configs = plan(tiny_base("train.lr=0.01"), parse_grid(["model.latent_dim=2,3"]))
    assert [(name, c.model.latent_dim, c.train.lr) for name, _, c in configs] == \
        [("model.latent_dim=2", 2, 0.01), ("model.latent_dim=3", 3, 0.01)]


def test_sweep_command_trains_evaluates_tabulates_and_resumes(tmp_path, capsys):
    out = tmp_path / "sweep"
    # run one combination first and interrupt it after its first epoch, as Ctrl-C would
    base = tiny_base("train.epochs=2", "model.latent_dim=3")

    class StopAfterFirstEpoch:
        def on_epoch_end(self, trainer, row):
            trainer.stop_requested = "SIGINT"

    with pytest.raises(KeyboardInterrupt):
        train(base, out / "model.latent_dim=3", progress=False, callbacks=[StopAfterFirstEpoch()])
    assert not (out / "model.latent_dim=3" / rundir.WEIGHTS).exists()

    argv = ["sweep", "demo", "--grid", "model.latent_dim=2,3", "--out", str(out), "--iw-samples", "4",
            "--eval-limit", "60", "--quiet", *[a for item in [*TINY, "train.epochs=2"] for a in ("--set", item)]]
    assert cli.main(argv) == 0
    err = capsys.readouterr().err
    assert "model.latent_dim=2: done" in err and "model.latent_dim=3: resumed and done" in err
    rows = read_csv(out / "results.csv")
    assert [r["run"] for r in rows] == ["model.latent_dim=2", "model.latent_dim=3"]
    assert [r["model.latent_dim"] for r in rows] == ["2", "3"]
    for row in rows:
        run_dir = out / row["run"]
        assert row["status"] == "ok" and row["epochs"] == "2" and row["split"] == "test"
        assert [m["epoch"] for m in rundir.read_metrics(run_dir)] == [1, 2]  # resumed, not restarted
        assert Config.load(run_dir / "config.json").model.latent_dim == int(row["model.latent_dim"])
        # the table holds the run's own evaluation: the same numbers `vaelab eval` gives
        expected = load_run(run_dir).evaluate("test", iw_samples=4, limit=60)
        for key in ("elbo", "recon", "kl", "nll_iw"):
            assert float(row[key]) == pytest.approx(expected[key], rel=1e-6)
        assert int(row["active_units"]) == expected["active_units"] and row["bits_per_dim"] == ""
        assert int(row["n_images"]) == 60 and int(row["iw_samples"]) == 4
    table = (out / "results.md").read_text()
    assert "| model.latent_dim | epochs | ELBO | recon | KL | IW-NLL (K=4) | bits/dim | active units |" in table
    assert f"| 2 | 2 | {float(rows[0]['elbo']):.2f} |" in table and "nats per image" in table

    # rerun: nothing trains again, nothing is re-evaluated, the tables come back the same
    stamps = {r["run"]: (out / r["run"] / rundir.WEIGHTS).stat().st_mtime_ns for r in rows}
    assert cli.main(argv) == 0
    assert capsys.readouterr().err.count("already done") == 2
    assert {r["run"]: (out / r["run"] / rundir.WEIGHTS).stat().st_mtime_ns for r in rows} == stamps
    assert read_csv(out / "results.csv") == rows

    # a finished run trained with other settings is never silently reused
    argv_changed = [a if a != "train.batch_size=100" else "train.batch_size=50" for a in argv]
    assert cli.main(argv_changed) == 2
    assert "was trained with another config (train.batch_size 100 there vs 50 now)" in capsys.readouterr().err
    assert read_csv(out / "results.csv") == rows  # refused before anything ran or was written


def test_failed_runs_are_reported_and_the_others_finish(tmp_path, capsys):
    # a Gaussian with a zero variance floor at a high lr: ReLU kills the variance and log 0 is
    # -inf; with a floor of 0.01 the same run stays finite
    base = tiny_base("data.transform=scale", "model.likelihood=gaussian", "model.variance=relu",
                     "train.lr=0.1", "train.nan_policy=raise")
    rows = sweep(base, parse_grid(["model.variance_eps=0,0.01"]), tmp_path / "s", iw_samples=0,
                 eval_limit=40, progress=False, log=lambda message: None)
    status = {r["model.variance_eps"]: r["status"] for r in rows}
    assert status == {"0": "failed", "0.01": "ok"}
    assert "non-finite" in rows[0]["error"]
    assert math.isfinite(rows[1]["elbo"]) and rows[1]["nll_iw"] is None
    table = (tmp_path / "s" / "results.md").read_text()
    assert "failed: non-finite" in table
    written = read_csv(tmp_path / "s" / "results.csv")
    assert written[0]["status"] == "failed" and "non-finite" in written[0]["error"]


def test_parallel_jobs_match_one_job(tmp_path):
    grid = parse_grid(["model.latent_dim=2,3"])
    serial = sweep(tiny_base(), grid, tmp_path / "one", iw_samples=3, eval_limit=40, progress=False,
                   log=lambda message: None)
    parallel = sweep(tiny_base(), grid, tmp_path / "two", jobs=2, iw_samples=3, eval_limit=40, progress=False,
                     log=lambda message: None)
    for a, b in zip(serial, parallel):
        assert a["run"] == b["run"] and a["status"] == b["status"] == "ok"
        # one seed, one data order: two processes with one thread each train the same model
        assert b["elbo"] == pytest.approx(a["elbo"], rel=1e-4)
    saved = json.loads((tmp_path / "two" / "model.latent_dim=2" / "sweep-eval.json").read_text())
    assert saved["settings"]["iw_samples"] == 3
