"""Each stage's per-row test predictions on disk: what paired intervals, placebo columns and pooled seeds read."""

from __future__ import annotations

from pathlib import Path

import numpy as np

PREDICTIONS_FILE = "test_predictions.npz"
"""Per-row test predictions a stage leaves in its folder (``row``, ``user``, ``prediction``, ``label``)."""


def load_predictions(stage_dir: str | Path | None) -> dict[str, np.ndarray] | None:
    """The ``test_predictions.npz`` of a stage folder (None when the stage left none)."""
    if stage_dir is None:
        return None
    path = Path(stage_dir) / PREDICTIONS_FILE
    if not path.is_file():
        return None
    with np.load(path) as data:
        return {k: data[k] for k in data.files}
