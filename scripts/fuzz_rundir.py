"""Fuzz run directories: mutate a tiny run's files as a hostile user would, then load,
evaluate, sample, read the metrics, summarise them as the report does, and resume.

    python scripts/fuzz_rundir.py --count 2000 --workers 1 --seed 0

Four tiny runs are trained once (cached under the temp folder, keyed by vaelab's source):
three of one architecture with different seeds (so each has another run's files to be
swapped in), one of them stopped mid-epoch (its newest checkpoint holds the epoch's order
and partial sums, and it has no final weights), and one on PCA components. Each input
copies one of them, applies one seeded mutation (byte flips, truncation, JSON type swaps,
deep nesting, huge numbers, NaN/inf, a file replaced by a directory, a symbolic link to one
or a FIFO, files swapped between runs,
checkpoints re-written *with a valid checksum* holding wrong shapes, dtypes, names, NaN
weights, optimizer metadata or another run's id), then runs every reader on it in a forked
worker. Each input ends as

    fine       every reader returned, with finite numbers equal to the unmutated run's
    clean      a reader refused with one line (VaelabError)
    traceback  any other exception
    crash      the worker died by a signal (a new worker takes the next input)
    hang       an input took longer than --timeout seconds
    silent     a reader returned a non-finite number, a number the mutation should not have
               changed, or accepted a file the mutation must have made unusable

Exit status 1 if any input ended as traceback, crash, hang or silent.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import math
import multiprocessing as mp
import os
import random
import re
import shutil
import signal
import sys
import tempfile
import time
import traceback
from collections import Counter
from multiprocessing.connection import wait
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "src"))
os.environ.setdefault("OMP_NUM_THREADS", "1")

import torch  # noqa: E402

import vaelab  # noqa: E402
from vaelab import rundir  # noqa: E402
from vaelab.config import Config  # noqa: E402
from vaelab.errors import VaelabError  # noqa: E402
from vaelab.rundir import checkpoint as ckpt  # noqa: E402

OUTCOMES = ("fine", "clean", "traceback", "crash", "hang", "silent")
DEFECTS = ("traceback", "crash", "hang", "silent")
TINY = ["data.name=mnist-sample", "data.limit=200", "model.hidden=16", "model.latent_dim=2",
        "train.batch_size=50", "train.device=cpu", "train.threads=1", "train.epochs=2",
        "train.keep_checkpoints=2"]
BASES = {  # name -> extra settings; "a", "b" and "mid" share an architecture
    "a": ["train.seed=1"],
    "b": ["train.seed=2"],
    "pca": ["data.transform=pca", "data.pca_components=12", "model.likelihood=gaussian"],
    "mid": ["train.seed=3"],  # stopped 2 steps into epoch 2: a mid-epoch checkpoint, no final weights
}
MID_STOP = 2
EVAL_IMAGES = 8  # a few images keep every input fast
IW = 2


# -- the base runs ---------------------------------------------------------------------------

def source_key() -> str:
    h = hashlib.sha256(json.dumps([TINY, BASES]).encode())
    for path in sorted((REPO / "src" / "vaelab").rglob("*.py")):
        h.update(path.read_bytes())
    return h.hexdigest()[:16]


def base_runs(cache: Path | None = None) -> Path:
    """The tiny runs, trained once per version of the source."""
    cache = Path(cache or tempfile.gettempdir()) / f"vaelab-fuzz-rundir-{source_key()}"
    if (cache / "done").exists():
        return cache
    shutil.rmtree(cache, ignore_errors=True)
    cache.mkdir(parents=True)
    threads = torch.get_num_threads()
    for name, extra in BASES.items():
        config = Config()
        config.apply_overrides(TINY + extra)
        try:
            vaelab.train(config.validate(), cache / name, progress=False, callbacks=[_StopMidEpoch()] * (name == "mid"))
        except KeyboardInterrupt:  # Stopped, as on SIGTERM: the mid-epoch checkpoint is written
            pass
    torch.set_num_threads(threads)
    (cache / "done").write_text("")
    return cache


class _StopMidEpoch:
    """Asks training to stop MID_STOP steps into epoch 2, as SIGTERM does."""

    def on_step_end(self, trainer, step, beta):
        if step == trainer.steps_per_epoch + MID_STOP:
            trainer.stop_requested, trainer.stop_signal = "SIGTERM", signal.SIGTERM


# -- the readers -----------------------------------------------------------------------------

def _images():
    from vaelab.data import load_dataset

    return torch.as_tensor(load_dataset("mnist-sample", "test").images[:EVAL_IMAGES])


def read_everything(run: Path, images) -> dict:
    """Every reader of a run directory, in-process; returns {reader: result or exception}."""
    from vaelab.diagnostics import diagnose_training, instability_episodes
    from vaelab.report import _training_summary
    from vaelab.rundir.load import load_run
    from vaelab.training.trainer import train

    results = {}

    def attempt(name, fn):
        try:
            results[name] = ("ok", fn())
        except VaelabError as exc:
            results[name] = ("clean", str(exc))
        except Exception as exc:  # noqa: BLE001: anything else is a defect, recorded
            results[name] = ("traceback", "".join(traceback.format_exception_only(type(exc), exc)).strip()
                             + " @ " + traceback.extract_tb(exc.__traceback__)[-1].filename.split("src/")[-1]
                             + ":" + str(traceback.extract_tb(exc.__traceback__)[-1].lineno))

    def evaluate(which):
        r = load_run(run, which=which)
        out = r.evaluate(images=images, iw_samples=IW, batch_size=EVAL_IMAGES)
        return {"elbo": out["elbo"], "nll": out["nll_iw"], "sample": r.sample(4, seed=0)}

    def metrics():
        rows = rundir.read_metrics(run)
        return {"rows": rows, "summary": _training_summary(rows), "episodes": len(instability_episodes(rows)),
                "findings": len(diagnose_training(rows))}

    def resume():
        config = Config.load(run / rundir.CONFIG)  # as `vaelab train --resume` does
        config.apply_overrides(["train.epochs=3"])
        stop = _FirstStep()
        try:
            train(config, run, resume=True, progress=False, callbacks=[stop])
        except _FirstStep.Done:  # the restored state went through one optimizer step
            pass
        return {"finite": stop.finite}

    attempt("final", lambda: evaluate("final"))
    attempt("last", lambda: evaluate("last"))
    attempt("metrics", metrics)
    attempt("resume", resume)
    return results


class _FirstStep:
    """Stops a resumed run right after its first optimizer step (where a bad moment would
    crash the fused Adam kernel), noting whether the weights are still finite."""

    class Done(Exception):
        pass

    finite = None

    def on_step_end(self, trainer, step, beta):
        self.finite = all(bool(torch.isfinite(p).all()) for p in trainer.model.parameters())
        raise self.Done


READERS = ("final", "last", "metrics", "resume")


def reads(reader: str, target: str, base: str, newest: str) -> bool:
    """Whether ``reader`` reads ``target`` (a mutation elsewhere cannot matter to it): load_run
    takes the newest checkpoint where there are no final weights, and a resumed PCA run takes
    its PCA from the final weights."""
    files = {"final": {"config.json", "model.json", newest if base == "mid" else rundir.WEIGHTS},
             "last": {"config.json", "model.json", newest},
             "metrics": {"metrics.jsonl"},
             "resume": {"config.json", "model.json", "metrics.jsonl", "train.log", newest}}[reader]
    return target in files or (reader == "resume" and base == "pca" and target == rundir.WEIGHTS)


# -- mutations -------------------------------------------------------------------------------

class Mutation:
    """What was done, to which file, and which readers must refuse it: ``must_refuse`` is
    True (every reader of the file), False, or a set of readers."""

    def __init__(self, base: str, target: str, kind: str, must_refuse, newest: str):
        self.base, self.target, self.kind = base, target, kind
        readers = {r for r in READERS if reads(r, target, base, newest)}
        self.must_refuse = readers if must_refuse is True else readers & set(must_refuse or ())

    def __str__(self):
        return f"{self.base}:{self.target}:{self.kind}"


WEIRD_VALUES = ["text", "", [], {}, None, True, False, 0, -1, 10**30, -(10**30), 10**400, 1e308, -1e308,
                float("nan"), float("inf"), float("-inf"), 0.5, [1, 2, 3], {"a": 1}, [[[[]]]], 2**63, 2**32]


def _paths(value, prefix=()):
    """Every path (tuple of keys / indexes) into a JSON value."""
    out = [prefix]
    if isinstance(value, dict):
        for k, v in value.items():
            out += _paths(v, prefix + (k,))
    elif isinstance(value, list):
        for i, v in enumerate(value[:8]):
            out += _paths(v, prefix + (i,))
    return out


def mutate_json(value, rng: random.Random) -> tuple[object, str]:
    """One structural change to a parsed JSON value."""
    paths = [p for p in _paths(value) if p]
    if not paths:
        return rng.choice(WEIRD_VALUES), "replaced whole"
    path = rng.choice(paths)
    parent = value
    for key in path[:-1]:
        parent = parent[key]
    op = rng.random()
    if op < 0.15 and isinstance(parent, dict):
        del parent[path[-1]]
        return value, f"deleted {'.'.join(map(str, path))}"
    if op < 0.25:
        parent[path[-1]] = f"__deep{rng.choice([40, 3000, 100000])}__"
        return value, f"nested {'.'.join(map(str, path))}"
    new = rng.choice(WEIRD_VALUES)
    parent[path[-1]] = new
    return value, f"{'.'.join(map(str, path))}={new!r:.20}"


def _dumps(value) -> str:
    """JSON text; a "__deepN__" string stands for a list nested N deep (json.dumps would recurse)."""
    return re.sub(r'"__deep(\d+)__"', lambda m: "[" * int(m.group(1)) + "]" * int(m.group(1)), json.dumps(value))


def _raw_checkpoint(path: Path) -> tuple[dict, dict]:
    """A checkpoint's tensors and metadata, read without checking its digest (to re-sign it)."""
    from safetensors.torch import load as st_load

    raw = path.read_bytes()
    header = json.loads(raw[8:8 + int.from_bytes(raw[:8], "little")])
    return dict(st_load(raw)), json.loads(header["__metadata__"]["meta"])


