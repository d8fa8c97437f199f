"""Fuzzing the config readers: whatever the input, the outcome is a Config or one line of
VaelabError, never another exception.

Four readers are fuzzed, each with a fixed number of hypothesis inputs (derandomized, so
every run tries the same inputs and docs/faults.md can quote the counts):

- Config.from_dict on random JSON-like documents, shaped like configs (real section and key
  names with values of every JSON type) and not (arbitrary nesting);
- Config.load on random JSON and TOML text and on random bytes, as .json / .toml files;
- Config.apply_overrides on random ``--set key=value`` strings;
- the CLI, ``vaelab config --preset demo --set ...``: exit status 0 or 2, never a traceback.
"""

from __future__ import annotations

import contextlib
import io
import json
import math
from collections import Counter

import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from vaelab.cli import main
from vaelab.config import Config, all_keys
from vaelab.errors import VaelabError

# inputs tried per reader (quoted in docs/faults.md)
N_DICTS = 1000
N_FILES = 500
N_BYTES = 300
N_SET = 1000
N_CLI = 150

KEYS = all_keys()
SECTIONS = ["data", "model", "train"]
FIELDS = sorted({k.partition(".")[2] for k in KEYS})

FUZZ = settings(derandomize=True, database=None, deadline=None,
                suppress_health_check=[HealthCheck.too_slow, HealthCheck.filter_too_much])

# strings that reach the interesting branches of the value parser and the validator
TRICKY_TEXT = st.sampled_from([
    "", " ", "none", "null", "None", "true", "false", "yes", "0", "1", "-1", "1.5", "1e999", "-1e999",
    "1e308", "nan", "NaN", "inf", "-inf", "0x10", "1_000", "[", "[]", "[1, 2]", "[[1]]", "[1.5]",
    "[\"a\"]", "[null]", "{}", "1,2,3", ",", ",,", "500,500", "relu", "gaussian", "bernoulli",
    "mlp", "conv", "pca", "scale", "cpu", "cuda", "cuda:0", "mps", "auto", "raise", "skip",
    "rollback", "iwae", "elbo", "linear", "cosine", "plateau", "val", "train", "é", "\x00",
    "[" * 3000 + "]" * 3000, "9" * 5000,
])
SCALARS = st.one_of(
    st.none(), st.booleans(), st.integers(), st.integers(min_value=-10, max_value=1000),
    st.floats(allow_nan=True, allow_infinity=True), st.text(max_size=20), TRICKY_TEXT,
    st.sampled_from([2**63, -2**63 - 1, 2**64, 10**400, -10**400]),  # beyond int64 and float
)
JSON_VALUES = st.recursive(SCALARS, lambda inner: st.lists(inner, max_size=4)
                           | st.dictionaries(st.text(max_size=8), inner, max_size=3), max_leaves=6)
SECTION_BODY = st.dictionaries(st.one_of(st.sampled_from(FIELDS), st.text(max_size=12)), JSON_VALUES, max_size=8)
DOCUMENTS = st.one_of(
    st.dictionaries(st.sampled_from(KEYS), SCALARS, min_size=1, max_size=3),  # {"train.lr": value}
    st.dictionaries(st.one_of(st.sampled_from(SECTIONS + ["preset"]), st.sampled_from(KEYS), st.text(max_size=12)),
                    st.one_of(SECTION_BODY, JSON_VALUES), max_size=5),
    JSON_VALUES,  # not even a mapping
)

@pytest.fixture(autouse=True, scope="module")
def _subnormal_floats():
    """Hypothesis draws subnormal floats; a training run earlier in the session may have set
    torch's process-wide flush-denormal mode, which makes them unrepresentable."""
    torch.set_flush_denormal(False)
    yield


def outcome(make, counts: Counter) -> None:
    """Run a reader (and validation); only a Config or a one-line VaelabError may come out."""
    try:
        config = make()
        assert isinstance(config, Config)
        config.validate()
    except VaelabError as exc:
        message = str(exc)
        assert message and "\n" not in message, repr(message)
        counts["error"] += 1
    else:
        counts["config"] += 1


def check_counts(counts: Counter, tried: int, min_configs: int) -> None:
    """Every input was tried, and validation was reached: not all inputs are rejected early."""
    assert sum(counts.values()) == tried, counts
    assert counts["config"] >= min_configs and counts["error"] >= min_configs, counts


def test_from_dict_random_documents():
    counts = Counter()

    @settings(FUZZ, max_examples=N_DICTS)
    @given(DOCUMENTS)
    def fuzz(document):
        outcome(lambda: Config.from_dict(document, source="fuzz"), counts)

    fuzz()
    check_counts(counts, N_DICTS, 20)


# -- files -----------------------------------------------------------------------------------

def _toml_value(value) -> str:
    """A TOML rendering of a JSON-like value (strings via JSON escapes, valid in TOML)."""
    if value is None:
        return '"none"'
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, float):
        return "nan" if math.isnan(value) else ("inf" if value == math.inf else "-inf" if value == -math.inf else repr(value))
    if isinstance(value, (int, str)):
        return json.dumps(value)
    if isinstance(value, list):
        return "[" + ", ".join(_toml_value(v) for v in value) + "]"
    return "{" + ", ".join(f"{json.dumps(k)} = {_toml_value(v)}" for k, v in value.items()) + "}"


