"""MLflow tracking (`--track`, train.mlflow=true), read back with MLflow's own client."""

from __future__ import annotations

import json
import sys

import pytest

from vaelab import rundir
from vaelab.cli import main

TINY = ["--set", "data.name=mnist-sample", "--set", "data.limit=600", "--set", "model.hidden=32",
        "--set", "model.latent_dim=3", "--set", "train.epochs=2", "--set", "train.batch_size=100",
        "--set", "train.threads=1"]


def test_training_and_eval_are_logged_to_one_mlflow_run(tmp_path, monkeypatch, capsys, one_torch_thread):
    mlflow = pytest.importorskip("mlflow")
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    monkeypatch.delenv("MLFLOW_EXPERIMENT_NAME", raising=False)
    monkeypatch.chdir(tmp_path)  # the default store is ./mlruns
    run_dir = tmp_path / "run"
    assert main(["train", "--preset", "mnist-mlp", *TINY, "--out", str(run_dir), "--quiet", "--track"]) == 0
    assert (tmp_path / "mlruns").is_dir()
    record = json.loads((run_dir / "mlflow.json").read_text())
    client = mlflow.MlflowClient(tracking_uri=(tmp_path / "mlruns").as_uri())
    run = client.get_run(record["run_id"])
    assert run.info.status == "FINISHED" and run.info.run_name == "run"
    assert client.get_experiment(run.info.experiment_id).name == "vaelab"

    # the config as params, every epoch's row as metrics at step = epoch
    params = run.data.params
    assert params["train.epochs"] == "2" and params["model.hidden"] == "[32]" and params["train.mlflow"] == "True"
    rows = rundir.read_metrics(run_dir)
    for key in ("train_loss", "val_elbo", "images_per_s"):
        history = client.get_metric_history(run.info.run_id, key)
        assert [(m.step, m.value) for m in sorted(history, key=lambda m: m.step)] == \
            [(r["epoch"], pytest.approx(r[key])) for r in rows]
    assert len(client.get_metric_history(run.info.run_id, "kl_per_dim/002")) == 2
    artifacts = {a.path for folder in ("run", "figures") for a in client.list_artifacts(run.info.run_id, folder)}
    assert {"run/config.json", "run/metrics.jsonl", "figures/samples.png", "figures/reconstructions.png"} <= artifacts

    # a later eval goes into the same MLflow run
    capsys.readouterr()
    assert main(["eval", str(run_dir), "--iw-samples", "5", "--limit", "200", "--json", "--track"]) == 0
    result = json.loads(capsys.readouterr().out)
    metrics = client.get_run(record["run_id"]).data.metrics
    assert metrics["eval/test/elbo"] == pytest.approx(result["elbo"])
    assert metrics["eval/test/nll_iw"] == pytest.approx(result["nll_iw"])
    assert [a.path for a in client.list_artifacts(record["run_id"], "eval")] == ["eval/test-K5.json"]

    # resuming goes on in the same MLflow run; the changed setting is kept as a tag
    assert main(["train", "--resume", str(run_dir), "--set", "train.epochs=3", "--quiet"]) == 0
    assert json.loads((run_dir / "mlflow.json").read_text())["run_id"] == record["run_id"]
    run = client.get_run(record["run_id"])
    assert run.info.status == "FINISHED" and run.data.tags["resumed.train.epochs"] == "3"
    assert sorted(m.step for m in client.get_metric_history(record["run_id"], "train_loss")) == [1, 2, 3]
    assert len(client.search_runs([run.info.experiment_id])) == 1


def test_mlflow_tracking_uri_is_honoured(tmp_path, monkeypatch, one_torch_thread):
    mlflow = pytest.importorskip("mlflow")
    store = tmp_path / "elsewhere"
    monkeypatch.setenv("MLFLOW_TRACKING_URI", store.as_uri())
    monkeypatch.setenv("MLFLOW_EXPERIMENT_NAME", "mine")
    monkeypatch.setenv("MLFLOW_ALLOW_FILE_STORE", "true")
    monkeypatch.chdir(tmp_path)
    assert main(["train", "--preset", "mnist-mlp", *TINY, "--set", "train.epochs=1", "--set", "train.mlflow=true",
                 "--out", "run", "--quiet"]) == 0
    assert not (tmp_path / "mlruns").exists()
    client = mlflow.MlflowClient(tracking_uri=store.as_uri())
    (run,) = client.search_runs([client.get_experiment_by_name("mine").experiment_id])
    assert run.info.run_id == json.loads((tmp_path / "run" / "mlflow.json").read_text())["run_id"]


def test_without_mlflow_tracking_is_one_clear_error_and_nothing_written(tmp_path, monkeypatch, capsys):
    monkeypatch.setitem(sys.modules, "mlflow", None)  # as if it were not installed
    monkeypatch.chdir(tmp_path)
    assert main(["train", "--preset", "mnist-mlp", *TINY, "--out", "run", "--quiet", "--track"]) == 2
    err = capsys.readouterr().err.strip()
    assert "\n" not in err and err.startswith("vaelab: error:") and "pip install 'vaelab[mlflow]'" in err
    assert not (tmp_path / "run").exists() and not (tmp_path / "mlruns").exists()


def test_a_tracked_sweep_logs_each_run_and_its_evaluation(tmp_path, monkeypatch, one_torch_thread):
    mlflow = pytest.importorskip("mlflow")
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    monkeypatch.delenv("MLFLOW_EXPERIMENT_NAME", raising=False)
    monkeypatch.chdir(tmp_path)
    tiny = [*TINY, "--set", "train.epochs=1"]  # the later --set wins
    assert main(["sweep", "mnist-mlp", "--grid", "model.latent_dim=2,3", "--out", "sweep", "--iw-samples", "4",
                 "--eval-limit", "60", "--quiet", "--track", *tiny]) == 0
    client = mlflow.MlflowClient(tracking_uri=(tmp_path / "mlruns").as_uri())
    for name in ("model.latent_dim=2", "model.latent_dim=3"):
        run_dir = tmp_path / "sweep" / name
        run = client.get_run(json.loads((run_dir / "mlflow.json").read_text())["run_id"])
        saved = json.loads((run_dir / "sweep-eval.json").read_text())["result"]
        assert run.info.run_name == name and run.data.params["model.latent_dim"] == name[-1]
        assert run.data.metrics["eval/test/nll_iw"] == pytest.approx(saved["nll_iw"])
        assert len(client.get_metric_history(run.info.run_id, "val_elbo")) == 1
