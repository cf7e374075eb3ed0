"""Where the personal signal dies: train/valid/test RMSE of per-user prompts against the references, every epoch.

    python benchmarks/personal_probe.py --config configs/personal.yaml --levers shipped,long \
        [--epochs 12] [--eval-every 1] [--seed 0] [--out DIR] [key=value ...]

On a synthetic table (the generator knows every row's Bayes-optimal prediction), each lever (a named override set of
``configs/levers/prompt_study.yaml``, plus this file's :data:`PROBE_LEVERS`) trains the source model's
per-user prompts (no early stopping unless the lever asks for it; no checkpoints: the probe keeps its own curve). After
every ``--eval-every`` epochs it scores every split's rows and reports, per split:

- ``rmse`` of the prompts' predictions, against ``user_item_bias`` and ``attribute_ridge`` fitted on the same training
  rows, and the **captured share** ``(bias - rmse) / (bias - attribute_ridge)``;
- ``move``: the mean |prediction - bias model| (how far the prompts and head move the bias model), and ``corr``: the
  correlation of that change with what the bias model truly misses (Bayes prediction - bias model);
- ``placebo`` (final epoch only): the RMSE with every prompt dealt to another user (seeded derangement) minus the
  RMSE with the user's own: what the prompts themselves know about their users (0: nothing).

The epoch with the lowest validation RMSE is the lever's reported row (chosen on validation; test is reported, never
used). ``probe.json`` / ``probe.md`` hold every lever's curve and row under the ``machine: ...`` line.
"""

from __future__ import annotations

import argparse
import json
import logging
import time
from pathlib import Path
from typing import Any, Sequence

import numpy as np

from puma_lightning.cli.config_loader import load_lever_sets
from puma_lightning.machine import BackboneDtypes, describe_machine, machine_record

REPO = Path(__file__).resolve().parents[1]

PROBE_LEVERS: dict[str, list[str]] = {}
"""Levers only the probe runs (none yet: every lever lives in configs/levers/prompt_study.yaml)."""
SPLITS = ("train", "valid", "test")


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--config", action="append", required=True, metavar="FILE", help="experiment YAML (repeatable)")
    p.add_argument("--levers", default="shipped", help="comma-separated lever names")
    p.add_argument("--epochs", type=int, default=None, help="training epochs (default: the config's prompt.epochs)")
    p.add_argument("--eval-every", type=int, default=1, help="score every split after every this many epochs")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--model", choices=("source", "target"), default="source")
    p.add_argument("--out", default=None, help="output folder (default: runs/personal_probe)")
    p.add_argument("overrides", nargs="*", metavar="key=value", help="config overrides applied to every lever")
    return p.parse_args(argv)


def study_levers() -> dict[str, list[str]]:
    """The lever sets of ``prompt_study.py``: ``configs/levers/prompt_study.yaml``."""
    return load_lever_sets(Path(__file__).resolve().parents[1] / "configs" / "levers" / "prompt_study.yaml")


def all_levers() -> dict[str, list[str]]:
    return {**study_levers(), **PROBE_LEVERS}


def derangement(n: int, seed: int) -> np.ndarray:
    """A seeded permutation of ``range(n)`` with no fixed point (n >= 2)."""
    rng = np.random.default_rng(seed)
    while True:
        perm = rng.permutation(n)
        if n < 2 or not np.any(perm == np.arange(n)):
            return perm


def predict_split(module: Any, datamodule: Any, split: str, user_map: np.ndarray | None = None) -> tuple[np.ndarray, np.ndarray]:
    """``(rows, predictions)`` of one split in eval mode; ``user_map``: score each row with user ``user_map[u]``'s prompt."""
    import torch
    from torch.utils.data import DataLoader

    from puma_lightning.tasks.base import share_template_prefixes

    device = next(p for p in module.parameters()).device
    share_template_prefixes(module.backbone, datamodule)
    modes = [(m, m.training) for m in module.modules()]
    module.eval()
    rows, preds = [], []
    with torch.no_grad():
        for batch in DataLoader(datamodule.dataset(split), batch_size=2 * int(datamodule.batch_size),
                                collate_fn=datamodule.collate):
            batch = {k: v.to(device) for k, v in batch.items()}
            real = batch["user"]
            if user_map is not None:
                dealt = torch.as_tensor(user_map, device=device)[real]
                prompts = module.prompts_for(dealt)
                original = module.prompts_for
                module.prompts_for = lambda users, p=prompts: p  # this batch's dealt prompts, the rest unchanged
                try:
                    _, output = module(batch)
                finally:
                    module.prompts_for = original
            else:
                _, output = module(batch)
            rows.append(batch["row"].cpu().numpy())
            preds.append(module.head.predict(output).double().cpu().numpy())
    for m, mode in modes:
        m.training = mode
    return np.concatenate(rows), np.concatenate(preds)