def _toml_document(document) -> str:
    if not isinstance(document, dict):
        return f"x = {_toml_value(document)}\n"
    lines = []
    for key, value in document.items():
        if isinstance(value, dict):
            lines.append(f"[{json.dumps(key)}]")
            lines += [f"{json.dumps(k)} = {_toml_value(v)}" for k, v in value.items()]
        else:
            lines.insert(0, f"{json.dumps(key)} = {_toml_value(value)}")
    return "\n".join(lines) + "\n"


def _mutate(text: str, cuts: list[int], junk: str) -> str:
    """Cut the text at a few places and splice in junk: near-valid documents."""
    for cut in cuts:
        cut = cut % (len(text) + 1)
        text = text[:cut] + junk + text[cut + len(junk) // 2:]
    return text


def test_load_random_config_files(tmp_path):
    counts = Counter()

    @settings(FUZZ, max_examples=N_FILES)
    @given(DOCUMENTS, st.sampled_from([".json", ".toml"]), st.booleans(),
           st.lists(st.integers(min_value=0), max_size=3), st.text(max_size=6))
    def fuzz(document, suffix, mutate, cuts, junk):
        text = json.dumps(document) if suffix == ".json" else _toml_document(document)
        if mutate:
            text = _mutate(text, cuts, junk)
        path = tmp_path / f"config{suffix}"
        path.write_text(text, encoding="utf-8", errors="surrogatepass")  # lone surrogates: bad UTF-8
        outcome(lambda: Config.load(path), counts)

    fuzz()
    check_counts(counts, N_FILES, 20)


def test_load_random_bytes(tmp_path):
    counts = Counter()

    @settings(FUZZ, max_examples=N_BYTES)
    @given(st.binary(max_size=300), st.sampled_from([".json", ".toml", ".cfg"]))
    def fuzz(content, suffix):
        path = tmp_path / f"config{suffix}"
        path.write_bytes(content)
        outcome(lambda: Config.load(path), counts)

    fuzz()
    assert sum(counts.values()) == N_BYTES and counts["error"] > 0, counts


# -- --set -------------------------------------------------------------------------------------

SET_KEYS = st.one_of(st.sampled_from(KEYS), st.text(max_size=20),
                     st.builds(lambda s, f: f"{s}.{f}", st.sampled_from(SECTIONS + ["preset", ""]), st.sampled_from(FIELDS)))
SET_VALUES = st.one_of(st.text(max_size=30), TRICKY_TEXT,
                       st.integers().map(str), st.floats().map(repr),
                       st.lists(st.one_of(st.integers(), st.floats(), st.text(max_size=4)), max_size=4).map(json.dumps),
                       st.lists(st.integers(min_value=-5, max_value=600), max_size=4).map(lambda v: ",".join(map(str, v))))
VALID_ASSIGNMENTS = st.sampled_from([  # so that whole command lines also pass, now and then
    "train.epochs=3", "train.lr=0.01", "model.hidden=64,32", "model.latent_dim=2", "data.limit=100",
    "train.nan_policy=skip", "model.likelihood=gaussian", "train.betas=[0.5, 0.9]", "data.image_size=none",
    "train.kl_schedule=linear", "model.activation=tanh", "train.grad_clip=1e3", "data.val_fraction=0"])
ASSIGNMENTS = st.one_of(st.builds(lambda k, v: f"{k}={v}", SET_KEYS, SET_VALUES), st.text(max_size=40),
                        VALID_ASSIGNMENTS,
                        st.builds(lambda k, v: f"{k}={v}", st.sampled_from(KEYS), TRICKY_TEXT))


def test_set_random_overrides():
    counts = Counter()

    @settings(FUZZ, max_examples=N_SET)
    @given(st.lists(ASSIGNMENTS, min_size=1, max_size=4))
    def fuzz(assignments):
        def make():
            config = Config()
            config.apply_overrides(assignments)
            return config
        outcome(make, counts)

    fuzz()
    check_counts(counts, N_SET, 20)


def test_cli_random_overrides_exit_0_or_2():
    statuses = Counter()

    @settings(FUZZ, max_examples=N_CLI)
    @given(st.lists(ASSIGNMENTS, min_size=1, max_size=3))
    def fuzz(assignments):
        err = io.StringIO()
        with contextlib.redirect_stdout(io.StringIO()), contextlib.redirect_stderr(err):
            status = main(["config", "--preset", "demo"] + [f"--set={a}" for a in assignments])
        assert status in (0, 2)
        if status == 2:  # one line, no traceback
            lines = err.getvalue().splitlines()
            assert len(lines) == 1 and lines[0].startswith("vaelab: error: "), err.getvalue()
        statuses[status] += 1

    fuzz()
    assert sum(statuses.values()) == N_CLI and statuses[0] >= 5 and statuses[2] >= 5, statuses


@pytest.mark.parametrize("source", [
    lambda tmp: Config.load(_write(tmp / "c.json", '{"train": {"beta": Infinity}}')),
    lambda tmp: Config.load(_write(tmp / "c.toml", "[model]\nsigma = inf\n")),
    lambda tmp: _with_overrides("train.grad_clip=1e999"),
    lambda tmp: _with_overrides("train.betas=[0.5, 1e999]"),
])
def test_infinite_values_are_refused(tmp_path, source):
    """JSON, TOML and float() all spell infinity; no setting accepts it."""
    with pytest.raises(VaelabError, match="must be a finite number|must be a positive number|betas"):
        source(tmp_path).validate()


def _write(path, text):
    path.write_text(text)
    return path


def _with_overrides(*assignments):
    config = Config()
    config.apply_overrides(list(assignments))
    return config