def resign(path: Path, rng: random.Random, other: Path) -> tuple[str, bool]:
    """Change a checkpoint's tensors or metadata, then write it with a valid checksum."""
    tensors, meta = _raw_checkpoint(path)
    names = sorted(tensors)
    used = [n for n in names if n.startswith(("model.", "optim.")) or
            (n.startswith(("rng.", "epoch.")) and path.name.startswith("last")) or
            (n.startswith("pca.") and path.name == "model.safetensors")]
    name = rng.choice(used or names)
    t = tensors[name]
    op = rng.choice(["shape", "shape", "dtype", "rename", "delete", "nan", "huge", "step", "meta", "meta",
                     "run_id", "extra", "same", "swap_tensor"])
    must = True
    if op == "shape":
        shapes = [(3,), (0,), (), (0, *t.shape[1:]), tuple(d + 1 for d in t.shape) or (2,), t.shape[::-1],
                  (*t.shape, 1)]
        shape = rng.choice([s for s in shapes if tuple(s) != tuple(t.shape)] or [(7,)])
        tensors[name] = torch.zeros(shape, dtype=t.dtype)
        what = f"{name} shape {tuple(shape)}"
    elif op == "dtype":
        dtype = rng.choice([d for d in (torch.float16, torch.float64, torch.bfloat16, torch.int64, torch.uint8,
                                        torch.bool, torch.int32) if d != t.dtype])
        tensors[name] = t.to(dtype)
        what = f"{name} as {dtype}"
    elif op == "rename":
        new = rng.choice([name + "x", name.replace(".", "..", 1), name.replace("optim.", "optim.99."),
                          name.replace("model.", "modelx.")])
        tensors[new] = tensors.pop(name)
        what = f"{name} renamed {new}"
        must = new != name
    elif op == "delete":
        del tensors[name]
        what = f"{name} deleted"
    elif op in ("nan", "huge"):
        floats = [n for n in used if tensors[n].is_floating_point() and tensors[n].numel()]
        if not floats:
            return "nothing to poison", False
        name = rng.choice(floats)
        t = tensors[name].clone()
        t.view(-1)[rng.randrange(t.numel())] = rng.choice([math.nan, math.inf, -math.inf]) if op == "nan" else \
            rng.choice([1e31, -1e38, 3e38])
        tensors[name] = t
        what = f"{name} holds {op}"
    elif op == "step":
        steps = [n for n in names if n.endswith(".step")]
        if not steps:
            return "no optimizer state", False
        name = rng.choice(steps)
        tensors[name] = rng.choice([torch.zeros(0), torch.tensor([1.0, 2.0]), torch.tensor(0.0), torch.tensor(-3.0),
                                    torch.tensor(math.nan), torch.tensor(5, dtype=torch.int64), torch.zeros(3, 3)])
        what = f"{name}={tensors[name]!r:.30}"
    elif op == "meta":
        meta, what = mutate_json(meta, rng)
        must = False  # a count or a version string may change harmlessly
    elif op == "run_id":
        _, theirs = _raw_checkpoint(other) if other.exists() else ({}, {})
        meta["run_id"] = rng.choice([theirs.get("run_id") or "0" * 32, "f" * 32])
        what = f"run_id {meta['run_id'][:8]}"
    elif op == "extra":
        new = rng.choice(["model.extra", "optim.0.extra", "optim.500.exp_avg", "junk"])
        tensors[new] = torch.zeros(2)
        what = f"extra {new}"
        # unknown tensors are ignored; only a resume reads a checkpoint's optimizer state
        must = True if new.startswith("model.") else {"resume"} if (
            new.startswith("optim.") and path.name.startswith("last")) else False
    elif op == "swap_tensor":
        others = [n for n in used if n != name and tensors[n].shape != t.shape]
        if not others:
            return "nothing to swap", False
        b = rng.choice(others)
        tensors[name], tensors[b] = tensors[b], tensors[name]
        what = f"{name}<->{b}"
    else:
        what = "re-signed unchanged"
        must = False
    if op == "run_id":
        must = True
    elif must is True:  # which readers use the changed tensor
        if "model." in what:  # a resume takes the model's weights from a checkpoint only
            must = {"final", "last"} | ({"resume"} if path.name.startswith("last") else set())
        elif "pca." in what:  # a resume takes the PCA of the final weights, or of a checkpoint
            must = {"final", "last"}
        else:
            must = {"resume"}  # optimizer, RNG and epoch state
    ckpt.save_tensors(path, tensors, meta)
    return "resign " + what, must


