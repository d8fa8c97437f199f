"""Runs side by side: one HTML page, a Markdown table and a CSV of the same numbers.

``compare_runs([run_dir, ...], out_dir)`` evaluates every run on its test split, overlays
their training curves, and shows their prior samples, manifolds and latent spaces next to
each other; the config keys that differ between runs label what the comparison is about.
"""

from __future__ import annotations

import csv
import io
import json
import re
from pathlib import Path

import numpy as np
from matplotlib.figure import Figure

from .atomicio import write_output
from .errors import VaelabError
from .figures import save_figure
from .report import (esc, findings_html, fmt, img, page, summarize_run, table)

#: (CSV column, Markdown/HTML header) of the comparison table, units in the headers
COLUMNS = [
    ("run", "run"),
    ("dataset", "dataset"),
    ("data_space", "nats measured over"),
    ("latent_dim", "latent dim"),
    ("epochs", "epochs"),
    ("parameters", "parameters"),
    ("test_elbo_nats", "ELBO (nats/image)"),
    ("test_recon_nats", "recon (nats/image)"),
    ("test_kl_nats", "KL (nats/image)"),
    ("test_nll_iw_nats", "-log p(x) IW (nats/image)"),
    ("bits_per_dim", "bits/dim"),
    ("active_units", "active units"),
    ("best_val_elbo_nats", "best val ELBO (nats/image)"),
    ("train_seconds", "train time (s)"),
    ("class_error_pct", "q(y|x) test error (%)"),
    ("probe_logreg_error_pct", "logreg probe error (%)"),
    ("probe_knn_error_pct", "k-NN probe error (%)"),
    ("collapse", "posterior collapse"),
]


def run_labels(paths: list[Path]) -> list[str]:
    """Short unique names: the folder names, with parents added where they clash."""
    paths = [Path(p).resolve() for p in paths]
    labels = [p.name for p in paths]
    if len(set(labels)) < len(labels):
        labels = [f"{p.parent.name}/{p.name}" for p in paths]
    if len(set(labels)) < len(labels):
        labels = [f"{label}#{i + 1}" for i, label in enumerate(labels)]
    return labels


def _flat(config: dict) -> dict:
    return {f"{s}.{k}": v for s in ("data", "model", "train") for k, v in config.get(s, {}).items()}


def config_differences(configs: list[dict]) -> list[str]:
    """Config keys whose values differ between the runs."""
    flats = [_flat(c) for c in configs]
    keys = sorted(set().union(*flats))
    return [k for k in keys if len({json.dumps(f.get(k), sort_keys=True) for f in flats}) > 1]


def _row(label: str, summary) -> dict:
    run, r = summary.run, summary.result
    rows = run.metrics()
    vals = [x["val_elbo"] for x in rows if isinstance(x.get("val_elbo"), (int, float))]
    probe = "probe_labels" in r
    return {
        "run": label, "dataset": r["dataset"], "data_space": r["data_space"],
        "latent_dim": run.config.model.latent_dim,
        "epochs": rows[-1].get("epoch", len(rows)) if rows else 0,
        "parameters": run.description.get("parameters"),
        "test_elbo_nats": r["elbo"], "test_recon_nats": r["recon"], "test_kl_nats": r["kl"],
        "test_nll_iw_nats": r.get("nll_iw"), "bits_per_dim": r.get("bits_per_dim"),
        "active_units": r["active_units"],
        "best_val_elbo_nats": max(vals) if vals else None,
        "train_seconds": sum(x.get("seconds") or 0 for x in rows),
        # errors are counts over the test images: 100 * count / n, rounded off float noise
        "class_error_pct": round(100 * r["class_error"], 6) if "class_error" in r else None,
        "probe_logreg_error_pct": round(100 * r["probe_logreg_error"], 6) if probe else None,
        "probe_knn_error_pct": round(100 * r["probe_knn_error"], 6) if probe else None,
        "collapse": "yes" if summary.collapsed else "no",
    }


def _cell(key: str, value) -> str:
    if value is None:
        return "n/a"
    if key == "parameters":
        return f"{value:,}"
    if key == "bits_per_dim":
        return fmt(value, 4)
    if key.endswith("_pct"):
        return fmt(value, 2)
    if key == "train_seconds":
        return fmt(value, 1)
    return fmt(value, 2) if isinstance(value, float) else str(value)


