"""Run the fault-injection tests and print docs/faults.md's table of faults and outcomes.

    python scripts/fault_table.py            # vaelab's own fault tests (about a minute)
    python scripts/fault_table.py --data     # also the data readers' tests (downloads, tar, fuzz)
    python scripts/fault_table.py --hostile  # also hostile inputs and --overwrite, with their tally

Every row names the tests that inject its fault; the Result column is measured in this run
(how many of those tests passed), and the counts in the Fault column (kills, byte changes,
fuzz inputs) come from the tests themselves or from their constants.
"""

from __future__ import annotations

import argparse
import ast
import json
import os
import subprocess
import sys
import tempfile
import xml.etree.ElementTree as ET
from collections import Counter
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
TESTS = REPO / "tests"

OWN = ["test_resume.py", "test_nan_guard.py", "test_checkpoint_safety.py", "test_run_lock.py",
       "test_config_fuzz.py"]
DATA = ["test_data_download.py", "test_data_cifar.py", "test_data_idx.py", "test_data_fuzz.py", "test_store.py"]
HOSTILE = ["test_overwrite_safety.py", "test_hostile_inputs.py", "test_rundir_fuzz.py"]

# (fault injected, outcome required, tests: "file::name prefix")
ROWS = [
    ("SIGKILL inside a training step, epoch 2 (subprocess)",
     "resumes from last-000001; final weights bit-identical to an uninterrupted run",
     ["test_resume.py::test_sigkill_at_chosen_moment_resumes_exactly[mid-epoch-2]"]),
    ("SIGKILL inside a step of epoch 1, before any checkpoint",
     "resume refused: 'no usable checkpoint to resume from'",
     ["test_resume.py::test_sigkill_at_chosen_moment_resumes_exactly[mid-epoch-1]"]),
    ("SIGKILL after epoch 2's metrics row, before its checkpoint",
     "row 2 dropped on resume, rewritten once; bit-identical weights",
     ["test_resume.py::test_sigkill_at_chosen_moment_resumes_exactly[after-metrics-row-2]"]),
    ("SIGKILL halfway through writing epoch 3's metrics row (torn line)",
     "torn line dropped on resume; every row whole, epochs 1..4 once each",
     ["test_resume.py::test_sigkill_at_chosen_moment_resumes_exactly[torn-metrics-row-3]"]),
    ("SIGKILL halfway through writing checkpoint 2's temporary file",
     "last-000001 intact and used; stale temp file removed; bit-identical",
     ["test_resume.py::test_sigkill_at_chosen_moment_resumes_exactly[checkpoint-write-2]"]),
    ("SIGKILL right after checkpoint 2 is renamed into place",
     "resumes from last-000002; bit-identical",
     ["test_resume.py::test_sigkill_at_chosen_moment_resumes_exactly[after-checkpoint-2]"]),
    ("SIGKILL halfway through writing model.safetensors",
     "resume writes the final weights; bit-identical",
     ["test_resume.py::test_sigkill_at_chosen_moment_resumes_exactly[final-weights-write]"]),
    ("SIGKILL at {random_kills} random moments of a run (one per slice of its duration); landed: {random_states}",
     "each resumes bit-identically, or (before the first checkpoint) resume is refused clearly",
     ["test_resume.py::test_sigkill_at_random_moments_resumes_exactly"]),
    ("SIGTERM / SIGINT in-process at step 1, mid-epoch 2, last step of epoch 3",
     "mid-epoch checkpoint (order, step, partial sums, RNG) saved; resume bit-identical",
     ["test_resume.py::test_signal_mid_epoch_saves_a_checkpoint_and_resumes_exactly"]),
    ("SIGTERM to `python -m vaelab train` while it trains",
     "checkpoint saved, exit 143 (128 + SIGTERM), no traceback; resume bit-identical",
     ["test_resume.py::test_sigterm_to_cli_saves_checkpoint_exits_143_and_resumes_exactly"]),
    ("Gaussian decoder, variance ReLU(v) + 0 (eps = 0), policy raise",
     "TrainingDiverged naming the term, smallest variance, lr and fix; last checkpoint byte-identical and loadable; CLI exit 2",
     ["test_nan_guard.py::test_raise_stops", "test_nan_guard.py::test_raise_from_the_cli"]),
    ("ReLU variance with eps = 0, policy skip",
     "every non-finite batch dropped and counted (skipped_steps); weights untouched",
     ["test_nan_guard.py::test_skip_drops"]),
    ("learned log-variance with lr = 1 (Adam), policy rollback",
     "rolled back and lr halved per event; run finishes with finite weights",
     ["test_nan_guard.py::test_rollback_restores"]),
    ("ReLU variance with eps = 0, policy rollback",
     "gives up after 10 rollbacks with TrainingDiverged",
     ["test_nan_guard.py::test_rollback_gives_up"]),
    ("every single-byte change of a checkpoint (x ^ 0x01 and x ^ 0xFF at each of {checkpoint_bytes} bytes: {byte_changes} files)",
     "all refused (checksum or format error)",
     ["test_checkpoint_safety.py::test_every_single_byte_change_is_refused"]),
    ("every truncation of a checkpoint ({truncations} lengths)",
     "all refused",
     ["test_checkpoint_safety.py::test_every_truncation_is_refused"]),
    ("newest checkpoint bit-flipped, the one before truncated",
     "both set aside (*.damaged) with a warning; resume from the third; bit-identical",
     ["test_checkpoint_safety.py::test_resume_falls_back"]),
    ("every checkpoint truncated",
     "resume refused: 'no usable checkpoint'",
     ["test_checkpoint_safety.py::test_resume_with_no_usable_checkpoint"]),
    ("code-running pickle / torch.save zip as a checkpoint and as model.safetensors",
     "refused, marker file never created; resume sets it aside; `vaelab eval` exit 2",
     ["test_checkpoint_safety.py::test_malicious_pickle_is_refused_never_run"]),
    ("source scan for torch.load / pickle.load / allow_pickle",
     "none outside the CIFAR reader's restricted unpickler",
     ["test_checkpoint_safety.py::test_the_package_never_unpickles_freely"]),
    ("rename fails with ENOSPC / EROFS / EACCES; disk full halfway through a write",
     "one-line VaelabError; old file byte-identical; no temp file left",
     ["test_checkpoint_safety.py::test_failed_rename", "test_checkpoint_safety.py::test_disk_full_halfway"]),
    ("disk full at epoch 2's checkpoint during `vaelab train --resume`",
     "exit 2, one line; checkpoint 1 intact; resume after freeing space bit-identical",
     ["test_checkpoint_safety.py::test_disk_full_during_training"]),
    ("metrics.jsonl on a read-only file system",
     "one-line VaelabError",
     ["test_checkpoint_safety.py::test_unwritable_metrics_file"]),
    ("chmod 555 on the checkpoint folder (non-root only)",
     "VaelabError; checkpoints unchanged",
     ["test_checkpoint_safety.py::test_read_only_checkpoint_folder_for_real"]),
    ("a second writer (another process holds the run; CLI, resume, --overwrite)",
     "refused: 'in use by vaelab pid N'; run untouched",
     ["test_run_lock.py::test_a_second_writer", "test_run_lock.py::test_two_writers_in_one_process",
      "test_resume.py::test_sigterm_to_cli"]),
    ("the lock holder SIGKILLed",
     "lock released by the kernel; the next writer proceeds",
     ["test_run_lock.py::test_the_lock_dies_with_its_holder"]),
    ("config fuzz: {N_DICTS} random documents, {N_FILES} JSON/TOML files, {N_BYTES} byte strings, "
     "{N_SET} --set lists, {N_CLI} CLI command lines (hypothesis, derandomized)",
     "a Config or a one-line VaelabError; CLI exit 0 or 2",
     ["test_config_fuzz.py::test_from_dict", "test_config_fuzz.py::test_load_random",
      "test_config_fuzz.py::test_set_random", "test_config_fuzz.py::test_cli_random"]),
    ("infinite numbers in JSON, TOML and --set",
     "refused",
     ["test_config_fuzz.py::test_infinite_values"]),
]