def mutate(run: Path, bases: Path, index: int, seed: int) -> Mutation:
    """Apply the index-th mutation (a function of seed and index only) to the copied run."""
    rng = random.Random(f"{seed}:{index}")
    base = run.name
    newest = str(rundir.checkpoint_paths(run)[0].relative_to(run))
    target = rng.choice(sorted(str(p.relative_to(run)) for p in run.rglob("*") if p.is_file()))
    path = run / target
    other_base = rng.choice([b for b in BASES if b != base])
    other = bases / other_base / target
    kind = rng.choice(["flip", "flip", "truncate", "append", "empty", "json", "json", "json", "deep", "nonfinite",
                       "dir", "symlink-dir", "fifo", "delete", "symlink-other", "swap", "swap",
                       "resign", "resign", "resign", "resign", "lines"])
    is_json = target.endswith((".json", ".jsonl"))
    is_tensors = target.endswith(".safetensors")
    if kind == "lines" and target != "metrics.jsonl":
        kind = "json"
    if kind in ("json", "deep", "nonfinite") and not is_json:
        kind = "resign" if is_tensors else "flip"
    if kind == "resign" and not is_tensors:
        kind = "json" if is_json else "flip"
    if kind in ("swap", "symlink-other") and not other.exists():  # the other run has no such file
        kind = "flip"
    raw = path.read_bytes()
    must = False
    if kind == "flip":
        data = bytearray(raw)
        for _ in range(rng.choice([1, 1, 2, 8])):
            if data:
                data[rng.randrange(len(data))] ^= rng.randrange(1, 256)
        path.write_bytes(bytes(data))
    elif kind == "truncate":
        path.write_bytes(raw[:rng.randrange(max(len(raw), 1))])
    elif kind == "append":
        path.write_bytes(raw + rng.choice([b"\x00", b"}", b"\n{}\n", b"garbage", bytes(rng.randrange(256)
                                                                                          for _ in range(64))]))
    elif kind == "empty":
        path.write_bytes(b"")
    elif kind in ("json", "nonfinite"):
        if target.endswith(".jsonl"):
            lines = raw.decode().splitlines()
            i = rng.randrange(len(lines))
            row = json.loads(lines[i])
            if kind == "nonfinite":
                key = rng.choice(sorted(row))
                row[key] = rng.choice([math.nan, math.inf, -math.inf])
                what = f"line {i + 1} {key} non-finite"
            else:
                row, what = mutate_json(row, rng)
            lines[i] = _dumps(row)
            path.write_text("\n".join(lines) + "\n")
        else:
            value = json.loads(raw)
            if kind == "nonfinite":
                key = rng.choice([p for p in _paths(value) if p])
                parent = value
                for k in key[:-1]:
                    parent = parent[k]
                parent[key[-1]] = rng.choice([math.nan, math.inf, -math.inf])
                what = f"{'.'.join(map(str, key))} non-finite"
            else:
                value, what = mutate_json(value, rng)
            path.write_text(_dumps(value))
        kind = f"{kind} {what}"
    elif kind == "deep":
        depth = rng.choice([50, 5000, 200000])
        path.write_text("[" * depth + "]" * depth if rng.random() < 0.5 else '{"a":' * depth + "1" + "}" * depth)
        kind = f"deep {depth}"
        must = True
    elif kind == "lines":
        lines = raw.decode().splitlines()
        op = rng.choice(["duplicate", "reverse", "other-run", "blank"])
        op = "blank" if op == "other-run" and not other.exists() else op
        if op == "duplicate":
            i = rng.randrange(len(lines))
            lines.insert(i, lines[i])
        elif op == "reverse":
            lines.reverse()
        elif op == "other-run":
            lines += other.read_text().splitlines()
        else:
            lines.insert(rng.randrange(len(lines) + 1), "")
        path.write_text("\n".join(lines) + "\n")
        must = op in ("duplicate", "other-run") or (op == "reverse" and len(lines) > 1)
        kind = f"lines {op}"
    elif kind in ("dir", "symlink-dir", "fifo", "delete"):
        path.unlink()
        if kind == "dir":
            path.mkdir()
            (path / "x").write_text("x")
        elif kind == "symlink-dir":
            path.symlink_to(run.parent)
        elif kind == "fifo":
            os.mkfifo(path)
        # a resume sets an unreadable checkpoint aside and takes the one before: not a refusal
        must = False if kind == "delete" else {"final", "last"} if target.endswith(".safetensors") else True
    elif kind in ("swap", "symlink-other"):
        path.unlink()
        if kind == "swap":
            shutil.copyfile(other, path)
        else:
            path.symlink_to(other)
        kind = f"{kind} with {other_base}"
        # another run's weights or description never fit; a config.json fits across one architecture
        must = target.endswith(".safetensors") or target == "model.json" or (
            target == "config.json" and "pca" in (base, other_base))
    elif kind == "resign":
        what, must = resign(path, rng, other)
        kind = what
    return Mutation(base, target, kind, must, newest)