def overlaid_curves(runs: list[tuple[str, list[dict]]], path: str | Path) -> Path:
    """Validation ELBO, training loss, validation KL and active units per epoch, one line per run."""
    fig = Figure(figsize=(12, 7.5), dpi=100, layout="constrained")
    axes = fig.subplots(2, 2).ravel()
    panels = [("val_elbo", "validation ELBO", "nats/image"), ("train_loss", "training loss (recon + beta KL)", "nats/image"),
              ("val_kl", "validation KL", "nats/image"), ("active_units", "active units (validation)", "units")]
    from matplotlib.ticker import MaxNLocator

    for ax, (key, title, unit) in zip(axes, panels):
        for label, rows in runs:
            epochs = np.array([r.get("epoch", i + 1) for i, r in enumerate(rows)], dtype=float)
            values = np.array([r.get(key) if isinstance(r.get(key), (int, float)) else np.nan for r in rows], dtype=float)
            if np.isfinite(values).any():
                ax.plot(epochs, values, marker="o" if len(rows) < 30 else None, ms=3, label=label)
        ax.set_title(title, fontsize=10)
        ax.set_xlabel("epoch")
        ax.set_ylabel(unit)
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))
        ax.grid(alpha=0.3)
        ax.legend(fontsize=8)
    fig.suptitle("Training curves of the compared runs (nats per image, summed over pixels)", fontsize=11)
    return save_figure(fig, path, dpi=None)


def _markdown(header: list[str], rows: list[list[str]]) -> str:
    def line(cells):
        return "| " + " | ".join(str(c).replace("|", "\\|") for c in cells) + " |"

    return "\n".join([line(header), line(["---"] * len(header))] + [line(r) for r in rows]) + "\n"


def split_run_paths(paths: list[str | Path]) -> tuple[list[Path], list[Path]]:
    """(run directories, skipped files): a shell glob over a sweep folder also matches its
    results.csv and results.md; files are skipped, and no run directory at all is an error."""
    paths = [Path(p) for p in paths]
    runs = [p for p in paths if not p.is_file()]
    if not runs:
        raise VaelabError("vaelab compare needs at least one run directory"
                          + (f"; {', '.join(str(p) for p in paths)} are files" if paths else ""))
    return runs, [p for p in paths if p.is_file()]


