"""``python -m puma_lightning placebo bank=PATH``: what a bank's prompts know about their own user, for any bank."""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from omegaconf import DictConfig

from puma_lightning.commands.arguments import BankArgument, ModelArgument
from puma_lightning.errors import PumaError


@dataclass
class PlaceboArguments(ModelArgument, BankArgument):
    """``bank``: the bank whose prompts are dealt; ``model``: the model they are scored on."""


def run_placebo(cfg: Any, args: PlaceboArguments) -> dict[str, Any]:
    """``placebo bank=PATH [model=target]``: the bank's test metrics with its own prompts and with them dealt to other
    users, and the personal gain per metric with its 95 % interval; prints one line per metric, writes
    ``<run_dir>/placebo.json``."""
    from puma_lightning.io.atomic import atomic_write_text
    from puma_lightning.io.bank import PromptBank
    from puma_lightning.models.heads import load_head
    from puma_lightning.pipeline.distributed import is_global_zero
    from puma_lightning.pipeline.experiment import Experiment
    from puma_lightning.pipeline.placebo import dealt_predictions
    from puma_lightning.pipeline.sub_runs import metric_names
    from puma_lightning.pipeline.training import test_metrics
    from puma_lightning.tasks import PromptTuning
    from puma_lightning.tasks.placebo import personal_gain

    if not args.bank:
        raise PumaError("placebo needs 'bank=PATH' (a bank folder written by fit, pretrain or migrate)")
    if not Path(args.bank).is_dir():
        raise PumaError(f"placebo: bank not found: {args.bank} (expected a bank folder written by fit, pretrain or migrate)")
    bank = PromptBank.load(args.bank)
    if bank.head_state is None:
        raise PumaError(f"{args.bank}: bank has no trained head (head.safetensors); it cannot be scored alone")
    exp = Experiment(cfg)
    exp.require_test_rows("placebo")
    table = exp.table
    if table.n_users < 2:
        raise PumaError(f"placebo: data {cfg.data.name!r} has {table.n_users} user; dealing prompts needs at least 2")
    lm = exp.backbone(args.model)
    bank.check_model(lm.hidden_size, lm.fingerprint, where=str(args.bank))
    module = PromptTuning(lm, load_head(table.task, bank.head_state, lm.hidden_size), table.task,
                          bank.rows_for(table.user_ids).float(), train_prompts=False, train_head=False)
    dm = exp.datamodule(lm, cfg.prompt.batch_size)
    test_metrics(module, dm, cfg, exp.run_dir, "placebo_own")
    own = module.test_predictions()
    _, dealt, seed = dealt_predictions(module, dm, cfg, exp.run_dir, "placebo", table.n_users)
    gains = {m: personal_gain(m, own["prediction"], dealt["prediction"], own["label"], own["user"],
                              int(cfg.placebo.resamples), int(cfg.seed)) for m in metric_names(table.task)}
    doc = {"bank": str(args.bank), "model": lm.name, "derangement_seed": seed, "test_rows": int(len(own["row"])),
           "personal_gain": gains}
    if is_global_zero():
        atomic_write_text(exp.run_dir / "placebo.json", json.dumps(doc, indent=1))
        for m, g in gains.items():
            print(f"{m}: own {g['own']:.4f}, other users' prompts {g['placebo']:.4f}, personal gain {g['value']:+.4f} "
                  f"[{g['low']:+.4f}, {g['high']:+.4f}]: {g['verdict']}")
    return doc


def run(cfg: DictConfig, run_dir: Path, args: PlaceboArguments) -> None:
    """The command: :func:`run_placebo` on the loaded config."""
    run_placebo(cfg, args)
