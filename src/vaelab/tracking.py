"""Experiment tracking with MLflow, an optional extra (``pip install 'vaelab[mlflow]'``).

Where runs go is MLflow's own choice of settings: the tracking server or store named by
``MLFLOW_TRACKING_URI``, else a file store ``mlruns/`` in the working directory; the
experiment ``MLFLOW_EXPERIMENT_NAME``, else "vaelab". One vaelab run is one MLflow run,
named after the run directory, whose ``mlflow.json`` records it, so a resumed training, a
later ``vaelab eval --track``, a sweep and a reproduction all log into the same MLflow run:

- training (``train.mlflow=true``, or ``--track``): the config as params, every
  metrics.jsonl row as metrics at step = epoch, and at the end the run's files and figures
  (prior samples, reconstructions, the progress grids when there are any);
- an evaluation: its numbers as ``eval/SPLIT/KEY`` metrics, and its JSON as an artifact.

mlflow is imported only when a run is tracked: the base install needs no tracking package.
"""

from __future__ import annotations

import json
import math
import os
import tempfile
import time
from pathlib import Path

from . import rundir
from .errors import VaelabError
from .rundir.validate import read_json
from .version import __version__

MLFLOW_FILE = "mlflow.json"  # in the run directory: which MLflow run it logs to
DEFAULT_EXPERIMENT = "vaelab"
FIGURES = "figures"  # artifact folder of the figures


def _mlflow():
    try:
        import mlflow
    except ImportError:
        raise VaelabError("tracking with MLflow (--track, train.mlflow=true) needs the mlflow package: "
                          "pip install 'vaelab[mlflow]' (or pip install mlflow-skinny)") from None
    return mlflow


def tracking_uri() -> str:
    """MLFLOW_TRACKING_URI, else the file store mlruns/ in the working directory (as a URI)."""
    return os.environ.get("MLFLOW_TRACKING_URI") or Path("mlruns").resolve().as_uri()


def client():
    """An MlflowClient on :func:`tracking_uri` (the client API: no global active run that
    would clash with a user's own ``mlflow.start_run``)."""
    mlflow = _mlflow()
    uri = tracking_uri()
    if uri.startswith("file:"):  # MLflow 3 refuses a file store unless it is asked for by name
        os.environ.setdefault("MLFLOW_ALLOW_FILE_STORE", "true")
    return mlflow.MlflowClient(tracking_uri=uri)


def _experiment_id(mlflow_client) -> str:
    name = os.environ.get("MLFLOW_EXPERIMENT_NAME") or DEFAULT_EXPERIMENT
    experiment = mlflow_client.get_experiment_by_name(name)
    return experiment.experiment_id if experiment is not None else mlflow_client.create_experiment(name)


def _recorded_run(mlflow_client, run_dir: Path) -> str | None:
    """The MLflow run RUN_DIR/mlflow.json names, if it is in the current store and not deleted."""
    try:
        record = read_json(run_dir / MLFLOW_FILE)
    except VaelabError:  # missing or damaged: a new MLflow run
        return None
    if not isinstance(record, dict) or record.get("tracking_uri") != tracking_uri():
        return None
    try:
        run = mlflow_client.get_run(record["run_id"])
    except Exception:  # gone from the store (MlflowException), or a bad record
        return None
    return run.info.run_id if run.info.lifecycle_stage == "active" else None


def open_run(run_dir: Path, config) -> tuple[object, str, bool]:
    """(client, run id, created) of the MLflow run of ``run_dir``: the one its mlflow.json
    records, else a new one (named after the folder, with the config as params), recorded there."""
    mlflow_client = client()
    run_dir = Path(run_dir)
    run_id = _recorded_run(mlflow_client, run_dir)
    if run_id is not None:
        return mlflow_client, run_id, False
    tags = {"vaelab.run_dir": str(run_dir.resolve()), "vaelab.version": __version__,
            "vaelab.preset": str(config.preset), "vaelab.dataset": config.data.name}
    run = mlflow_client.create_run(_experiment_id(mlflow_client), run_name=run_dir.resolve().name, tags=tags)
    run_id = run.info.run_id
    log_params(mlflow_client, run_id, config_params(config))
    record = {"tracking_uri": tracking_uri(), "experiment_id": run.info.experiment_id, "run_id": run_id}
    rundir.atomic_write_bytes(run_dir / MLFLOW_FILE, (json.dumps(record, indent=2) + "\n").encode())
    return mlflow_client, run_id, True


def config_params(config) -> dict[str, str]:
    """Every config key as an MLflow param: ``section.key`` -> its value as text."""
    params = {}
    for section, values in config.to_dict().items():
        if isinstance(values, dict):
            params.update({f"{section}.{key}": json.dumps(value) if isinstance(value, (list, dict)) else str(value)
                           for key, value in values.items()})
        else:
            params[section] = str(values)
    return params


def log_params(mlflow_client, run_id: str, params: dict[str, str]) -> None:
    from mlflow.entities import Param

    items = [Param(k, v) for k, v in params.items()]
    for start in range(0, len(items), 100):  # MLflow takes at most 100 params in one batch
        mlflow_client.log_batch(run_id, params=items[start:start + 100])


def numeric_metrics(row: dict, prefix: str = "") -> dict[str, float]:
    """The finite numbers of a metrics row (or an eval result), lists as KEY/NNN."""
    out = {}
    for key, value in row.items():
        if isinstance(value, bool) or key == "epoch":
            continue
        if isinstance(value, (int, float)):
            if math.isfinite(value):
                out[prefix + key] = float(value)
        elif isinstance(value, list) and value and all(isinstance(v, (int, float)) and not isinstance(v, bool)
                                                       for v in value):
            out.update({f"{prefix}{key}/{i:03d}": float(v) for i, v in enumerate(value) if math.isfinite(v)})
    return out


def log_metrics(mlflow_client, run_id: str, metrics: dict[str, float], step: int) -> None:
    from mlflow.entities import Metric

    now = int(time.time() * 1000)
    items = [Metric(key, value, now, step) for key, value in metrics.items()]
    for start in range(0, len(items), 1000):  # MLflow's limit per batch
        mlflow_client.log_batch(run_id, metrics=items[start:start + 1000])


def log_evaluation(run_dir: Path, config, result: dict, settings: dict | None = None) -> str:
    """An evaluation of ``run_dir`` into its MLflow run: the numbers as ``eval/SPLIT/KEY``
    metrics and the result (with ``settings``, how it was measured) as an artifact. Returns
    the MLflow run id."""
    mlflow_client, run_id, created = open_run(run_dir, config)
    split = str(result.get("split", "test"))
    log_metrics(mlflow_client, run_id, numeric_metrics(result, f"eval/{split}/"), step=0)
    record = {"settings": settings or {}, "result": result}
    with tempfile.TemporaryDirectory() as tmp:
        name = f"{split}-K{result.get('iw_samples', 0)}.json"
        path = Path(tmp) / name
        path.write_text(json.dumps(record, indent=2, default=str) + "\n")
        mlflow_client.log_artifact(run_id, str(path), artifact_path="eval")
    if created:
        mlflow_client.set_terminated(run_id, "FINISHED")
    return run_id
