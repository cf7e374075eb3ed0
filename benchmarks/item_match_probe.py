"""The item-word match term alone, trained as prompts are: how much of the tastes a prompt could learn through it.

    python benchmarks/item_match_probe.py --config configs/personal.yaml [--epochs 12] [key=value ...]

The design change that docs/prompt_diagnosis.md points to adds ``scale * (p_u - p_bar) . e_i`` to a row's output:
``p_u`` the user's prompt in the model's embedding space, ``p_bar`` the mean starting prompt, ``e_i`` the mean input
embedding of item ``i``'s text tokens from the frozen model's own embedding table (centred over the rated items).
This script trains only that term over the user + item bias model. The prompts start as ``prompt.init=scaled``
starts them, and AdamW runs in minibatches of 32 rows for ``--epochs`` epochs. No model pass is needed, so it takes
seconds. It reports, per (lr, scale, weight decay), the epoch with the lowest validation RMSE and the train, valid
and test RMSE there, with the captured share against ``attribute_ridge`` and ``user_item_bias`` on the same rows.
It estimates what the term adds; the logits channel is left out.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Any, Sequence

import numpy as np

REPO = Path(__file__).resolve().parents[1]
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))

from benchmarks._machine import BackboneDtypes, describe_machine  # noqa: E402

GRID = ((0.002, 1.0, 0.0), (0.001, 1.0, 0.0), (0.002, 0.3, 0.0), (0.005, 0.3, 0.0), (0.002, 1.0, 1.0), (0.02, 1.0, 0.0))
"""(prompt lr, output scale, AdamW weight decay) tried; the last is the shipped prompt lr."""


def train_match(table: Any, base: np.ndarray, items_emb: np.ndarray, unit: float, lr: float, scale: float, decay: float,
                epochs: int, seed: int = 0, batch: int = 32) -> dict[str, Any]:
    """Train the match term's prompts by minibatch AdamW; the best epoch by validation RMSE and its RMSE per split."""
    import torch

    gen = torch.Generator().manual_seed(seed)
    emb = torch.as_tensor(items_emb, dtype=torch.float32)
    label = torch.as_tensor(table.label, dtype=torch.float32)
    base_t = torch.as_tensor(base, dtype=torch.float32)
    user, item = torch.as_tensor(table.user), torch.as_tensor(table.item)
    split = {s: torch.as_tensor(table.rows(s)) for s in ("train", "valid", "test")}
    prompts = torch.empty(table.n_users, emb.shape[1]).uniform_(-0.1, 0.1, generator=gen).requires_grad_(True)
    start = prompts.detach().mean(0)
    opt = torch.optim.AdamW([prompts], lr=lr, weight_decay=decay)

    def predict(rows: torch.Tensor) -> torch.Tensor:
        return (base_t[rows] + scale * (((prompts[user[rows]] - start) * unit) * emb[item[rows]]).sum(-1)).clamp(1.0, 5.0)

    def rmse(rows: torch.Tensor) -> float:
        with torch.no_grad():
            return float(((predict(rows) - label[rows]) ** 2).mean().sqrt())

    best = (rmse(split["valid"]), 0, {s: rmse(r) for s, r in split.items()})
    train = split["train"]
    for epoch in range(1, epochs + 1):
        order = train[torch.randperm(len(train), generator=gen)]
        for i in range(0, len(order), batch):
            rows = order[i:i + batch]
            opt.zero_grad()
            ((predict(rows) - label[rows]) ** 2).mean().backward()
            opt.step()
        score = rmse(split["valid"])
        if score < best[0]:
            best = (score, epoch, {s: rmse(r) for s, r in split.items()})
    return {"epoch": best[1], **{s: round(v, 5) for s, v in best[2].items()}}


def main(argv: Sequence[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--config", action="append", required=True, metavar="FILE")
    p.add_argument("--epochs", type=int, default=12)
    p.add_argument("overrides", nargs="*", metavar="key=value")
    args = p.parse_args(argv)

    from puma_lightning.cli.config_loader import load_config
    from puma_lightning.cli.main import setup_runtime
    from puma_lightning.pipeline.builders import item_text_embeddings
    from puma_lightning.pipeline.classic import fit_bias_model, references_for
    from puma_lightning.pipeline.experiment import Experiment
    from puma_lightning.tasks import embedding_unit

    cfg = load_config(list(args.config), [*args.overrides, "seeds=null", "source_dir=null", "run_dir=/tmp/item_match_probe"])
    setup_runtime(cfg)
    dtypes = BackboneDtypes()
    exp = dtypes.watch(Experiment(cfg))
    table, lm = exp.table, exp.backbone("source")
    emb = item_text_embeddings(lm, table.item_texts, int(cfg.data.max_item_tokens or 32)).numpy().astype(np.float64)
    emb = emb - emb[np.unique(table.item)].mean(0)
    unit = embedding_unit(lm.embedding_std())
    mu, bu, bi, _ = fit_bias_model(table)
    base = mu + bu[table.user] + bi[table.item]
    label = table.label.astype(np.float64)
    refs = {}
    for name in ("user_item_bias", "attribute_ridge"):
        pred = references_for(table)[name].fit(table, int(cfg.seed))[0]
        refs[name] = {s: float(np.sqrt(np.mean((pred[table.rows(s)] - label[table.rows(s)]) ** 2))) for s in ("valid", "test")}
    lines = [describe_machine(dtypes.text()), "", f"config {args.config} {' '.join(args.overrides)}; {args.epochs} epochs", "",
             "| lr | scale | weight decay | best epoch | train | valid | test | captured valid / test |", "|---|---|---|---|---|---|---|---|"]
    for lr, scale, decay in GRID:
        r = train_match(table, base, emb, unit, lr, scale, decay, args.epochs, int(cfg.seed))
        cap = {s: (refs["user_item_bias"][s] - r[s]) / (refs["user_item_bias"][s] - refs["attribute_ridge"][s]) for s in ("valid", "test")}
        lines.append(f"| {lr:g} | {scale:g} | {decay:g} | {r['epoch']} | {r['train']:.4f} | {r['valid']:.4f} | {r['test']:.4f} "
                     f"| {cap['valid']:+.2f} / {cap['test']:+.2f} |")
    lines += ["", "References: " + "; ".join(f"{n} valid {d['valid']:.4f}, test {d['test']:.4f}" for n, d in refs.items())]
    print("\n".join(lines))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