DATA_ROWS = [
    ("download with a wrong checksum / a broken mirror / an interrupted transfer",
     "never used, no partial file left; next mirror tried",
     ["test_data_download.py::test_bad_checksum", "test_data_download.py::test_only_bad_checksum",
      "test_data_download.py::test_interrupted_download", "test_data_download.py::test_first_mirror"]),
    ("tar members with ../ or absolute paths, links, devices",
     "refused", ["test_data_cifar.py::test_tar_path_traversal", "test_data_cifar.py::test_tar_links_and_devices"]),
    ("code-running pickle as a CIFAR batch (alone and inside the tarball)",
     "refused by the restricted unpickler", ["test_data_cifar.py::test_malicious_pickle"]),
    ("IDX header declaring a huge count", "fails fast, nothing allocated",
     ["test_data_idx.py::test_huge_declared_count", "test_data_idx.py::test_huge_dimensions"]),
    ("reader fuzz: IDX, .mat, CIFAR batch, image folder ({FUZZ_EXAMPLES} inputs per test)",
     "a Dataset or a one-line VaelabError", ["test_data_fuzz.py::"]),
    ("memory-mapped store (data.store=memmap) truncated, its .npy header broken, store.json unreadable, "
     "missing (a half-written store) or the store absent",
     "training refused: one line naming `vaelab data prepare`, exit 2, no run directory left",
     ["test_store.py::test_missing_half_written_or_damaged_stores_are_refused_in_one_line"]),
    ("a byte of a store flipped (same size); a store write interrupted, short of images or short of disk",
     "checksum mismatch found and the store rewritten by `vaelab data prepare`; no store and no temp file left",
     ["test_store.py::test_flipped_bytes_fail_the_checksum", "test_store.py::test_an_interrupted_write"]),
]


