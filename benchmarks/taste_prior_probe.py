"""What a taste prior shared by all users adds to the item-word match term, in closed form (no prompt training).

    python benchmarks/taste_prior_probe.py --config configs/personal.yaml [--model source] [--iterations 30] [key=value ...]

The match term is linear in the prompt, so a user's best term is a per-user regression of what the bias model misses
on the items' mean word embeddings. Fitted user by user with an isotropic penalty (what gradient descent with weight
decay converges to) it is the ceiling the prompts met in docs/prompt_diagnosis.md (section 7); ``prompt.taste_prior``
instead fits the penalty's shape from all users (:func:`puma_lightning.pipeline.taste_prior.fit_prior`, the function
the lever runs). Both are printed with the references and the captured share ``(bias - rmse) / (bias - ceiling)``,
the ceiling being ``attribute_ridge`` where the data has attributes and ``biased_mf`` elsewhere (left out when the
ceiling does not beat the bias model on validation), on validation (where the EM iteration is chosen) and test.
Seconds on a CPU, plus loading the model; printed under a ``machine: ...`` line.
"""

from __future__ import annotations

import argparse
import time
from typing import Sequence

import numpy as np

from puma_lightning.machine import describe_machine


PERSONAL_CEILINGS = ("attribute_ridge", "biased_mf")
"""The no-LLM personal reference the captured share is measured against, the first the data has: the ridge on the
generator's attributes where they exist (synthetic), biased MF elsewhere."""


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--config", action="append", required=True)
    p.add_argument("--model", default="source", choices=("source", "target"))
    p.add_argument("--iterations", type=int, default=30, help="most EM iterations (the best on validation is kept)")
    p.add_argument("overrides", nargs="*")
    return p.parse_args(argv)


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    from puma_lightning.cli.probe import load_probe
    from puma_lightning.pipeline.builders import item_text_embeddings
    from puma_lightning.pipeline.classic import references_for
    from puma_lightning.pipeline.taste_prior import Rows, catalogue_coordinates, fit_prior

    probe = load_probe(args.config, args.overrides, "taste_prior_probe")
    cfg, exp, dtypes = probe.cfg, probe.exp, probe.dtypes
    table = exp.table
    lm = exp.backbone(args.model)
    start = time.perf_counter()
    x = item_text_embeddings(lm, table.item_texts, cfg.data.max_item_tokens).double().numpy()
    train_rows = table.rows("train")
    x = x - x[np.unique(table.item[train_rows])].mean(0)
    z = catalogue_coordinates(x, table.item[train_rows])[0]  # the lever's coordinates
    base = probe.bias_base()
    label = table.label.astype(np.float64)
    split = {s: Rows(table.user[r], table.item[r], label[r] - base[r]) for s in ("train", "valid", "test")
             for r in [table.rows(s)]}
    zeros = np.zeros((table.n_users, z.shape[1]))
    rmse = {}
    for name, iterations in (("per-user isotropic ridge (what weight decay converges to)", 0),
                             ("shared taste prior (prompt.taste_prior, EM)", args.iterations)):
        fitted = fit_prior(z, split["train"], split["valid"], zeros, iterations, int(cfg.seed))
        means = fitted.means if fitted.means is not None else zeros
        rmse[name] = {s: float(np.sqrt(np.mean((np.clip(base[table.rows(s)] + np.einsum(
            "rk,rk->r", z[split[s].item], means[split[s].user]), 1, 5) - label[table.rows(s)]) ** 2))) for s in ("valid", "test")}
        rmse[name]["note"] = f"EM iteration {fitted.record['iteration']}" if iterations else f"penalty {fitted.record['start_penalty']}"
    available = references_for(table)
    ceiling = next(n for n in PERSONAL_CEILINGS if n in available)
    refs = {n: available[n].fit(table, int(cfg.seed))[0] for n in ("user_item_bias", ceiling)}
    ref = {n: {s: float(np.sqrt(np.mean((p[table.rows(s)] - label[table.rows(s)]) ** 2))) for s in ("valid", "test")}
           for n, p in refs.items()}
    seconds = time.perf_counter() - start
    print(describe_machine(dtypes.text()))
    print(f"config {args.config} {' '.join(args.overrides)}; model {lm.name}; {z.shape[1]} directions; {seconds:.1f} s\n")
    bias, ridge = ref["user_item_bias"], ref[ceiling]
    learnable = ridge["valid"] < bias["valid"]
    print(f"captured share: (user_item_bias - row) / (user_item_bias - {ceiling})" + (
        "" if learnable else f"; not shown: {ceiling} does not beat user_item_bias on validation, so it measures no "
        "learnable personal signal") + "\n")
    print("| row | valid RMSE | test RMSE | captured valid / test | chosen |")
    print("|---|---|---|---|---|")
    for name, r in {**{n: {**v, "note": "reference"} for n, v in ref.items()}, **rmse}.items():
        cap = " / ".join(f"{(bias[s] - r[s]) / (bias[s] - ridge[s]):+.2f}" for s in ("valid", "test")) if learnable else "–"
        print(f"| {name} | {r['valid']:.4f} | {r['test']:.4f} | {cap} | {r['note']} |")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
