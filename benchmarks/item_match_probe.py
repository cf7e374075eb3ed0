"""The item-word match term alone, trained as prompts are: how much of the tastes a prompt could learn through it.

    python benchmarks/item_match_probe.py --config configs/personal.yaml [--which source|target] [key=value ...]

``prompt.item_match`` adds ``s * <p_u - anchor, e_i - centre> / (sigma^2 sqrt(d))`` to a row's output
(``puma_lightning/models/item_match.py``). This script trains only that term, built as the pipeline builds it, over
the user + item bias model: the prompts start as ``prompt.init=scaled`` starts them, AdamW runs in minibatches of 32
rows under the pipeline's cosine schedule. No model pass is needed (the model is loaded for its embedding table), so
a setting takes seconds. It reports, per (lr, scale, weight decay, epochs), the epoch with the lowest validation RMSE
and the train, valid and test RMSE there, with the captured share against ``attribute_ridge`` and ``user_item_bias``
on the same rows. It estimates what the term adds alone; the logits channel and the head are left out, so the
pipeline's own validation decides (docs/prompt_diagnosis.md).
"""

from __future__ import annotations

import argparse
from typing import Any, Sequence

import numpy as np

from puma_lightning.machine import describe_machine

GRID = tuple((lr, scale, decay, epochs) for lr in (0.002, 0.005, 0.02) for scale in (0.1, 0.3, 1.0) for decay in (0.0, 1.0)
             for epochs in (2, 4, 8))
"""(prompt lr, ``prompt.item_match`` scale, AdamW weight decay, epochs of the cosine schedule) tried."""


def train_match(table: Any, base: np.ndarray, items_emb: np.ndarray, embedding_std: float, lr: float, scale: float,
                decay: float, epochs: int, seed: int = 0, batch: int = 32) -> dict[str, Any]:
    """Train the match term's prompts (``ItemWordMatch``, as the pipeline builds it) by minibatch AdamW under the
    pipeline's cosine schedule over ``epochs``; the best epoch by validation RMSE and its RMSE per split."""
    import torch

    from puma_lightning.models.item_match import ItemWordMatch
    from puma_lightning.tasks import embedding_unit
    from puma_lightning.tasks.optim import warmup_cosine

    gen = torch.Generator().manual_seed(seed)
    emb = torch.as_tensor(items_emb, dtype=torch.float32)
    label = torch.as_tensor(table.label, dtype=torch.float32)
    base_t = torch.as_tensor(base, dtype=torch.float32)
    user, item = torch.as_tensor(table.user), torch.as_tensor(table.item)
    split = {s: torch.as_tensor(table.rows(s)) for s in ("train", "valid", "test")}
    unit = embedding_unit(embedding_std)
    prompts = torch.empty(table.n_users, emb.shape[1]).uniform_(-0.1, 0.1, generator=gen).requires_grad_(True)
    match = ItemWordMatch(emb.shape[1])
    match.set(scale, prompts.detach().mean(0) * unit, emb[torch.as_tensor(np.unique(table.item))].mean(0), embedding_std)
    opt = torch.optim.AdamW([prompts], lr=lr, weight_decay=decay)
    train = split["train"]
    steps = epochs * -(-len(train) // batch)
    schedule = torch.optim.lr_scheduler.LambdaLR(opt, warmup_cosine(steps))

    def predict(rows: torch.Tensor) -> torch.Tensor:
        return (base_t[rows] + match(prompts[user[rows]] * unit, emb[item[rows]])).clamp(1.0, 5.0)

    def rmse(rows: torch.Tensor) -> float:
        with torch.no_grad():
            return float(((predict(rows) - label[rows]) ** 2).mean().sqrt())

    best = (rmse(split["valid"]), 0, {s: rmse(r) for s, r in split.items()})
    for epoch in range(1, epochs + 1):
        order = train[torch.randperm(len(train), generator=gen)]
        for i in range(0, len(order), batch):
            rows = order[i:i + batch]
            opt.zero_grad()
            ((predict(rows) - label[rows]) ** 2).mean().backward()
            opt.step()
            schedule.step()
        score = rmse(split["valid"])
        if score < best[0]:
            best = (score, epoch, {s: rmse(r) for s, r in split.items()})
    return {"epoch": best[1], **{s: round(v, 5) for s, v in best[2].items()}}


def main(argv: Sequence[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--config", action="append", required=True, metavar="FILE")
    p.add_argument("--which", choices=("source", "target"), default="source", help="the model whose embeddings are read")
    p.add_argument("overrides", nargs="*", metavar="key=value")
    args = p.parse_args(argv)

    from puma_lightning.cli.probe import load_probe
    from puma_lightning.pipeline.builders import item_text_embeddings
    from puma_lightning.pipeline.classic import references_for

    probe = load_probe(args.config, args.overrides, "item_match_probe")
    cfg, exp, dtypes = probe.cfg, probe.exp, probe.dtypes
    table, lm = exp.table, exp.backbone(args.which)
    emb = item_text_embeddings(lm, table.item_texts, int(cfg.data.max_item_tokens or 32)).numpy().astype(np.float64)
    base = probe.bias_base()
    label = table.label.astype(np.float64)
    refs = {}
    for name in ("user_item_bias", "attribute_ridge"):
        pred = references_for(table)[name].fit(table, int(cfg.seed))[0]
        refs[name] = {s: float(np.sqrt(np.mean((pred[table.rows(s)] - label[table.rows(s)]) ** 2))) for s in ("valid", "test")}
    lines = [describe_machine(dtypes.text()), "", f"config {args.config} {' '.join(args.overrides)}; model {lm.name}", "",
             "| lr | scale | weight decay | epochs | best epoch | train | valid | test | captured valid / test |",
             "|---|---|---|---|---|---|---|---|---|"]
    for lr, scale, decay, epochs in GRID:
        r = train_match(table, base, emb, lm.embedding_std(), lr, scale, decay, epochs, int(cfg.seed))
        cap = {s: (refs["user_item_bias"][s] - r[s]) / (refs["user_item_bias"][s] - refs["attribute_ridge"][s]) for s in ("valid", "test")}
        lines.append(f"| {lr:g} | {scale:g} | {decay:g} | {epochs} | {r['epoch']} | {r['train']:.4f} | {r['valid']:.4f} | {r['test']:.4f} "
                     f"| {cap['valid']:+.2f} / {cap['test']:+.2f} |")
    lines += ["", "References: " + "; ".join(f"{n} valid {d['valid']:.4f}, test {d['test']:.4f}" for n, d in refs.items())]
    print("\n".join(lines))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