def compare_runs(run_dirs: list[str | Path], out_dir: str | Path, iw_samples: int = 100, limit: int = 0,
                 probe_labels: int = 0, seed: int = 0, progress: bool = False, data_dir: str | None = None,
                 device: str = "cpu") -> dict[str, Path]:
    """Write compare.html, compare.md, compare.csv and the PNGs they show into ``out_dir``."""
    from .figures import latent_space, manifold, prior_samples
    from .rundir.load import load_run

    run_dirs, _ = split_run_paths(run_dirs)
    runs = [load_run(p, device=device, data_dir=data_dir) for p in run_dirs]  # every run loads (or is refused) before anything is written
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    labels = run_labels(run_dirs)
    summaries, table_rows, images = [], [], []
    for label, run in zip(labels, runs):
        summary = summarize_run(run, iw_samples=iw_samples, limit=limit, probe_labels=probe_labels, seed=seed,
                                progress=progress)
        stem = re.sub(r"[^A-Za-z0-9_.-]+", "_", label)
        pics = {
            "samples": prior_samples(run, out / f"{stem}-samples.png", n=8, seed=seed),
            "manifold": manifold(run, out / f"{stem}-manifold.png", n=15, latents=summary.latents),
            "latent_space": latent_space(summary.latents, out / f"{stem}-latent_space.png", max_points=3000),
        }
        summaries.append(summary)
        table_rows.append(_row(label, summary))
        images.append(pics)
    # rows grouped by the space their nats are in: numbers compare within a group only
    order = sorted(range(len(labels)), key=lambda i: table_rows[i]["data_space"])
    labels, summaries, table_rows, images = ([seq[i] for i in order] for seq in (labels, summaries, table_rows, images))
    spaces = sorted({row["data_space"] for row in table_rows})
    curves = overlaid_curves([(label, s.run.metrics()) for label, s in zip(labels, summaries)], out / "curves.png")
    columns = [c for c in COLUMNS if any(r[c[0]] is not None for r in table_rows)]
    differs = config_differences([s.run.config.to_dict() for s in summaries])
    split = summaries[0].result["split"]
    k = summaries[0].result.get("iw_samples")

    # CSV: raw numbers, units in the column names
    text = io.StringIO(newline="")
    writer = csv.writer(text)
    writer.writerow([c for c, _ in columns] + differs)
    for row, s in zip(table_rows, summaries):
        flat = _flat(s.run.config.to_dict())
        writer.writerow([row[c] if row[c] is not None else "" for c, _ in columns]
                        + [json.dumps(flat.get(key)) for key in differs])
    write_output(out / "compare.csv", text.getvalue())

    header = [h for _, h in columns]
    cells = [[_cell(c, row[c]) for c, _ in columns] for row in table_rows]
    note = (f"Evaluated on the {split} split with K={k} importance samples; units: nats per image, summed over "
            f"the dimensions of one image. Probe errors: classifiers on posterior means of "
            f"{probe_labels} labelled training images, test error." if probe_labels else
            f"Evaluated on the {split} split with K={k} importance samples; units: nats per image, summed over "
            f"the dimensions of one image.")
    if len(spaces) > 1:
        note = (f"WARNING: these runs measure their nats over {len(spaces)} different spaces ({'; '.join(spaces)}): "
                f"the likelihood columns compare only between rows of the same space (grouped together). ") + note
    diff_rows = [[label] + [json.dumps(_flat(s.run.config.to_dict()).get(key)) for key in differs]
                 for label, s in zip(labels, summaries)]

    md = [f"# Comparison of {len(labels)} runs\n\n", note + "\n\n", _markdown(header, cells)]
    if differs:
        md += ["\n## Config differences\n\n", _markdown(["run"] + differs, diff_rows)]
    md += ["\n## Training curves\n\n", f"![training curves]({curves.name})\n", "\n## Samples and manifolds\n\n",
           _markdown(["run", "prior samples", "latent manifold", "latent space"],
                     [[label, f"![samples]({p['samples'].name})", f"![manifold]({p['manifold'].name})",
                       f"![latent space]({p['latent_space'].name})"] for label, p in zip(labels, images)])]
    write_output(out / "compare.md", "".join(md))

    # on the page, runs are columns (side by side) and metrics rows, so a few runs fit the width
    by_metric = [[h] + [row[i] for row in cells] for i, h in enumerate(header) if i > 0]
    metrics_table = table(["metric"] + labels, by_metric, numeric=set(range(1, len(labels) + 1)))
    side = []
    for kind, title in (("samples", "Samples from the prior"), ("manifold", "Latent manifolds"),
                        ("latent_space", "Latent spaces (test posterior means)")):
        cells_html = "".join(f"<div><h4>{esc(label)}</h4>{img(p[kind], f'{label} {kind}')}</div>"
                             for label, p in zip(labels, images))
        side.append(f"<h3>{esc(title)}</h3><div class=side>{cells_html}</div>")
    diagnoses = "".join(f"<h4>{esc(label)}</h4>{findings_html(s.findings)}" for label, s in zip(labels, summaries))
    body = [f"<h1>vaelab comparison of {len(labels)} runs</h1>",
            f'<p class="sub">{esc(", ".join(str(Path(p).resolve()) for p in run_dirs))}</p>',
            "<h2>Metrics</h2>", f"<p>{esc(note)}</p>", f"<div class=wide>{metrics_table}</div>"]
    if differs:
        body += ["<h2>Config differences</h2>", table(["run"] + differs, diff_rows)]
    body += ["<h2>Training curves</h2>", f"<figure>{img(curves, 'overlaid training curves')}</figure>",
             "<h2>Side by side</h2>", "".join(side), "<h2>Diagnostics</h2>", diagnoses]
    write_output(out / "compare.html", page(f"vaelab comparison of {len(labels)} runs", "".join(body)))
    paths = {"html": out / "compare.html", "markdown": out / "compare.md", "csv": out / "compare.csv",
             "curves": curves}
    for label, p in zip(labels, images):
        for kind, path in p.items():
            paths[f"{label}:{kind}"] = path
    return paths
