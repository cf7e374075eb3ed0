"""The placebo in the pipeline: each bank stage's second test pass and the table columns (the ``placebo`` command is
:mod:`puma_lightning.commands.placebo`).

Every stage that ends in a bank scores its test rows a second time with the same head, rows and residual
offsets but its prompts dealt to other users (:func:`placebo_pass`; the derangement is seeded by the run's seed
alone, so every stage of a run deals the same way whatever ran before). Its per-row predictions lie beside the
stage's own as ``placebo_predictions.npz`` and its metrics in the stage record (``placebo``). The tables then add,
per row (:func:`placebo_columns`, :func:`captured_shares`; the statistics are :mod:`puma_lightning.tasks.placebo`):

- ``placebo``: the metrics with other users' prompts;
- ``personal_gain``: own prompts better than other users' by this much on the main metric, with its 95 % interval;
- ``retained`` (migrated rows): personal gain ÷ full retraining's;
- ``captured_share`` (with ``user_item_bias`` and ``attribute_ridge`` rows): (bias - row) ÷ (bias - attribute_ridge).
"""

from __future__ import annotations

import logging
import time
from pathlib import Path
from typing import Any, Mapping, Sequence

import numpy as np

from puma_lightning.tasks.placebo import NONE_MEASURABLE, captured_share, derangement, personal_gain, retained

log = logging.getLogger(__name__)

PLACEBO_FILE = "placebo_predictions.npz"
"""Per-row test predictions of a stage's placebo pass (``row``, ``user``, ``prediction``, ``label``, ``prompt_user``)."""
BIAS_REFERENCE = "user_item_bias"
"""The no-LLM row a captured share starts from (no personal signal beyond a user's average)."""
RIDGE_REFERENCE = "attribute_ridge"
"""The no-LLM row a captured share ends at (per-user tastes read from the item attributes)."""


def placebo_seed(seed: int) -> int:
    """The derangement's seed: the run's seed alone (every stage of one run deals the prompts the same way)."""
    from puma_lightning.pipeline.seeding import stage_seed

    return stage_seed(seed, "placebo")


def load_placebo(stage_dir: str | Path | None) -> dict[str, np.ndarray] | None:
    """The ``placebo_predictions.npz`` of a stage folder (None when the stage left none)."""
    if stage_dir is None or not (Path(stage_dir) / PLACEBO_FILE).is_file():
        return None
    with np.load(Path(stage_dir) / PLACEBO_FILE) as data:
        return {k: data[k] for k in data.files}


def dealt_predictions(module: Any, datamodule: Any, cfg: Any, run_dir: Path, stage: str,
                      n_users: int) -> tuple[dict[str, float], dict[str, np.ndarray], int]:
    """Test ``module`` with its prompts dealt by the run's derangement: (metrics, per-row predictions, seed)."""
    from puma_lightning.pipeline.training import test_metrics
    from puma_lightning.tasks.dealt_prompts import DealtPrompts

    seed = placebo_seed(int(cfg.seed))
    dealt = derangement(n_users, seed)
    wrapper = DealtPrompts(module, dealt)
    metrics = test_metrics(wrapper, datamodule, cfg, run_dir, f"{stage}_placebo")
    predictions = wrapper.test_predictions()
    predictions["prompt_user"] = dealt[predictions["user"]]
    return {k: v for k, v in metrics.items() if k != "loss"}, predictions, seed


