"""Shared by the benchmark scripts: the machine a figure was measured on, printed and recorded.

Every script prints :func:`~puma_lightning.machine.describe_machine` (one ``machine: ...`` line) with
its figures and stores :func:`machine_record` in the structured files it writes (a ``machine`` key
in JSON, the ``machine: ...`` line in markdown). ``dtype`` is the compute dtype of the backbone(s)
the run used, None for scripts that load no model.
"""

from __future__ import annotations

from typing import Any

from puma_lightning.machine import describe_machine, machine_info

__all__ = ["BackboneDtypes", "describe_machine", "dtype_name", "machine_record"]


def dtype_name(dtype: Any) -> str:
    """``torch.bfloat16`` -> ``bfloat16``."""
    return str(dtype).replace("torch.", "")


def machine_record(dtype: str | None) -> dict[str, str | None]:
    """:func:`~puma_lightning.machine.machine_info` plus the compute dtype, for a results file."""
    return {**machine_info(), "dtype": dtype}


class BackboneDtypes:
    """The compute dtype of every backbone the watched Experiments load (model name -> dtype).

    Stages reused from an earlier run load no model, so their dtype is not seen here.
    """

    def __init__(self) -> None:
        self.by_model: dict[str, str] = {}

    def watch(self, exp: Any) -> Any:
        """Record the dtype of each backbone ``exp`` (an Experiment) hands out; returns ``exp``."""
        original = exp.backbone

        def backbone(which: str) -> Any:
            lm = original(which)
            self.by_model[str(exp.cfg[which].name)] = dtype_name(lm.dtype)
            return lm

        exp.backbone = backbone  # this instance only
        return exp

    def text(self) -> str | None:
        """One dtype when all backbones agree, else ``model dtype`` per model; None when none was loaded."""
        kinds = set(self.by_model.values())
        if len(kinds) <= 1:
            return next(iter(kinds), None)
        return ", ".join(f"{m} {d}" for m, d in self.by_model.items())
