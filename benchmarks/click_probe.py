"""What a click task's bias offset and a per-user match term on the items' words can reach, in closed form (no prompt
training): the ceiling of ``prompt.residual=item_logodds`` plus ``prompt.item_match`` on clicks.

    python benchmarks/click_probe.py --config configs/ml100k_click.yaml [--model source] [key=value ...]

Rows, all scored on validation and test (AUC and per-user AUC, uAUC):

- the click references (popularity, item_item, ...), as the run's table carries them;
- the logistic bias models that ``prompt.residual`` offers on clicks (``item_logodds``, ``user_item_logodds``);
- over ``user_item_logodds``, each user's logistic regression on the items' mean word embeddings (the match term's
  features, whitened to their leading directions), one penalty for all users: the per-user term a prompt can learn
  through ``prompt.item_match``. The number of directions and the penalty are chosen on validation uAUC;
- over ``user_item_logodds``, the shared taste prior of ``prompt.taste_prior`` on the same features, fitted (as the
  lever fits it on clicks) to each row's first-order logit residual ``(click - p) / 0.25``, the EM iteration chosen
  on validation (:func:`puma_lightning.pipeline.taste_prior.fit_prior`, the function the lever runs).

Seconds on a CPU, plus loading the model; printed under a ``machine: ...`` line.
"""

from __future__ import annotations

import argparse
import time
from typing import Sequence

import numpy as np

from puma_lightning.machine import describe_machine

DIRECTIONS = (8, 32, 128)
"""Leading directions of the item features a per-user regression may use (chosen on validation)."""
PENALTIES = (1.0, 4.0, 16.0, 64.0)
"""Penalties of the per-user regressions' squared weights (chosen on validation)."""


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--config", action="append", required=True)
    p.add_argument("--model", default="source", choices=("source", "target"))
    p.add_argument("--steps", type=int, default=60, help="L-BFGS steps of each per-user fit")
    p.add_argument("--iterations", type=int, default=30, help="most EM iterations of the shared prior")
    p.add_argument("overrides", nargs="*")
    return p.parse_args(argv)


def per_user_logistic(z, user, item, label, offset, n_users: int, penalty: float, steps: int):
    """Weights ``[n_users, k]`` minimising the summed log loss of ``offset + z[item] . m[user]`` plus ``penalty / 2`` times
    the squared weights (L-BFGS on all users at once: their problems are independent)."""
    import torch

    zt = torch.as_tensor(z[item])
    ut, yt, ot = (torch.as_tensor(a) for a in (user, label, offset))
    m = torch.zeros(n_users, z.shape[1], dtype=torch.float64, requires_grad=True)
    opt = torch.optim.LBFGS([m], max_iter=steps, line_search_fn="strong_wolfe")

    def closure():
        opt.zero_grad()
        logit = ot + (zt * m[ut]).sum(1)
        loss = torch.nn.functional.binary_cross_entropy_with_logits(logit, yt, reduction="sum") + 0.5 * penalty * (m ** 2).sum()
        loss.backward()
        return loss

    opt.step(closure)
    return m.detach().numpy()


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    from puma_lightning.cli.probe import load_probe
    from puma_lightning.pipeline.bias_models import fit_click_bias_model
    from puma_lightning.pipeline.builders import item_text_embeddings
    from puma_lightning.pipeline.classic import references_for
    from puma_lightning.pipeline.taste_prior import CLICK_SLOPE, Rows, catalogue_coordinates, fit_prior
    from puma_lightning.tasks.uncertainty import metric_on_rows

    probe = load_probe(args.config, args.overrides, "click_probe")
    cfg, exp, dtypes = probe.cfg, probe.exp, probe.dtypes
    table = exp.table
    if table.task != "click":
        raise SystemExit(f"{args.config}: data.task is {table.task!r}; this probe reads click tables")
    rows = {s: table.rows(s) for s in ("train", "valid", "test")}
    label = table.label.astype(np.float64)

    def scores(prediction: np.ndarray) -> dict[str, float]:
        return {f"{s} {m}": metric_on_rows(m, prediction[r], label[r], table.user[r])
                for s in ("valid", "test") for r in [rows[s]] for m in ("auc", "uauc")}

    results: dict[str, tuple[dict[str, float], str]] = {}
    for name, ref in references_for(table).items():
        results[name] = (scores(ref.fit(table, int(cfg.seed))[0]), "reference")
    start = time.perf_counter()
    offsets = {}
    for name, users in (("item_logodds", False), ("user_item_logodds", True)):
        mu, bu, bi, chosen = fit_click_bias_model(table, users=users)
        offsets[name] = mu + bu[table.user] + bi[table.item]
        results[name] = (scores(offsets[name]), f"reg {chosen['reg']}")
    lm = exp.backbone(args.model)
    x = item_text_embeddings(lm, table.item_texts, cfg.data.max_item_tokens).double().numpy()
    seen = np.unique(table.item[rows["train"]])
    x = x - x[seen].mean(0)
    _, singular, vt = np.linalg.svd(x[seen], full_matrices=False)
    base = offsets["user_item_logodds"]
    best = None
    for k in DIRECTIONS:
        z = x @ vt[:k].T / singular[:k] * np.sqrt(len(seen))  # whitened: each direction unit variance over items
        tr = rows["train"]
        for penalty in PENALTIES:
            m = per_user_logistic(z, table.user[tr], table.item[tr], label[tr], base[tr], table.n_users, penalty, args.steps)
            prediction = base + np.einsum("rk,rk->r", z[table.item], m[table.user])
            s = scores(prediction)
            if best is None or s["valid uauc"] > best[0]["valid uauc"]:
                best = (s, f"{k} directions, penalty {penalty}")
    results["per-user match term over user_item_logodds"] = best
    z = catalogue_coordinates(x, table.item[rows["train"]])[0]  # the lever's coordinates
    target = (label - 1.0 / (1.0 + np.exp(-base))) / CLICK_SLOPE
    split = {s: Rows(table.user[r], table.item[r], target[r]) for s, r in rows.items()}
    fitted = fit_prior(z, split["train"], split["valid"], np.zeros((table.n_users, z.shape[1])), args.iterations,
                       int(cfg.seed))
    means = fitted.means if fitted.means is not None else np.zeros((table.n_users, z.shape[1]))
    results["shared taste prior over user_item_logodds"] = (
        scores(base + np.einsum("rk,rk->r", z[table.item], means[table.user])),
        f"EM iteration {fitted.record['iteration']} (start penalty {fitted.record['start_penalty']})")
    seconds = time.perf_counter() - start
    print(describe_machine(dtypes.text()))
    print(f"config {args.config} {' '.join(args.overrides)}; model {lm.name}; {table.n_users} users, "
          f"{len(rows['test'])} test rows; {seconds:.1f} s\n")
    print("| row | valid AUC | valid uAUC | test AUC | test uAUC | chosen |")
    print("|---|---|---|---|---|---|")
    for name, (s, note) in results.items():
        print(f"| {name} | {s['valid auc']:.4f} | {s['valid uauc']:.4f} | {s['test auc']:.4f} | {s['test uauc']:.4f} | {note} |")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