# -- one input, judged -----------------------------------------------------------------------

def judge(mutation: Mutation, results: dict, reference: dict) -> tuple[str, str]:
    """The outcome of one mutated input from its readers' results."""
    worst, why = "fine", ""
    for reader, (status, value) in results.items():
        if status == "traceback":
            return "traceback", f"{reader}: {value}"
        if status == "clean":
            if "\n" in value:
                return "traceback", f"{reader}: a refusal of several lines: {value[:200]!r}"
            worst = "clean"
            continue
        problem = _wrong(reader, value, reference[reader][1], mutation)
        if problem:
            return "silent", f"{reader}: {problem}"
    return worst, why


def _wrong(reader: str, value: dict, expected: dict, mutation: Mutation) -> str:
    if reader in mutation.must_refuse:
        return f"accepted {mutation}"
    if reader in ("final", "last"):
        for key in ("elbo", "nll"):
            if not math.isfinite(value[key]):
                return f"{key} {value[key]}"
        if not bool(torch.isfinite(value["sample"]).all()):
            return "non-finite sample"
        # weights are checksummed: an accepted file holds the same model, so the same numbers
        # (exceptions: config.json's settings, which a user may edit, and a deleted file, whose
        # reader then takes another: load_run the newest checkpoint in place of the final weights)
        same = (value["elbo"] == expected["elbo"] and value["nll"] == expected["nll"]
                and torch.equal(value["sample"], expected["sample"]))
        if not same and mutation.target != "config.json" and not mutation.kind.startswith("delete"):
            return f"elbo {value['elbo']} differs from the unmutated run's {expected['elbo']}"
    if reader == "metrics":
        epochs = [row["epoch"] for row in value["rows"]]
        if epochs != sorted(set(epochs)):
            return f"epochs {epochs}"
        if re.search(r"\b(nan|inf)\b", value["summary"]):
            return "non-finite number in the summary"
    if reader == "resume" and value["finite"] is False:
        return "resumed into non-finite weights"
    return ""