HOSTILE_ROWS = [
    ("`train --overwrite` of a run directory, the new run failing to load its data or another run",
     "exit 2, one line; the old run byte-identical, nothing left beside it",
     ["test_overwrite_safety.py::test_a_failing_overwrite_keeps_the_old_run_byte_for_byte"]),
    ("`--overwrite` of a project folder holding a config.json (src/, notes), of any other config.json, "
     "of a symbolic link", "refused in one line; nothing changed",
     ["test_overwrite_safety.py::test_only_a_vaelab_run_directory_is_overwritten"]),
    ("`--overwrite` of a run whose progress/ holds a symbolic link to another folder",
     "replaced; the link removed, its target untouched",
     ["test_overwrite_safety.py::test_a_symlinked_subfolder_is_unlinked_and_its_target_kept"]),
    ("SIGKILL during `--overwrite`: right after the old run is set aside, while loading data, after the new "
     "run's first files, while the old run is removed",
     "the old run back in place byte for byte (the next command restores it); once its removal began, "
     "the new run in place and nothing left beside it",
     ["test_overwrite_safety.py::test_sigkill_at_every_moment_of_an_overwrite_loses_nothing_unasked"]),
    ("RUN_DIR holding only .lock (SIGKILL while starting; a failed first write)",
     "a plain rerun and `--overwrite` go ahead; `--resume` says to start it again",
     ["test_overwrite_safety.py::test_a_run_killed_while_starting_is_no_dead_end",
      "test_overwrite_safety.py::test_a_failed_first_write_leaves_no_dead_end"]),
    ("`--overwrite` while another process is replacing the same run",
     "refused in one line; its old run untouched",
     ["test_overwrite_safety.py::test_a_replacement_in_progress_is_never_taken_over"]),
    ("split names `../../../../outside`, `/tmp/abs`, `train/../../x`, `..`, empty, with a space",
     "refused in one line; nothing read or written outside the data folder",
     ["test_hostile_inputs.py::test_split_names_cannot_leave_the_data_folder"]),
    ("SVHN .mat with one flipped byte (x ^ {mat_masks} at every byte of the headers and the end; "
     "plain and compressed, uint8 and double labels)", "a Dataset or one line; the process never crashes",
     ["test_hostile_inputs.py::test_flipped_bytes_in_svhn_mat_files_never_crash_the_reader"]),
    ("FIFOs named *.png / *.jpg in an image folder", "skipped (not regular files); no hang",
     ["test_hostile_inputs.py::test_a_fifo_in_an_image_folder_is_skipped_not_waited_on"]),
    ("a 31 KB CIFAR batch whose labels are nested shared lists (335 million ints once expanded)",
     "refused in one line, under 20 MB", ["test_hostile_inputs.py::test_nested_shared_label_lists"]),
    ("gzip IDX bombs: 31 MB of zeros in 30 KB that its labels do not match; a header its gzip trailer contradicts",
     "refused before decompressing, under 8 MB", ["test_hostile_inputs.py::test_gzip_idx_bombs"]),
    ("12000x12000 PNGs (40 KB each, 432 MB decoded) in `data check`",
     "refused before decoding, under 20 MB", ["test_hostile_inputs.py::test_huge_pngs"]),
    ("`model.latent_dim=1000000000`, `model.hidden=[10000000]`, `train.threads=1000000`, a seed of 10**26, "
     "`--device mps`, `sample -n 1000000`, `reconstruct -n 1000000`",
     "refused in one line before anything is allocated",
     ["test_hostile_inputs.py::test_sizes_nobody_means", "test_hostile_inputs.py::test_seeds_and_devices"]),
    ("disk full (every fsync fails with ENOSPC) in `figures`, `compare`, `report`, `sample`",
     "one line saying to run again; no empty or temporary file; the previous output byte-identical",
     ["test_hostile_inputs.py::test_a_full_disk_leaves_no_partial_output"]),
    ("a relative `--data-dir`; `vaelab presets` into a closed pipe",
     "recorded absolute; exit 141 without a word", ["test_hostile_inputs.py::test_a_relative_data_dir",
                                                     "test_hostile_inputs.py::test_a_closed_pipe"]),
    ("{fuzz_count} mutated run directories (scripts/fuzz_rundir.py, seed 0): byte flips, truncation, JSON type "
     "swaps, deep nesting, huge numbers, NaN/inf, a file made a directory, a link to one or a FIFO, files of "
     "another run, checkpoints re-signed with wrong shapes, dtypes, names, NaN weights, optimizer metadata or "
     "another run's id; then load, eval, sample, metrics, the report's summary, resume",
     "a result equal to the unmutated run's, or one line; never a traceback, crash, hang or non-finite number",
     ["test_rundir_fuzz.py::test_fuzzed_run_directories_end_in_a_result_or_one_line"]),
    ("Adam moments of another shape (`torch.zeros(3)`, a zero-length first dimension) re-signed into a "
     "checkpoint, then `train --resume` (subprocess)", "exit 2, one line naming the tensor (it was a SIGSEGV "
     "in the fused Adam kernel)",
     ["test_rundir_fuzz.py::test_optimizer_state_of_another_shape_is_refused_not_a_segfault"]),
    ("model.json, metrics.jsonl, train.log a directory, a link to one, a FIFO; 100,000-deep JSON; metrics "
     "fields of another type; a checkpoint lacking exp_avg / exp_avg_sq / step, a PCA lacking its mean; a "
     "seed of 10**30 in config.json; optimizer settings of other types, without weight_decay or with 1e308 of it; "
     "a step count of 0 elements, 2, 0, NaN, int64",
     "refused in one line (each was a traceback)",
     ["test_rundir_fuzz.py::test_a_file_replaced", "test_rundir_fuzz.py::test_deeply_nested_json",
      "test_rundir_fuzz.py::test_metrics_fields", "test_rundir_fuzz.py::test_a_checkpoint_lacking",
      "test_rundir_fuzz.py::test_a_pca_lacking", "test_rundir_fuzz.py::test_a_huge_seed",
      "test_rundir_fuzz.py::test_odd_optimizer_metadata", "test_rundir_fuzz.py::test_a_step_count"]),
    ("`differentiable: true, fused: false` in a checkpoint's optimizer settings",
     "resumes with the trainer's own fused Adam (it was a RuntimeError inside torch)",
     ["test_rundir_fuzz.py::test_optimizer_flags_are_the_trainers_own"]),
    ("weights holding NaN, inf or -1e31; mid-epoch partial sums of NaN or 1e31; another run's checkpoint or "
     "weights of the same architecture; a float16 tensor in a float32 file; a metrics row duplicated; a "
     "non-finite ELBO",
     "refused in one line (each was accepted: nan printed, or the run silently went on from another's state)",
     ["test_rundir_fuzz.py::test_weights_holding", "test_rundir_fuzz.py::test_mid_epoch_sums",
      "test_rundir_fuzz.py::test_another_runs_checkpoint",
      "test_rundir_fuzz.py::test_a_float16_tensor", "test_rundir_fuzz.py::test_duplicated_metrics_lines",
      "test_rundir_fuzz.py::test_a_non_finite_elbo"]),
    ("a run written before run ids (none in model.json or its checkpoints); a torn last metrics line",
     "loads and resumes (from then on with an id); the rows before the torn line count",
     ["test_rundir_fuzz.py::test_runs_from_before_run_ids", "test_rundir_fuzz.py::test_a_torn_last_metrics_line"]),
    ("a CIFAR batch whose labels are ragged or nested lists, or a short object array",
     "refused in one line", ["test_rundir_fuzz.py::test_ragged_cifar_labels"]),
]


