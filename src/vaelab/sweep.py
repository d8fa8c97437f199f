"""Sweeps: train every combination of a grid of settings, evaluate each, tabulate.

    vaelab sweep mnist-mlp --grid model.latent_dim=2,5,20,50,100 --out sweeps/latent

(the command is cli/sweep.py)

Each combination gets its own run directory, ``OUT/<key=value,...>/``, so a sweep is
resumable: rerun the same command and completed runs are skipped, interrupted ones
continue from their last checkpoint (the trainer's resume), and evaluations already done
are read back. ``OUT/results.csv`` and ``OUT/results.md`` hold the evaluation metrics of
every run (nats per image, the units contract).
"""

from __future__ import annotations

import csv
import io
import itertools
import json
import os
import sys
from pathlib import Path

from . import rundir
from .config import RUN_ONLY_KEYS, Config
from .errors import VaelabError
from .rundir.validate import read_json

METRICS = ("elbo", "recon", "kl", "nll_iw", "bits_per_dim", "active_units", "data_space")
RESULTS_CSV = "results.csv"
RESULTS_MD = "results.md"
EVAL_FILE = "sweep-eval.json"
#: keys that may differ between the sweep's config and a run's saved one: where the data
#: live and how many threads or which device ran it change nothing about the result


# -- the grid -------------------------------------------------------------------------------

def parse_grid(items: list[str]) -> dict[str, list[str]]:
    """``["key=v1,v2", ...]`` -> {key: [v1, v2]}; commas inside [...] belong to one value.

    ``model.hidden=[500],[500,500]`` is two values, each a list.
    """
    grid: dict[str, list[str]] = {}
    for item in items:
        key, sep, values = item.partition("=")
        key = key.strip()
        if not sep or not key:
            raise VaelabError(f"--grid expects key=v1,v2,..., got {item!r} (e.g. --grid model.latent_dim=2,5,20)")
        if key in grid:
            raise VaelabError(f"--grid names {key} twice: give all its values in one --grid {key}=v1,v2,...")
        parts = _split_values(values)
        if not parts:
            raise VaelabError(f"--grid {key} has no values (e.g. --grid {key}=v1,v2)")
        if len(set(parts)) != len(parts):
            raise VaelabError(f"--grid {key} repeats a value: {values}")
        Config().set(key, parts[0], source="--grid")  # unknown keys fail here, with a suggestion
        grid[key] = parts
    return grid


def _split_values(text: str) -> list[str]:
    parts, depth, current = [], 0, ""
    for ch in text:
        depth += (ch == "[") - (ch == "]")
        if ch == "," and depth == 0:
            parts.append(current.strip())
            current = ""
        else:
            current += ch
    parts.append(current.strip())
    return [p for p in parts if p]


def combinations(grid: dict[str, list[str]]) -> list[dict[str, str]]:
    """Every combination, in the order the grid lists keys and values."""
    keys = list(grid)
    return [dict(zip(keys, values)) for values in itertools.product(*(grid[k] for k in keys))]


def run_name(assignment: dict[str, str]) -> str:
    """The run directory's name: ``key=value,key=value`` (path separators made safe)."""
    name = ",".join(f"{k}={v}" for k, v in assignment.items())
    return name.replace(os.sep, "_").replace(" ", "")


def plan(base: Config, grid: dict[str, list[str]]) -> list[tuple[str, dict[str, str], Config]]:
    """(name, assignment, validated config) for every combination; nothing runs yet."""
    runs, names = [], set()
    for assignment in combinations(grid):
        config = base.copy()
        for key, value in assignment.items():
            config.set(key, value, source="--grid")
        name = run_name(assignment)
        try:
            config.validate()
        except VaelabError as exc:
            raise VaelabError(f"sweep run {name}: {exc}") from None
        if name in names:
            raise VaelabError(f"two grid combinations map to one run directory {name!r}; use distinct values")
        names.add(name)
        runs.append((name, assignment, config))
    return runs


def _check_split(name: str, config: Config, split: str) -> None:
    from .data import splits

    if split == "val":
        if config.data.val_fraction == 0:
            raise VaelabError(f"sweep run {name}: --split val needs held-out images, but data.val_fraction=0")
    elif split not in splits(config.data.name):
        raise VaelabError(f"sweep run {name}: {config.data.name} has no {split} split; "
                          f"evaluate on the images held out of train with --split val")


# -- one run ----------------------------------------------------------------------------------

def run_status(run_dir: Path) -> str:
    """new (nothing there), done (final weights), partial (a checkpoint), restart (no checkpoint yet)."""
    if not run_dir.exists() or not any(run_dir.iterdir()):
        return "new"
    if not (run_dir / rundir.CONFIG).exists():
        raise VaelabError(f"{run_dir} is not empty and is not a vaelab run directory: move it out of the sweep")
    if (run_dir / rundir.WEIGHTS).exists():
        return "done"
    return "partial" if rundir.checkpoint_paths(run_dir) else "restart"