def placebo_pass(exp: Any, stage: str, module: Any, datamodule: Any) -> dict[str, Any] | None:
    """Score ``stage``'s test rows again with ``module``'s prompts dealt to other users; writes
    ``<stage>/placebo_predictions.npz`` and returns the record's ``placebo`` entry (None with fewer than 2 users)."""
    from puma_lightning.io.atomic import atomic_write_with
    from puma_lightning.pipeline.distributed import on_rank_zero

    n_users = int(exp.table.n_users)
    if n_users < 2:
        return None
    start = time.perf_counter()
    metrics, predictions, seed = dealt_predictions(module, datamodule, exp.cfg, exp.run_dir, stage, n_users)
    path = exp.stage_dir(stage) / PLACEBO_FILE
    on_rank_zero(lambda: atomic_write_with(path, lambda tmp: _write_npz(tmp, predictions)))
    return {"metrics": metrics, "wall_s": round(time.perf_counter() - start, 2), "derangement_seed": seed}


def _write_npz(path: Path, arrays: Mapping[str, np.ndarray]) -> None:
    with open(path, "wb") as fh:
        np.savez(fh, **arrays)


def _same_rows(*predictions: Mapping[str, np.ndarray] | None) -> bool:
    first = predictions[0]
    return all(p is not None for p in predictions) and all(np.array_equal(p["row"], first["row"]) for p in predictions)


def placebo_columns(metric: str, own: Mapping[str, np.ndarray] | None, placebo: Mapping[str, np.ndarray] | None,
                    full: Mapping[str, np.ndarray] | None = None, full_placebo: Mapping[str, np.ndarray] | None = None,
                    resamples: int = 1000, seed: int = 0) -> dict[str, Any]:
    """``personal_gain`` of a row on ``metric`` (its own and placebo predictions on the same rows), and ``retained``
    when full retraining's two are given on the same rows; {} where a part is missing or on other rows."""
    if not _same_rows(own, placebo):
        return {}
    user = own["user"]
    out: dict[str, Any] = {"personal_gain": personal_gain(metric, own["prediction"], placebo["prediction"], own["label"],
                                                          user, resamples, seed)}
    if full is not None and full_placebo is not None and _same_rows(own, full, full_placebo):
        out["retained"] = retained(metric, own["prediction"], placebo["prediction"], full["prediction"],
                                   full_placebo["prediction"], own["label"], user, resamples, seed)
    return out


def captured_shares(metric: str, predictions: Mapping[str, Mapping[str, np.ndarray] | None], resamples: int = 1000,
                    seed: int = 0) -> dict[str, dict[str, Any]]:
    """Per row, its ``captured_share`` of the learnable personal signal, where both ``user_item_bias`` and
    ``attribute_ridge`` have predictions on its rows (the two references themselves are left out); {} otherwise."""
    bias, ridge = predictions.get(BIAS_REFERENCE), predictions.get(RIDGE_REFERENCE)
    if bias is None or ridge is None:
        return {}
    out = {}
    for name, pred in predictions.items():
        if name in (BIAS_REFERENCE, RIDGE_REFERENCE) or not _same_rows(pred, bias, ridge):
            continue
        out[name] = captured_share(metric, pred["prediction"], bias["prediction"], ridge["prediction"], bias["label"],
                                   bias["user"], resamples, seed)
    return out


def pooled(parts: Sequence[tuple[int, Mapping[str, np.ndarray] | None]]) -> dict[str, np.ndarray] | None:
    """Per-row predictions of several seeds as one set (users kept apart per seed), None if any is missing."""
    if not parts or any(p is None for _, p in parts):
        return None
    return {"row": np.concatenate([p["row"] + 10**9 * s for s, p in parts]),
            "user": np.concatenate([p["user"] + 10**9 * s for s, p in parts]),
            "prediction": np.concatenate([p["prediction"] for _, p in parts]),
            "label": np.concatenate([p["label"] for _, p in parts])}


def cell(entry: Mapping[str, Any] | None, digits: int = 4, percent: bool = False) -> str:
    """A table cell for a value with its interval (``n/a`` when missing); a gain whose interval holds 0 says so."""
    if not entry:
        return "n/a"
    scale, unit = (100.0, " %") if percent else (1.0, "")
    value, low, high = (float(entry[k]) * scale for k in ("value", "low", "high"))
    text = f"{value:+.{digits}f} [{low:+.{digits}f}, {high:+.{digits}f}]{unit}"
    if entry.get("verdict") == NONE_MEASURABLE:
        text += " no measurable personalisation"
    elif entry.get("full_gain_measurable") is False:
        text += " (full retraining's own gain is not measurable)"
    return text