def tally_table(records: list[dict]) -> list[str]:
    """The hostile inputs the tests tried, per case: how each ended, and the bytes lost."""
    kinds = ("ok", "clean", "traceback", "crash", "hang")
    cases: dict[str, Counter] = {}
    for record in records:
        cases.setdefault(record["case"], Counter()).update({k: record.get(k, 0) for k in (*kinds, "lost_bytes")})
    lines = ["| case | inputs tried | accepted | clean errors | tracebacks | crashes | hangs | bytes lost |",
             "|---|---|---|---|---|---|---|---|"]
    total = Counter()
    for case, counts in cases.items():
        total.update(counts)
        lines.append(f"| {case} | {sum(counts[k] for k in kinds):,} | "
                     + " | ".join(f"{counts[k]:,}" for k in (*kinds, "lost_bytes")) + " |")
    lines.append(f"| **all** | **{sum(total[k] for k in kinds):,}** | "
                 + " | ".join(f"**{total[k]:,}**" for k in (*kinds, "lost_bytes")) + " |")
    return lines


def constants(path: Path, names: list[str]) -> dict:
    """Module-level integer constants of a test file, read without importing it."""
    found = {}
    for node in ast.parse(path.read_text()).body:
        if isinstance(node, ast.Assign) and len(node.targets) == 1 and isinstance(node.targets[0], ast.Name):
            if node.targets[0].id in names:
                found[node.targets[0].id] = ast.literal_eval(node.value)
    return found