# -- workers ---------------------------------------------------------------------------------

def worker(conn, bases: Path, scratch: Path, seed: int) -> None:
    sys.stderr = open(os.devnull, "w")  # the trainer's warnings about damaged checkpoints: expected, and many
    torch.set_num_threads(1)
    _cache_datasets()
    images = _images()
    reference = {name: read_everything(_copy(bases / name, scratch / "ref"), images) for name in BASES}
    for name, results in reference.items():
        bad = [r for r, (status, _) in results.items() if status != "ok"]
        if bad:
            conn.send(("setup", f"unmutated run {name} fails in {bad}: {results[bad[0]][1]}"))
            return
    conn.send(("ready", None))
    while True:
        index = conn.recv()
        if index is None:
            return
        rng = random.Random(f"{seed}:{index}:base")
        name = rng.choice(sorted(BASES))
        run = _copy(bases / name, scratch / "in" / name)
        try:
            mutation = mutate(run, bases, index, seed)
        except Exception as exc:  # noqa: BLE001: a mutation the harness could not make
            conn.send(("result", (index, "skipped", f"{type(exc).__name__}: {exc}", "")))
            continue
        results = read_everything(run, images)
        outcome, why = judge(mutation, results, reference[name])
        conn.send(("result", (index, outcome, why, str(mutation))))