def _check_same_config(run_dir: Path, config: Config) -> None:
    saved = _flat(Config.load(run_dir / rundir.CONFIG).to_dict())
    wanted = _flat(config.to_dict())
    differing = sorted(k for k in set(saved) | set(wanted)
                       if k not in RUN_ONLY_KEYS and k != "preset" and saved.get(k) != wanted.get(k))
    if differing:
        shown = ", ".join(f"{k} {saved.get(k)!r} there vs {wanted.get(k)!r} now" for k in differing[:3])
        raise VaelabError(f"{run_dir} was trained with another config ({shown}): use another --out, "
                          f"or remove that run directory to retrain it")


def _flat(raw: dict, prefix: str = "") -> dict:
    out = {}
    for key, value in raw.items():
        if isinstance(value, dict):
            out.update(_flat(value, f"{prefix}{key}."))
        else:
            out[f"{prefix}{key}"] = value
    return out


def train_and_evaluate(config_dict: dict, run_dir: str, evaluation: dict, threads: int = 0,
                       progress: bool = False) -> dict:
    """Train one run (fresh, resumed, or skipped when complete) and evaluate it.

    Returns {"status": "ok", metrics...} or {"status": "failed", "error": "..."} when
    training stops on a VaelabError (e.g. a diverged run under train.nan_policy=raise).
    Runs in a worker process when the sweep has several jobs, so it takes plain data.
    """
    import torch

    from .rundir.load import load_run
    from .training.trainer import train

    if threads:
        torch.set_num_threads(threads)
    config = Config.from_dict(config_dict)
    path = Path(run_dir)
    status = "new"
    try:
        status = run_status(path)
        if status in ("done", "partial"):
            _check_same_config(path, config)
        if status != "done":
            train(config, path, resume=status == "partial", overwrite=status == "restart", progress=progress)
        result = _cached_evaluation(path, evaluation)
        if result is None:
            run = load_run(path)
            result = run.evaluate(split=evaluation["split"], iw_samples=evaluation["iw_samples"],
                                  limit=evaluation["limit"], seed=evaluation["seed"])
            _save_evaluation(path, evaluation, result)
            if config.train.mlflow:
                from .tracking import log_evaluation

                log_evaluation(path, config, result, settings=dict(evaluation, command="vaelab sweep"))
    except VaelabError as exc:
        return {"status": "failed", "error": str(exc), "resumed": status == "partial", "skipped": False}
    metrics = rundir.read_metrics(path)
    result = dict(result, status="ok", epochs=metrics[-1]["epoch"] if metrics else 0,
                  skipped=status == "done", resumed=status == "partial")
    return result


def _weights_stamp(path: Path) -> list[int]:
    stat = (path / rundir.WEIGHTS).stat()
    return [stat.st_mtime_ns, stat.st_size]


def _cached_evaluation(path: Path, evaluation: dict) -> dict | None:
    """An earlier evaluation of these very weights with the same settings, if any."""
    try:
        saved = read_json(path / EVAL_FILE)
    except VaelabError:  # missing or damaged: evaluated again
        return None
    if not isinstance(saved, dict) or saved.get("settings") != evaluation or saved.get("weights") != _weights_stamp(path):
        return None
    return saved.get("result")


def _save_evaluation(path: Path, evaluation: dict, result: dict) -> None:
    record = {"settings": evaluation, "weights": _weights_stamp(path), "result": result}
    rundir.atomic_write_bytes(path / EVAL_FILE, (json.dumps(record, indent=2) + "\n").encode())


# -- the sweep --------------------------------------------------------------------------------