def run_tests(files: list[str]) -> tuple[dict[str, str], dict]:
    """Outcome per test id ('file::name[param]') and the numbers the tests reported (the
    hostile inputs' tally as a list under "hostile")."""
    with tempfile.TemporaryDirectory() as tmp:
        junit, report = Path(tmp) / "junit.xml", Path(tmp) / "report.jsonl"
        env = dict(os.environ, VAELAB_FAULT_REPORT=str(report))
        subprocess.run([sys.executable, "-m", "pytest", *[str(TESTS / f) for f in files], "-q",
                        "-p", "no:cacheprovider", f"--junitxml={junit}"], cwd=REPO, env=env,
                       stdout=subprocess.DEVNULL)
        outcomes = {}
        for case in ET.parse(junit).iter("testcase"):
            name = f"{case.get('classname').rpartition('.')[2]}.py::{case.get('name')}"
            kinds = {child.tag for child in case}
            outcomes[name] = ("failed" if kinds & {"failure", "error"} else
                              "skipped" if "skipped" in kinds else "passed")
        measured = {"hostile": []}
        if report.exists():
            for line in report.read_text().splitlines():
                record = json.loads(line)
                if "hostile" in record:
                    measured["hostile"].append(record["hostile"])
                else:
                    measured.update(record)
    return outcomes, measured