def _copy(source: Path, target: Path) -> Path:
    if target.exists() or target.is_symlink():
        shutil.rmtree(target, ignore_errors=True)
    target.parent.mkdir(parents=True, exist_ok=True)
    shutil.copytree(source, target, symlinks=True)
    return target


def _cache_datasets() -> None:
    """The datasets are not mutated: read them once per worker, not once per input."""
    import functools

    from vaelab import prepared_data

    prepared_data.load_dataset = functools.lru_cache(maxsize=8)(prepared_data.load_dataset)


def fuzz(count: int, workers: int = 1, seed: int = 0, timeout: float = 60.0, cache: Path | None = None,
         log=None, only: list[int] | None = None, minutes: float | None = None) -> dict:
    """Run ``count`` mutated inputs; returns {"tally": Counter, "defects": [...], "seconds": float}."""
    bases = base_runs(cache)
    ctx = mp.get_context("fork")
    tally, defects, examples = Counter(), [], {}
    scratch_root = Path(tempfile.mkdtemp(prefix="vaelab-fuzz-", dir="/dev/shm" if Path("/dev/shm").is_dir() else None))
    pending = list(only if only else range(count))[::-1]
    slots: dict = {}  # conn -> [process, index or None, started, slot number]
    started = time.perf_counter()

    def start(number):
        parent, child = ctx.Pipe()
        proc = ctx.Process(target=worker, args=(child, bases, scratch_root / f"w{number}-{time.monotonic_ns()}", seed),
                           daemon=True)
        proc.start()
        child.close()
        slots[parent] = [proc, None, None, number]

    def feed(conn):
        slot = slots[conn]
        if minutes is not None and time.perf_counter() - started > minutes * 60:
            pending.clear()  # out of time: the inputs done so far are the result
        if pending:
            slot[1], slot[2] = pending.pop(), time.monotonic()
            conn.send(slot[1])
        else:
            slot[1] = None
            conn.send(None)

    for number in range(max(1, workers)):
        start(number)
    try:
        while slots:
            ready = wait(list(slots), timeout=1.0)
            for conn in ready:
                proc, index, _, number = slots[conn]
                try:
                    kind, payload = conn.recv()
                except (EOFError, OSError):  # the worker died
                    proc.join()
                    del slots[conn]
                    if index is not None:
                        outcome = "crash" if proc.exitcode and proc.exitcode < 0 else "traceback"
                        tally[outcome] += 1
                        defects.append((index, outcome, f"worker exit code {proc.exitcode}", ""))
                        if log:
                            print(f"  #{index} {outcome}: worker exit code {proc.exitcode}", file=log, flush=True)
                        if pending:
                            start(number)
                    continue
                if kind == "setup":
                    raise SystemExit(f"fuzz_rundir: {payload}")
                if kind == "result":
                    i, outcome, why, what = payload
                    tally[outcome] += 1
                    examples.setdefault(outcome, (i, what, why))
                    if outcome in DEFECTS:
                        defects.append(payload)
                        if log:
                            print(f"  #{i} {outcome}: {what}: {why}", file=log, flush=True)
                    done = sum(tally.values())
                    if log and done % 1000 == 0:
                        rate = done / (time.perf_counter() - started)
                        print(f"  {done:,} inputs, {rate:.1f}/s: {dict(tally)}", file=log, flush=True)
                feed(conn)
                if slots[conn][1] is None:
                    slots[conn][0].join(timeout=10)
                    del slots[conn]
            now = time.monotonic()
            for conn, (proc, index, since, number) in list(slots.items()):
                if index is not None and since is not None and now - since > timeout:
                    proc.kill()
                    proc.join()
                    del slots[conn]
                    tally["hang"] += 1
                    defects.append((index, "hang", f"over {timeout:g} s", ""))
                    if log:
                        print(f"  #{index} hang: over {timeout:g} s", file=log, flush=True)
                    if pending:
                        start(number)
    finally:
        for proc, *_ in slots.values():
            proc.kill()
        shutil.rmtree(scratch_root, ignore_errors=True)
    return {"tally": tally, "defects": defects, "examples": examples, "seconds": time.perf_counter() - started}