NOTE = ("personal gain: how much better the bank scores with each user's own prompt than with its prompts dealt to "
        "other users (a seeded derangement; same head, rows and offsets), on the same test rows, 95 % paired bootstrap "
        "interval (uAUC resamples users); an interval holding 0 says no measurable personalisation. retained: personal "
        "gain ÷ full retraining's. captured share: (user_item_bias - row) ÷ (user_item_bias - attribute_ridge), the "
        "share of the learnable personal signal the row captures")
"""The note every table with these columns carries."""


def stage_gains(metric: str, stage_dir: str | Path | None, full_dir: str | Path | None = None,
                resamples: int = 1000, seed: int = 0) -> dict[str, Any]:
    """:func:`placebo_columns` of the stage in ``stage_dir`` (and ``retained`` against the stage in ``full_dir``),
    read from their saved per-row predictions; {} where the stage left no placebo."""
    from puma_lightning.pipeline.predictions import load_predictions

    full = (load_predictions(full_dir), load_placebo(full_dir)) if full_dir is not None else ()
    return placebo_columns(metric, load_predictions(stage_dir), load_placebo(stage_dir), *full, resamples=resamples,
                           seed=seed)


def backfill_placebo(exp: Any, stage: str, record: Mapping[str, Any]) -> bool:
    """Give a stage cached before placebos existed its ``placebo_predictions.npz``, from its saved bank and head.

    Runs only where the stage has a bank, test predictions and no placebo, and kept nothing outside the bank (no
    per-user bias, no shared prompt); the bank is first scored with its own prompts, and the placebo is written only
    if that reproduces the stage's saved predictions (else the row stays without, and the log says why). Returns
    whether it wrote one."""
    from puma_lightning.io.atomic import atomic_write_with
    from puma_lightning.io.bank import PromptBank
    from puma_lightning.models.heads import load_head
    from puma_lightning.pipeline.distributed import on_rank_zero
    from puma_lightning.pipeline.predictions import load_predictions
    from puma_lightning.pipeline.training import test_metrics
    from puma_lightning.tasks import PromptTuning

    folder = exp.stage_dir(stage)
    saved = load_predictions(folder)
    if (folder / PLACEBO_FILE).is_file() or not (folder / "bank").is_dir() or saved is None or exp.table.n_users < 2:
        return False
    if record.get("user_bias") or record.get("shared_prompt"):
        return False
    bank = PromptBank.load(folder / "bank")
    if bank.head_state is None:
        return False
    lm = exp.backbone("source" if stage == "source" else "target")
    table = exp.table
    module = PromptTuning(lm, load_head(table.task, bank.head_state, lm.hidden_size), table.task,
                          bank.rows_for(table.user_ids).float(), train_prompts=False, train_head=False)
    dm = exp.datamodule(lm, exp.cfg.prompt.batch_size)
    test_metrics(module, dm, exp.cfg, exp.run_dir, f"{stage}_own")
    own = module.test_predictions()
    if not (np.array_equal(own["row"], saved["row"]) and np.allclose(own["prediction"], saved["prediction"], atol=1e-3)):
        log.warning("%s: its bank does not reproduce the stage's test predictions; no placebo for this row", stage)
        return False
    _, predictions, _ = dealt_predictions(module, dm, exp.cfg, exp.run_dir, stage, table.n_users)
    on_rank_zero(lambda: atomic_write_with(folder / PLACEBO_FILE, lambda tmp: _write_npz(tmp, predictions)))
    log.info("%s: placebo scored from its bank (the stage was cached before placebos existed)", stage)
    return True