def _rmse(pred: np.ndarray, label: np.ndarray) -> float:
    return float(np.sqrt(np.mean((pred - label) ** 2)))


class RowScores:
    """Per-split scores of a prediction vector against the references and the generator's truth."""

    def __init__(self, table: Any, references: dict[str, np.ndarray], expected: np.ndarray) -> None:
        self.table = table
        self.refs = references
        self.expected = expected
        self.label = table.label.astype(np.float64)

    def reference_rows(self) -> dict[str, dict[str, float]]:
        out = {}
        for split in SPLITS:
            rows = self.table.rows(split)
            out[split] = {name: round(_rmse(pred[rows], self.label[rows]), 5) for name, pred in self.refs.items()}
            out[split]["bayes"] = round(_rmse(self.expected[rows], self.label[rows]), 5)
        return out

    def score(self, rows: np.ndarray, pred: np.ndarray) -> dict[str, float]:
        bias, ridge = self.refs["user_item_bias"][rows], self.refs["attribute_ridge"][rows]
        label = self.label[rows]
        rmse, rb, rr = _rmse(pred, label), _rmse(bias, label), _rmse(ridge, label)
        change, missed = pred - bias, self.expected[rows] - bias
        corr = float(np.corrcoef(change, missed)[0, 1]) if change.std() > 0 else 0.0
        ridge_corr = float(np.corrcoef(ridge - bias, missed)[0, 1]) if (ridge - bias).std() > 0 else 0.0
        return {"rmse": round(rmse, 5), "bias": round(rb, 5), "attribute_ridge": round(rr, 5),
                "captured": round((rb - rmse) / (rb - rr), 4) if rb != rr else None,
                "move": round(float(np.mean(np.abs(change))), 4), "corr": round(corr, 4),
                "ridge_corr": round(ridge_corr, 4)}


def probe_lever(config: Sequence[str], overrides: Sequence[str], lever: str, seed: int, model: str, epochs: int | None,
                eval_every: int, out: Path, dtypes: BackboneDtypes) -> dict[str, Any]:
    """Train one lever's prompts, scoring every split each ``eval_every`` epochs; its curve and chosen row."""
    import lightning as L

    from puma_lightning.cli.config_loader import load_config
    from puma_lightning.cli.main import setup_runtime
    from puma_lightning.data.synthetic import make_synthetic_with_truth
    from puma_lightning.pipeline.builders import build_prompt_tuning, fresh_head, initial_prompts
    from puma_lightning.pipeline.classic import references_for
    from puma_lightning.pipeline.experiment import Experiment
    from puma_lightning.pipeline.seeding import seed_stage
    from puma_lightning.pipeline.levers.hooks import before_train
    from puma_lightning.pipeline.training import make_trainer

    run_dir = out / lever / f"seed_{seed}"
    cfg = load_config(list(config), [*overrides, *all_levers()[lever], f"seed={seed}", "seeds=null", f"run_dir={run_dir}",
                                     "source_dir=null"])
    if cfg.data.name != "synthetic":
        raise SystemExit("the probe needs the synthetic dataset (it reads the generator's truth)")
    setup_runtime(cfg)
    exp = dtypes.watch(Experiment(cfg))
    table = exp.table
    d = cfg.data
    _, truth = make_synthetic_with_truth(seed, d.n_users, d.n_items, d.rows_per_user, d.noise_std, d.task, d.valid_ratio,
                                         d.test_ratio, d.max_users, d.max_rows_per_user)
    refs = {name: references_for(table)[name].fit(table, seed)[0] for name in ("user_item_bias", "attribute_ridge")}
    scores = RowScores(table, refs, truth.expected_label)
    lm = exp.backbone(model)
    stage = "source" if model == "source" else "full_retrain"
    seed_stage(cfg.seed, stage)
    prompts, scale = initial_prompts(cfg, lm, table)
    head = fresh_head(cfg, lm, table, exp.mean_label(), prompts)
    module = build_prompt_tuning(cfg, lm, table, head, prompts, scale).to(lm.device)
    dm = exp.datamodule(lm, cfg.prompt.batch_size)
    start = time.perf_counter()
    readout = before_train(cfg, module, dm).get("readout")
    epochs = int(epochs or cfg.prompt.epochs)
    curve: list[dict[str, Any]] = []

    def evaluate(epoch: int) -> None:
        entry: dict[str, Any] = {"epoch": epoch, "seconds": round(time.perf_counter() - start, 1)}
        for split in SPLITS:
            rows, pred = predict_split(module, dm, split)
            entry[split] = scores.score(rows, pred)
        curve.append(entry)
        print(f"[{lever}] epoch {epoch}: " + "  ".join(
            f"{s} {entry[s]['rmse']:.4f} (cap {entry[s]['captured']:+.2f}, corr {entry[s]['corr']:+.2f}, "
            f"move {entry[s]['move']:.3f})" for s in SPLITS), flush=True)

    class Every(L.Callback):
        def on_train_epoch_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
            done = trainer.current_epoch + 1
            if done % eval_every == 0 or done == epochs:
                evaluate(done)

    evaluate(0)
    callbacks: list[L.Callback] = [Every()]
    if cfg.prompt.early_stopping_patience is not None:
        from lightning.pytorch.callbacks import EarlyStopping

        callbacks.append(EarlyStopping(monitor="val/loss", mode="min", patience=int(cfg.prompt.early_stopping_patience)))
    trainer = make_trainer(cfg, run_dir, stage, epochs, callbacks=callbacks, log=False)
    trainer.fit(module, datamodule=dm)
    if curve[-1]["epoch"] != trainer.current_epoch:  # stopped early between evaluations
        evaluate(trainer.current_epoch)
    perm = derangement(table.n_users, seed)
    placebo = {}
    for split in SPLITS:
        rows, pred = predict_split(module, dm, split, user_map=perm)
        own = curve[-1][split]["rmse"]
        placebo[split] = {"rmse_dealt": round(_rmse(pred, scores.label[rows]), 5),
                          "gain": round(_rmse(pred, scores.label[rows]) - own, 5)}
    best = min(curve[1:] or curve, key=lambda e: e["valid"]["rmse"])
    result = {"lever": lever, "overrides": all_levers()[lever], "epochs": epochs, "epochs_run": trainer.current_epoch,
              "wall_s": round(time.perf_counter() - start, 1), "readout": readout, "curve": curve,
              "chosen": best, "placebo_final": placebo, "references": scores.reference_rows(),
              "prompt_norm": float(module.model_prompts().norm(dim=-1).mean())}
    del exp
    return result