def table(tally: Counter) -> str:
    total = sum(tally[o] for o in OUTCOMES)
    head = "| inputs | " + " | ".join(OUTCOMES) + " |"
    return "\n".join([head, "|" + "---|" * (len(OUTCOMES) + 1),
                      f"| {total:,} | " + " | ".join(f"{tally[o]:,}" for o in OUTCOMES) + " |"]
                     + ([f"({tally['skipped']:,} mutations could not be applied and are not counted)"]
                        if tally["skipped"] else []))


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--count", type=int, default=1000, help="mutated inputs to try")
    parser.add_argument("--workers", type=int, default=1, help="worker processes")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--timeout", type=float, default=60.0, help="seconds one input may take")
    parser.add_argument("--minutes", type=float, help="start no input after this long; the count done is printed")
    parser.add_argument("--only", type=int, nargs="+", help="run just these inputs (indexes), e.g. to replay a defect")
    parser.add_argument("--cache", type=Path, help="where the base runs are kept (default: the temp folder)")
    args = parser.parse_args(argv)
    result = fuzz(args.count, args.workers, args.seed, args.timeout, args.cache, log=sys.stderr, only=args.only,
                  minutes=args.minutes)
    tally, seconds = result["tally"], result["seconds"]
    print(table(tally))
    done = sum(tally[o] for o in OUTCOMES)
    print(f"{done:,} inputs in {seconds:.0f} s: {done / seconds:.1f} inputs/s with {args.workers} worker(s), "
          f"seed {args.seed}")
    if done + tally["skipped"] < (len(args.only) if args.only else args.count):
        print(f"stopped after --minutes {args.minutes:g}: {done:,} of the {args.count:,} inputs asked for were run")
    for outcome, (i, what, why) in sorted(result["examples"].items()):
        print(f"  e.g. {outcome}: #{i} {what} {why}".rstrip()[:300])
    for i, outcome, why, what in result["defects"][:50]:
        print(f"  {outcome}: #{i} {what} {why}".rstrip()[:300])
    return 1 if any(tally[o] for o in DEFECTS) else 0


if __name__ == "__main__":
    sys.exit(main())
