"""Where the pipeline acts through the levers: each function calls one hook on every registered lever, which acts
or stays inert by its own settings. Importing this module registers the built-in levers (their package's
``__init__`` imports them)."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any, Callable

from puma_lightning.pipeline.levers.registry import LEVERS

if TYPE_CHECKING:
    import numpy as np
    import torch

    from puma_lightning.data.table import InteractionTable


def _summed(parts: list["np.ndarray"]) -> "np.ndarray | None":
    if not parts:
        return None
    total = parts[0]
    for part in parts[1:]:
        total = total + part
    return total


def row_offsets(cfg: Any, table: "InteractionTable") -> "np.ndarray | None":
    """float32 offset added to every row's output of ``table`` by the levers (a residual base), or None."""
    return _summed([o for lever in LEVERS.values() if (o := lever.row_offset(cfg, table)) is not None])


def pair_offsets(cfg: Any, fitted_on: "InteractionTable", pairs: "InteractionTable") -> "np.ndarray | None":
    """:func:`row_offsets` for scored ``pairs`` (users by id, items by index into ``fitted_on``), fitted on ``fitted_on``."""
    return _summed([o for lever in LEVERS.values() if (o := lever.pair_offset(cfg, fitted_on, pairs)) is not None])


def start_label(cfg: Any, table: "InteractionTable") -> float:
    """Where a fresh rating head's output starts: the mean training label, less the levers' offsets where there are
    any (with a residual base: the mean training residual, about 0)."""
    import numpy as np

    rows = table.rows("train")
    offsets = row_offsets(cfg, table)
    target = table.label[rows].astype(np.float64) - (offsets[rows] if offsets is not None else 0.0)
    return float(target.mean()) if len(rows) else 0.0


def reads_hidden(cfg: Any) -> bool:
    """Whether a new head reads the hidden state at the answer position (a lever asks for it)."""
    return any(lever.reads_hidden(cfg) for lever in LEVERS.values())


def start_head(cfg: Any, head: Any, lm: Any, table: "InteractionTable", start: Callable[[], "torch.Tensor"]) -> None:
    """Every lever's set-up of ``head``, started on ``lm`` for the bank ``start()`` (called only by a lever that needs it)."""
    for lever in LEVERS.values():
        lever.start_head(cfg, head, lm, table, start)


def before_train(cfg: Any, module: Any, datamodule: Any) -> dict[str, dict[str, Any]]:
    """Every lever's work on ``module`` before it trains on ``datamodule``: ``{record name: record}`` of those that acted."""
    records: dict[str, dict[str, Any]] = {}
    for lever in LEVERS.values():
        record = lever.before_train(cfg, module, datamodule)
        if record is not None:
            records[lever.record_name or lever.name] = record
    return records


def adapter_init(exp: Any, source_bank: Any) -> Any:
    """The closed-form start of PUMA's adapter a lever asks for (None: its layers' own initialisation); two levers that
    both start it are refused."""
    starts = [(lever.name, s) for lever in LEVERS.values() if (s := lever.adapter_init(exp, source_bank)) is not None]
    if len(starts) > 1:
        raise ValueError(f"levers {', '.join(n for n, _ in starts)} each start the adapter; configure one of them")
    return starts[0][1] if starts else None


def choose_start(cfg: Any, start_map: Any, judge: Callable[[Any], dict]) -> tuple[Any, dict[str, dict[str, Any]]]:
    """PUMA's adapter start after every lever that chooses one on validation (``judge(map)``: the validation rows of
    every unselected user when the adapter starts at ``map``), and ``{lever name: record}`` of those that acted."""
    records: dict[str, dict[str, Any]] = {}
    for lever in LEVERS.values():
        chosen = lever.choose_start(cfg, start_map, judge)
        if chosen is not None:
            start_map, records[lever.name] = chosen
    return start_map, records


def wrap_adapter(cfg: Any, adapter: Any, source: "torch.Tensor") -> Any:
    """``adapter`` wrapped by every lever in turn (input standardisation), given the source prompts ``source``."""
    for lever in LEVERS.values():
        adapter = lever.wrap_adapter(cfg, adapter, source)
    return adapter


def after_adapter_fit(cfg: Any, module: Any, validation_rows: Callable[[Any], dict]) -> dict[str, dict[str, Any]]:
    """Every lever's work on PUMA's trained ``module`` before it maps the prompts: ``{lever name: record}`` of those
    that acted (``validation_rows(module)``: its prediction and label per validation row of the unselected users)."""
    records: dict[str, dict[str, Any]] = {}
    for lever in LEVERS.values():
        record = lever.after_adapter_fit(cfg, module, validation_rows)
        if record is not None:
            records[lever.name] = record
    return records


def adapter_rows(exp: Any, users: "np.ndarray") -> tuple[Any, "InteractionTable", "np.ndarray | None"]:
    """The adapter's training table for the selected ``users``: ``(teacher, table, offsets)``, grown by the one lever that
    adds rows (distillation), else the experiment's own table, no teacher, and its rows' offsets."""
    grown = [(lever.name, g) for lever in LEVERS.values() if (g := lever.extra_rows(exp, users)) is not None]
    if len(grown) > 1:
        raise ValueError(f"levers {', '.join(n for n, _ in grown)} each add the adapter's training rows; configure one of them")
    if grown:
        return grown[0][1]
    return None, exp.table, row_offsets(exp.cfg, exp.table)