def sweep(base: Config, grid: dict[str, list[str]], out: str | Path, jobs: int = 1, iw_samples: int = 100,
          split: str = "test", eval_limit: int = 0, seed: int = 0, progress: bool = True,
          log=None) -> list[dict]:
    """Train and evaluate every combination of ``grid`` over ``base`` into ``out``.

    ``jobs`` > 1 runs that many worker processes, each with cores // jobs torch threads.
    Returns one row per run (also written to OUT/results.csv and OUT/results.md).
    """
    log = log or (lambda message: print(message, file=sys.stderr, flush=True))
    if jobs < 1:
        raise VaelabError(f"--jobs must be at least 1, got {jobs}")
    if iw_samples < 0:
        raise VaelabError(f"--iw-samples must be 0 (off) or more, got {iw_samples}")
    if eval_limit < 0:
        raise VaelabError(f"--eval-limit must be 0 (all) or more, got {eval_limit}")
    out = Path(out)
    runs = plan(base, grid)
    for name, _, config in runs:  # what cannot work is said before anything trains
        _check_split(name, config, split)
        if run_status(out / name) in ("done", "partial"):
            _check_same_config(out / name, config)
    out.mkdir(parents=True, exist_ok=True)
    evaluation = {"split": split, "iw_samples": iw_samples, "limit": eval_limit, "seed": seed}
    jobs = min(jobs, len(runs))
    results: dict[str, dict] = {}

    def record(name: str, result: dict) -> None:
        results[name] = result
        if result["status"] == "ok":
            what = "already done" if result["skipped"] else ("resumed and done" if result["resumed"] else "done")
            log(f"[{len(results)}/{len(runs)}] {name}: {what}; ELBO {result['elbo']:.2f} nats/image")
        else:
            log(f"[{len(results)}/{len(runs)}] {name}: FAILED: {result['error']}")

    log(f"sweep: {len(runs)} runs into {out}"
        + (f", {jobs} at a time, each with {max(1, _cores() // jobs)} torch thread(s)" if jobs > 1 else ""))
    if jobs == 1:
        for name, _, config in runs:
            record(name, train_and_evaluate(config.to_dict(), str(out / name), evaluation, progress=progress))
    else:
        # finished and evaluated runs are only read back: no worker process for them
        pending = []
        for name, assignment, config in runs:
            if run_status(out / name) == "done" and _cached_evaluation(out / name, evaluation) is not None:
                record(name, train_and_evaluate(config.to_dict(), str(out / name), evaluation))
            else:
                pending.append((name, assignment, config))
        if pending:
            workers = min(jobs, len(pending))
            _run_parallel(pending, out, evaluation, workers, max(1, _cores() // workers), record)
    rows = [_row(name, assignment, results[name], evaluation) for name, assignment, _ in runs]
    write_tables(rows, list(grid), out, evaluation)
    failed = [row for row in rows if row["status"] != "ok"]
    if failed:
        log(f"{len(failed)} of {len(rows)} runs failed; rerun the same command to retry them")
    return rows


def _run_parallel(runs, out: Path, evaluation: dict, jobs: int, threads: int, record) -> None:
    import multiprocessing
    from concurrent.futures import ProcessPoolExecutor, as_completed

    # spawn, not fork: a forked child inherits torch's thread pools in an unknown state
    context = multiprocessing.get_context("spawn")
    with ProcessPoolExecutor(max_workers=jobs, mp_context=context) as pool:
        futures = {pool.submit(train_and_evaluate, config.to_dict(), str(out / name), evaluation, threads): name
                   for name, _, config in runs}
        try:
            for future in as_completed(futures):
                record(futures[future], future.result())
        except BaseException:
            pool.shutdown(wait=True, cancel_futures=True)
            raise


def _cores() -> int:
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # not Linux
        return os.cpu_count() or 1


def _row(name: str, assignment: dict[str, str], result: dict, evaluation: dict) -> dict:
    row = {"run": name, **assignment, "status": result["status"]}
    if result["status"] == "ok":
        row.update(epochs=result["epochs"], **{k: result.get(k) for k in METRICS},
                   iw_samples=result.get("iw_samples"), n_images=result.get("n_images"), split=evaluation["split"])
    else:
        row["error"] = result["error"]
    return row


# -- the tables -------------------------------------------------------------------------------

def write_tables(rows: list[dict], grid_keys: list[str], out: Path, evaluation: dict) -> None:
    columns = ["run", *grid_keys, "status", "epochs", *METRICS, "iw_samples", "n_images", "split", "error"]
    text = io.StringIO()
    writer = csv.DictWriter(text, fieldnames=columns, extrasaction="ignore", lineterminator="\n")
    writer.writeheader()
    for row in rows:
        writer.writerow({k: ("" if row.get(k) is None else row.get(k)) for k in columns})
    rundir.atomic_write_bytes(out / RESULTS_CSV, text.getvalue().encode())
    rundir.atomic_write_bytes(out / RESULTS_MD, markdown_table(rows, grid_keys, evaluation).encode())


def markdown_table(rows: list[dict], grid_keys: list[str], evaluation: dict) -> str:
    k = evaluation["iw_samples"]
    n = next((row["n_images"] for row in rows if row.get("n_images")), "?")
    lines = [
        f"Evaluated on the {evaluation['split']} split ({n} images). ELBO, reconstruction (-log p(x|z), one "
        f"posterior sample), KL and IW-NLL (-log p(x), {k} importance samples) in nats per image, summed over "
        f"its dimensions; bits/dim over 8-bit pixels, n/a where the model is not one of 8-bit pixels "
        f"(binarized data, PCA components); active units: latent dimensions with Cov_x(E_q[z]) > 0.01. "
        f"Nats measured over: {'; '.join(sorted({r['data_space'] for r in rows if r.get('data_space')})) or 'n/a'}"
        + (" (different spaces: their nats do not compare across them)"
           if len({r.get('data_space') for r in rows if r.get('data_space')}) > 1 else "") + ".",
        "",
        "| " + " | ".join([*grid_keys, "epochs", "ELBO", "recon", "KL", f"IW-NLL (K={k})", "bits/dim",
                          "active units"]) + " |",
        "|" + "---|" * (len(grid_keys) + 7),
    ]
    for row in rows:
        cells = [str(row[key]) for key in grid_keys]
        if row["status"] == "ok":
            cells += [str(row["epochs"]), *(_number(row[m]) for m in ("elbo", "recon", "kl", "nll_iw")),
                      _number(row["bits_per_dim"], 4), str(row["active_units"])]
        else:
            cells += [f"failed: {row['error']}".replace("|", "/")] + [""] * 6
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


def _number(value, digits: int = 2) -> str:
    return "n/a" if value is None else f"{value:.{digits}f}"
