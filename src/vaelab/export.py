"""A trained run as a self-contained model folder, to hand to someone else (`vaelab export`).

    MODEL_DIR/
      README.md           the model card: what the model is, how it was trained, its eval
                          numbers and the command that measured them, the files' SHA-256
      config.json         the run's config (without the local data folder or tracking)
      model.json          what the weights are, as in a run directory, and where they came from
      model.safetensors   the network's weights ("model.*") and the fitted data transform
                          (the PCA basis "pca.*", when there is one), checksummed
      eval.json           the evaluation the card quotes, with its settings
      metrics.jsonl       the training curves, when the run has them
      labelled.json       semi-supervised runs: which training images carried labels

The folder is a run directory without checkpoints and logs, so `vaelab.load_run` and every
command that takes a run (eval, sample, reconstruct, report, figures, compare) accept it;
loading reads JSON and safetensors only and never executes code from the folder.
"""

from __future__ import annotations

import datetime
import hashlib
import json
import os
import shutil
from pathlib import Path

from . import rundir
from .errors import VaelabError
from .rundir import checkpoint as ckpt
from .version import __version__

EVAL_FILE = "eval.json"
CARD = "README.md"
#: the metrics the card's table shows, in nats per image unless said
CARD_METRICS = (("elbo", "ELBO"), ("recon", "reconstruction term"), ("kl", "KL"),
                ("nll_iw", "-log p(x), importance-weighted"), ("bits_per_dim", "bits per dimension"),
                ("active_units", "active units"), ("class_error", "classification error"))


def export_run(run_dir: str | Path, out: str | Path, which: str = "final", split: str = "test",
               iw_samples: int = 100, limit: int = 0, seed: int = 0, evaluate: bool = True,
               data_dir: str | Path | None = None, device: str = "cpu", overwrite: bool = False) -> Path:
    """Write the model folder ``out`` from the run ``run_dir`` (its ``which`` weights: final,
    best or last), evaluated on ``split`` with ``iw_samples`` importance samples (``evaluate``
    False: no eval numbers, for a run whose data are not at hand). Returns ``out``."""
    from .rundir.load import load_run

    run_dir, out = Path(run_dir), Path(out)
    if out.exists() and not out.is_dir():
        raise VaelabError(f"--out {out} is a file: give a folder for the model")
    if out.exists() and any(out.iterdir()):
        if out.resolve() == run_dir.resolve():
            raise VaelabError("--out is the run directory itself: give a new folder for the model")
        if not overwrite:
            raise VaelabError(f"{out} already exists: pass --overwrite to replace it, or choose another --out")
        if not (out / "model.json").is_file():
            raise VaelabError(f"{out} is not empty and is not a model folder: refusing to overwrite it")
    run = load_run(run_dir, device=device, which=which, data_dir=data_dir)
    if run.config.data.transform == "m1":
        raise VaelabError(f"{run_dir} is M2 on the codes of another run (data.transform=m1): its inputs come from "
                          f"that run, which a model folder does not hold; export the M1 run itself, or share both "
                          f"run directories")
    settings = {"split": split, "iw_samples": iw_samples, "limit": limit, "seed": seed, "which": which}
    result = None
    if evaluate:
        result = run.evaluate(split=split, iw_samples=iw_samples, limit=limit, seed=seed)

    # written beside its final place, then renamed: a failure leaves no half-made folder
    temp = out.parent / f".{out.name}.export-{os.getpid()}"
    shutil.rmtree(temp, ignore_errors=True)
    temp.mkdir(parents=True)
    try:
        _write_folder(run, temp, settings, result)
        if out.exists():
            shutil.rmtree(out)
        temp.rename(out)
    except BaseException:
        shutil.rmtree(temp, ignore_errors=True)
        raise
    return out


