"""The run context of a probe benchmark: a config loaded as ``fit`` loads it, for one seed, outside any run directory.

Probes (``benchmarks/prompt_reach.py``, ``item_match_probe.py``, ``taste_prior_probe.py``) study one seed's table and
one model in closed form; they share this setup so that each states only what it measures.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Sequence

import numpy as np


@dataclass
class Probe:
    """A probe's config, its :class:`~puma_lightning.pipeline.experiment.Experiment` (the seed's table) and the
    :class:`~puma_lightning.machine.BackboneDtypes` that records the dtypes its models ran in."""

    cfg: Any
    exp: Any
    dtypes: Any

    def bias_base(self) -> np.ndarray:
        """Each row's user + item bias prediction (what the personal terms are fitted over)."""
        from puma_lightning.pipeline.bias_models import fit_bias_model

        table = self.exp.table
        mu, bu, bi, _ = fit_bias_model(table)
        return mu + bu[table.user] + bi[table.item]


def load_probe(configs: Sequence[str], overrides: Sequence[str], name: str) -> Probe:
    """``configs`` with ``overrides``, one seed (``seeds=null``), no source run, ``run_dir`` ``/tmp/<name>``."""
    from puma_lightning.cli.config_loader import load_config
    from puma_lightning.cli.main import setup_runtime
    from puma_lightning.machine import BackboneDtypes
    from puma_lightning.pipeline.experiment import Experiment

    cfg = load_config(list(configs), [*overrides, "seeds=null", "source_dir=null", f"run_dir=/tmp/{name}"])
    setup_runtime(cfg)
    dtypes = BackboneDtypes()
    return Probe(cfg, dtypes.watch(Experiment(cfg)), dtypes)