def to_markdown(results: list[dict[str, Any]]) -> str:
    lines = ["| lever | epoch (of run) | train RMSE | train captured | valid RMSE | valid captured | test RMSE | test captured "
             "| test corr | train placebo gain (final) | wall s |", "|" + "---|" * 11]
    for r in results:
        c = r["chosen"]
        lines.append(f"| {r['lever']} | {c['epoch']} ({r['epochs_run']}) | {c['train']['rmse']:.4f} | {c['train']['captured']:+.2f} "
                     f"| {c['valid']['rmse']:.4f} | {c['valid']['captured']:+.2f} | {c['test']['rmse']:.4f} "
                     f"| {c['test']['captured']:+.2f} | {c['test']['corr']:+.2f} | {r['placebo_final']['train']['gain']:+.4f} "
                     f"| {r['wall_s']:.0f} |")
    if results:
        refs = results[0]["references"]
        lines += ["", "References on the same rows (RMSE): " + "; ".join(
            f"{s}: bias {refs[s]['user_item_bias']:.4f}, attribute_ridge {refs[s]['attribute_ridge']:.4f}, "
            f"Bayes {refs[s]['bayes']:.4f}" for s in SPLITS)]
    return "\n".join(lines) + "\n"


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    logging.basicConfig(level=logging.WARNING, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    levers = [name.strip() for name in args.levers.split(",") if name.strip()]
    unknown = [name for name in levers if name not in all_levers()]
    if unknown:
        raise SystemExit(f"unknown levers {unknown}; available: {', '.join(all_levers())}")
    out = Path(args.out) if args.out else REPO / "runs" / "personal_probe"
    dtypes = BackboneDtypes()
    results = []
    from puma_lightning.io.atomic import atomic_write_text

    for lever in levers:
        results.append(probe_lever(args.config, args.overrides, lever, args.seed, args.model, args.epochs, args.eval_every,
                                   out, dtypes))
        record = {"machine": machine_record(dtypes.text()), "config": args.config, "overrides": args.overrides,
                  "seed": args.seed, "results": results}
        atomic_write_text(out / "probe.json", json.dumps(record, indent=1))
        md = "\n".join([describe_machine(dtypes.text()), "", f"config {args.config} {' '.join(args.overrides)}", "",
                        to_markdown(results)])
        atomic_write_text(out / "probe.md", md)
    print(md)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