def _write_folder(run, folder: Path, settings: dict, result: dict | None) -> None:
    tensors = ckpt.model_tensors(run.model)
    tensors.update(run.transform.state())
    ckpt.save_tensors(folder / rundir.WEIGHTS, tensors, {"vaelab": __version__, "exported_from": settings["which"],
                                                           **_run_id(run.description)})

    config = run.config.copy()
    config.data.data_dir = None  # a folder on the exporting machine: the user's own (--data-dir) instead
    config.data.download = False
    config.train.mlflow = False
    config.save(folder / rundir.CONFIG)

    source = {"run": run.path.resolve().name, "weights": run.weights.name, "which": settings["which"],
              "vaelab": __version__, "date": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds")}
    description = dict(run.description, weights=rundir.WEIGHTS, exported=source)
    _write_json(folder / rundir.MODEL_JSON, description)
    for name in (rundir.METRICS, rundir.LABELLED):
        if (run.path / name).is_file():
            shutil.copyfile(run.path / name, folder / name)
    if result is not None:
        _write_json(folder / EVAL_FILE, {"settings": settings, "command": eval_command(settings), "result": result})
    rundir.atomic_write_bytes(folder / CARD, model_card(run, config, description, settings, result, folder).encode())


def _write_json(path: Path, value) -> None:
    rundir.atomic_write_bytes(path, (json.dumps(value, indent=2) + "\n").encode())


def eval_command(settings: dict, folder: str = "MODEL_DIR") -> str:
    """The `vaelab eval` command line that measures the card's numbers again."""
    command = f"vaelab eval {folder} --split {settings['split']} --iw-samples {settings['iw_samples']} " \
              f"--seed {settings['seed']}"
    return command + (f" --limit {settings['limit']}" if settings["limit"] else "") + " --json"


def _sha256(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def model_card(run, config, description: dict, settings: dict, result: dict | None, folder: Path) -> str:
    """README.md of the model folder, in the shape of a Hugging Face model card (YAML front matter)."""
    m = config.model
    rows = run.metrics()
    network = "MLP" if m.encoder == "mlp" else "convolutional"
    lines = ["---", "library_name: vaelab", "tags:", "- vae", "- variational-autoencoder", f"- {config.data.name}",
             "---", "", f"# {run.path.resolve().name}: a vaelab {m.family} model", "",
             f"A variational autoencoder ({m.family}, {network} encoder and decoder, {m.latent_dim} latent dimensions, "
             f"{m.likelihood} likelihood, prior {m.prior}) trained by vaelab {description.get('vaelab', '?')} on "
             f"{config.data.name} (split {config.data.train_split}, transform {config.data.transform}), "
             f"{description.get('parameters', 0):,} parameters. The config that trained it is `config.json`"
             + (f" (preset `{config.preset}`)" if config.preset else "") + "; what the weights are is `model.json`.",
             ""]
    if rows:
        last = rows[-1]
        lines += [f"Trained for {last.get('epoch')} epochs; the last epoch's validation ELBO was "
                  f"{_number(last.get('val_elbo'))} nats per image (`metrics.jsonl` holds every epoch).", ""]
    lines += ["## Evaluation", ""]
    if result is None:
        lines += ["Not evaluated at export (its data were not at hand). Measure it with:", "",
                  "```bash", eval_command(settings) + " --data-dir DATA", "```", ""]
    else:
        lines += [f"On the {result.get('dataset')} {result.get('split')} split, {result.get('n_images')} images, "
                  f"in nats per image (summed over an image's dimensions, averaged over images), over "
                  f"{result.get('data_space')}; the importance-weighted likelihood with K = {result.get('iw_samples')} "
                  f"samples, seed {settings['seed']}:", "",
                  "| metric | value |", "|---|---|"]
        lines += [f"| {label} | {_number(result[key])} |" for key, label in CARD_METRICS if result.get(key) is not None]
        lines += ["", "Measured at export by vaelab " + __version__ + "; `eval.json` holds every number. The same "
                  "numbers again (datasets under DATA; `--data-dir` may be left out when `$VAELAB_DATA` is set):",
                  "", "```bash", eval_command(settings) + " --data-dir DATA", "```", ""]
    lines += ["## Use", "", "```python", "import vaelab", "", 'run = vaelab.load_run("MODEL_DIR")',
              "images = run.sample(16, seed=0)          # float (16, C, H, W) in [0, 1]",
              "means, stds = run.encode(uint8_images)    # posterior of your own uint8 (N, C, H, W) images",
              "```", "",
              "`vaelab sample MODEL_DIR --out samples.png`, `vaelab reconstruct`, `vaelab report` and "
              "`vaelab figures` take the folder as they take a run directory. Loading reads JSON and safetensors "
              "only: nothing in the folder is executed or unpickled.", "", "## Files", "",
              "| file | SHA-256 |", "|---|---|"]
    lines += [f"| `{path.name}` | `{_sha256(path)}` |" for path in sorted(folder.iterdir()) if path.is_file()]
    lines += ["", "`model.safetensors` holds the network's weights under `model.*`"
              + (" and the fitted PCA (`pca.mean`, `pca.components`, `pca.scale`, `pca.explained_variance_ratio`, "
                 "`pca.image_shape`)" if config.data.transform == "pca" else "")
              + "; its metadata carry a SHA-256 of the tensors, which vaelab checks on loading.", ""]
    return "\n".join(lines)


def _number(value) -> str:
    if isinstance(value, float):
        return f"{value:.4f}" if abs(value) < 10 else f"{value:.2f}"
    return "n/a" if value is None else str(value)


def _run_id(description: dict) -> dict:
    """The run's identity, carried into the exported weights (runs from before run ids have none)."""
    return {"run_id": description["run_id"]} if description.get("run_id") else {}
