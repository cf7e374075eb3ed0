"""The lineage of a bank an :class:`~puma_lightning.pipeline.experiment.Experiment` stage saves.

The record format and its helpers live in :mod:`puma_lightning.io.lineage`; this module reads an
experiment (its config, loaded models, table and stage folders) to fill one in, so the io layer
never depends on the pipeline.
"""

from __future__ import annotations

from typing import Any

from puma_lightning.io.bank import MANIFEST_FILE
from puma_lightning.io.lineage import adapter_ref, make_lineage, selection_ref, source_ref


def experiment_lineage(exp: Any, made_by: str, metrics: dict[str, Any], source: Any | None = None) -> dict[str, Any]:
    """The lineage of a bank an :class:`~puma_lightning.pipeline.experiment.Experiment` stage is saving.

    Pretraining banks have no sources; a migrated bank names the source stage's bank (content hash,
    nested lineage), the adapter checkpoint just written, and the selection it was trained on.
    """
    cfg = exp.cfg
    which = "source" if made_by == "pretrain:source" else "target"
    lm = exp.loaded_backbone(which)
    model = {"name": str(cfg[which].name), "fingerprint": getattr(lm, "fingerprint", None),
             "hidden_size": getattr(lm, "hidden_size", None)}
    table = exp.table
    dataset = {"name": table.meta.get("name", cfg.data.name), "task": table.task, "template": str(cfg.data.template),
               "seed": int(cfg.seed), "num_users": int(table.n_users)}
    sources, adapter, selection = [], None, None
    if source is not None:
        bank_dir = exp.stage_dir("source") / "bank"
        if (bank_dir / MANIFEST_FILE).is_file():
            sources.append(source_ref(bank_dir))
        adapter_file = exp.stage_dir("puma") / "adapter.safetensors"
        if adapter_file.is_file():
            adapter = adapter_ref(adapter_file)
        selection = selection_ref(exp.run_dir / "selection.json")
    return make_lineage(made_by, model=model, dataset=dataset, metrics=metrics, sources=sources, adapter=adapter,
                        selection=selection, models={"source": str(cfg.source.name), "target": str(cfg.target.name)})