def result(outcomes: dict[str, str], prefixes: list[str]) -> str:
    hits = Counter(v for k, v in outcomes.items() if any(k.startswith(p) for p in prefixes))
    if not hits:
        return "not run"
    total = sum(hits.values())
    text = f"{hits['passed']}/{total} passed"
    if hits["skipped"]:
        text += f", {hits['skipped']} skipped"
    if hits["failed"]:
        text += f", **{hits['failed']} FAILED**"
    return text


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", action="store_true", help="also run the data readers' fault tests")
    parser.add_argument("--hostile", action="store_true", help="also run the hostile inputs' tests, with their tally")
    args = parser.parse_args()
    files = OWN + (DATA if args.data else []) + (HOSTILE if args.hostile else [])
    outcomes, measured = run_tests(files)
    values = constants(TESTS / "test_config_fuzz.py", ["N_DICTS", "N_FILES", "N_BYTES", "N_SET", "N_CLI"])
    values.update(constants(TESTS / "test_resume.py", ["RANDOM_KILLS"]))
    values.update(constants(TESTS / "test_data_fuzz.py", ["FUZZ_EXAMPLES"]))
    values["fuzz_count"] = f"{constants(TESTS / 'test_rundir_fuzz.py', ['FUZZ_COUNT']).get('FUZZ_COUNT', '?'):,}"
    values["mat_masks"] = " / ".join(f"0x{m:02X}" for m in constants(TESTS / "test_hostile_inputs.py",
                                                                     ["MAT_FLIP_MASKS"]).get("MAT_FLIP_MASKS", ()))
    states = Counter(measured.get("random_kill_states", []))
    values.update(random_kills=values.get("RANDOM_KILLS", "?"),
                  random_states=", ".join(f"{n}x {s}" for s, n in states.items()) or "not recorded",
                  byte_changes=measured.get("byte_changes", "?"),
                  checkpoint_bytes=measured.get("checkpoint_bytes", "?"),
                  truncations=measured.get("truncations", "?"))
    print("| Fault injected | Required outcome | Test | Result |")
    print("|---|---|---|---|")
    for fault, outcome, prefixes in ROWS + (DATA_ROWS if args.data else []) + (HOSTILE_ROWS if args.hostile else []):
        tests = "<br>".join(f"`{p.rstrip(':')}`" for p in prefixes)
        print(f"| {fault.format(**values)} | {outcome} | {tests} | {result(outcomes, prefixes)} |")
    if args.hostile:
        print("\nHostile inputs, as each ended (from the tests' own tally):\n")
        print("\n".join(tally_table(measured["hostile"])))
    failed = [k for k, v in outcomes.items() if v == "failed"]
    if failed:
        print(f"\n{len(failed)} tests failed: {', '.join(failed)}", file=sys.stderr)
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
