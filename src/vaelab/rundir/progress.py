"""What training writes into RUN_DIR/progress/: sample grids per epoch (epoch-NNNN.png),
their GIF, and statistics every N steps (steps.jsonl); read back here by figures and reports."""

from __future__ import annotations

import io
from pathlib import Path

from ..errors import VaelabError

from ..atomicio import atomic_write_bytes

PROGRESS_DIR = "progress"
PROGRESS_GIF = "progress.gif"
STEPS_FILE = "steps.jsonl"


def progress_frames(run_dir: str | Path) -> list[Path]:
    """The saved progress grids of a run, in epoch order."""
    folder = Path(run_dir) / PROGRESS_DIR
    return sorted(folder.glob("epoch-*.png")) if folder.is_dir() else []


def write_progress_gif(run_dir: str | Path, out: str | Path | None = None, frame_ms: int = 500) -> Path | None:
    """Animate the progress grids into ``out`` (default RUN_DIR/progress/progress.gif), each
    frame labelled with its epoch; None when there are no grids yet."""
    from PIL import Image, ImageDraw

    frames = []
    for path in progress_frames(run_dir):
        with Image.open(path) as grid:
            grid = grid.convert("RGB")
        # a white strip above the grid for the label, so the digits stay uncovered
        frame = Image.new("RGB", (grid.width, grid.height + 16), "white")
        frame.paste(grid, (0, 16))
        ImageDraw.Draw(frame).text((4, 2), f"epoch {int(path.stem.split('-')[1])}", fill="black")
        frames.append(frame)
    if not frames:
        return None
    out = Path(out) if out else Path(run_dir) / PROGRESS_DIR / PROGRESS_GIF
    # the last frame stays up longer, so the end of training is easy to see
    durations = [frame_ms] * (len(frames) - 1) + [frame_ms * 4]
    buffer = io.BytesIO()
    frames[0].save(buffer, format="GIF", save_all=True, append_images=frames[1:], duration=durations, loop=0)
    atomic_write_bytes(out, buffer.getvalue())  # whole or not at all
    return out


def read_step_stats(run_dir: str | Path) -> list[dict]:
    """The rows StepStats wrote (RUN_DIR/progress/steps.jsonl), in step order; [] if none.
    A row that is not what StepStats writes (a step count, then numbers) is one VaelabError."""
    from . import validate

    path = Path(run_dir) / PROGRESS_DIR / STEPS_FILE
    if not validate.regular_file(path, "progress/steps.jsonl"):
        return []
    rows = {}
    text = validate.read_bytes(path, validate.METRICS_LIMIT).decode("utf-8", errors="replace")
    for number, line in enumerate(text.splitlines(), 1):
        where = f"{path} line {number}"
        try:
            row = validate.parse_json(line, where, finite=False)  # a diverged run logs NaN spreads
        except VaelabError:
            if line.startswith("{") and not line.endswith("}"):  # a line cut short by a kill
                break
            raise
        if not (isinstance(row, dict) and validate.is_int(row.get("step"), 0)
                and all(isinstance(v, (int, float)) and not isinstance(v, bool) for v in row.values())):
            raise VaelabError(f"{where} is not a row of step statistics: the file was edited or damaged; "
                              f"delete it (it only feeds the latent-statistics figure)")
        rows[row["step"]] = row  # an epoch redone after a NaN rollback rewrites its steps: the last counts
    return [rows[step] for step in sorted(rows)]
