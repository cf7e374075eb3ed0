"""How far a user's soft prompt can reach an item's rating, to first order: a per-user ridge on prompt-gradient features.

    python benchmarks/prompt_reach.py --config configs/personal.yaml [--directions 16] [key=value ...]

A prompt ``p_u = p0 + delta_u`` changes a row's output by ``delta_u . g(i)`` to first order, where ``g(i)`` is the
gradient of that output with respect to the prompt at ``p0`` (the mean starting prompt, as the neutral readout uses) for
item ``i``'s template. So the best a per-user prompt can do through a channel, for small moves, is a per-user linear
model on ``g(i)``: a per-user ridge of the bias model's residual on those features, its penalty chosen on the
validation rows. Computed here (in dual form: each user has a handful of rows) for the channels the head can read:

- ``expected_rating``: ``g`` = gradient of the softmax-expected rating over the 5 answer logits (one head);
- ``logits_union``: the 5 answer logits' gradients side by side (any head on the logits, per user: an upper bound);
- ``hidden_pcs``: the gradients of the answer hidden state projected on its top ``--directions`` principal directions
  over items (a readout of the hidden state in those directions, per user: an upper bound);
- ``hidden_state``: the neutral hidden state itself (no prompt involved: what a per-user readout of it could learn,
  i.e. whether the model's reading of the item holds the attributes at the answer position);
- ``attributes``: the one-hot item attributes (the ``attribute_ridge`` reference, as a check of the fit).

Every row reports train/valid/test RMSE and the captured share ``(bias - rmse) / (bias - attribute_ridge)`` on test.
One forward and a few backward passes per item (seconds to minutes on a CPU). Printed under a ``machine: ...`` line.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path
from typing import Any, Sequence

import numpy as np

REPO = Path(__file__).resolve().parents[1]
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))

from benchmarks._machine import BackboneDtypes, describe_machine, machine_record  # noqa: E402

PENALTIES = tuple(10.0 ** k for k in np.arange(-3, 4.01, 0.5))
"""Ridge penalties, relative to the mean diagonal of each channel's item kernel."""


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--config", action="append", required=True, metavar="FILE")
    p.add_argument("--model", choices=("source", "target"), default="source")
    p.add_argument("--directions", type=int, default=16, help="principal directions of the hidden state to differentiate")
    p.add_argument("--batch", type=int, default=50)
    p.add_argument("--out", default=None, help="write reach.json here")
    p.add_argument("overrides", nargs="*", metavar="key=value")
    return p.parse_args(argv)


def item_features(lm: Any, dm: Any, table: Any, p0: Any, directions: int, batch: int) -> dict[str, np.ndarray]:
    """Per item ``[n_items, f]``: the channels' prompt-gradient features and the neutral hidden state."""
    import torch

    from puma_lightning.data.datamodule import PromptDataset
    from puma_lightning.models.templated_rows import TemplatedRows

    first_row = {}
    for r, i in enumerate(table.item):
        first_row.setdefault(int(i), r)
    items = sorted(first_row)
    data = PromptDataset(table, np.array([first_row[i] for i in items]), dm.encoder, None)
    values = torch.arange(1, lm.num_answers + 1, dtype=torch.float32)
    grads_e, grads_k, hidden_all, batches = [], [], [], []
    for start in range(0, len(data), batch):
        b = dm.collate([data[k] for k in range(start, min(start + batch, len(data)))])
        rows = TemplatedRows.of(b)
        n = b["input_ids"].shape[0]
        prompt = p0[None].expand(n, -1, -1).clone().requires_grad_(True)
        hidden = lm.answer_hidden(rows, prompt)
        logits = lm.project_answers(hidden).float()
        expected = (torch.softmax(logits, -1) * values).sum(-1)
        (g,) = torch.autograd.grad(expected.sum(), prompt, retain_graph=True)
        grads_e.append(g.reshape(n, -1).float())
        per_k = []
        for k in range(logits.shape[1]):
            (g,) = torch.autograd.grad(logits[:, k].sum(), prompt, retain_graph=True)
            per_k.append(g.reshape(n, -1).float())
        grads_k.append(torch.cat(per_k, 1))
        hidden_all.append(hidden.detach().float())
        batches.append((rows, n))
    hidden_mat = torch.cat(hidden_all)
    centred = hidden_mat - hidden_mat.mean(0)
    _, _, vt = torch.linalg.svd(centred, full_matrices=False)
    pcs = vt[:directions]  # [k, d]
    grads_h = []
    for rows, n in batches:
        prompt = p0[None].expand(n, -1, -1).clone().requires_grad_(True)
        hidden = lm.answer_hidden(rows, prompt).float()
        proj = hidden @ pcs.T.to(hidden.dtype)
        per_j = []
        for j in range(proj.shape[1]):
            (g,) = torch.autograd.grad(proj[:, j].sum(), prompt, retain_graph=True)
            per_j.append(g.reshape(n, -1).float())
        grads_h.append(torch.cat(per_j, 1))
    out = {"expected_rating": torch.cat(grads_e), "logits_union": torch.cat(grads_k), "hidden_pcs": torch.cat(grads_h),
           "hidden_state": hidden_mat}
    full = {}
    for name, feats in out.items():
        arr = np.zeros((table.n_items, feats.shape[1]))
        arr[items] = feats.numpy()
        full[name] = arr
    return full


def per_user_ridge(table: Any, features: np.ndarray, base: np.ndarray) -> dict[str, Any]:
    """Per-user kernel ridge of ``label - base`` on the items' ``features``, penalty chosen on valid; RMSE per split."""
    x = features - features[np.unique(table.item)].mean(0)
    x = x / (np.sqrt((x ** 2).sum(1).mean()) + 1e-12)  # mean squared norm 1: the penalties mean the same per channel
    label = table.label.astype(np.float64)
    train = table.rows("train")
    preds = np.zeros((len(PENALTIES), len(table)))
    for u in range(table.n_users):
        tr = train[table.user[train] == u]
        rows = np.flatnonzero(table.user == u)
        xt, xr = x[table.item[tr]], x[table.item[rows]]
        k = xt @ xt.T
        target = label[tr] - base[tr]
        for p, lam in enumerate(PENALTIES):
            alpha = np.linalg.solve(k + lam * np.eye(len(tr)), target)
            preds[p, rows] = base[rows] + (xr @ xt.T) @ alpha
    preds = np.clip(preds, 1.0, 5.0)

    def rmse(p: np.ndarray, split: str) -> float:
        r = table.rows(split)
        return float(np.sqrt(np.mean((p[r] - label[r]) ** 2)))

    best = int(np.argmin([rmse(p, "valid") for p in preds]))
    return {"penalty": float(PENALTIES[best]), **{s: round(rmse(preds[best], s), 5) for s in ("train", "valid", "test")}}


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    import torch

    from puma_lightning.cli.config_loader import load_config
    from puma_lightning.cli.main import setup_runtime
    from puma_lightning.pipeline.classic import fit_bias_model, references_for
    from puma_lightning.pipeline.classic_attributes import attribute_columns
    from puma_lightning.pipeline.experiment import Experiment
    from puma_lightning.pipeline.builders import initial_prompts

    cfg = load_config(list(args.config), [*args.overrides, "seeds=null", "source_dir=null", "run_dir=/tmp/prompt_reach"])
    setup_runtime(cfg)
    dtypes = BackboneDtypes()
    exp = dtypes.watch(Experiment(cfg))
    table = exp.table
    lm = exp.backbone(args.model)
    start = time.perf_counter()
    prompts, _ = initial_prompts(cfg, lm, table)
    p0 = prompts.float().mean(0).to(lm.device)  # the neutral prompt of the ridge readout
    dm = exp.datamodule(lm, cfg.prompt.batch_size)
    feats = item_features(lm, dm, table, p0, args.directions, args.batch)
    seconds = time.perf_counter() - start
    cols, width = attribute_columns(table)
    onehot = np.zeros((table.n_items, width))
    onehot[np.arange(table.n_items)[:, None], cols] = 1.0
    feats["attributes"] = onehot
    mu, bu, bi, _ = fit_bias_model(table)
    base = mu + bu[table.user] + bi[table.item]
    label = table.label.astype(np.float64)
    refs = {name: references_for(table)[name].fit(table, int(cfg.seed))[0] for name in ("user_item_bias", "attribute_ridge")}
    ref_rmse = {name: {s: round(float(np.sqrt(np.mean((p[table.rows(s)] - label[table.rows(s)]) ** 2))), 5)
                       for s in ("train", "valid", "test")} for name, p in refs.items()}
    rows = []
    for name, x in feats.items():
        r = per_user_ridge(table, x, base)
        bias, ridge = ref_rmse["user_item_bias"], ref_rmse["attribute_ridge"]
        r.update(channel=name, width=int(x.shape[1]),
                 captured_valid=round((bias["valid"] - r["valid"]) / (bias["valid"] - ridge["valid"]), 3),
                 captured_test=round((bias["test"] - r["test"]) / (bias["test"] - ridge["test"]), 3))
        rows.append(r)
    machine = describe_machine(dtypes.text())
    lines = [machine, "", f"config {args.config} {' '.join(args.overrides)}; features in {seconds:.0f} s", "",
             "| channel | features | train RMSE | valid RMSE | test RMSE | captured (valid) | captured (test) | penalty |",
             "|---|---|---|---|---|---|---|---|"]
    lines += [f"| {r['channel']} | {r['width']} | {r['train']:.4f} | {r['valid']:.4f} | {r['test']:.4f} | "
              f"{r['captured_valid']:+.2f} | {r['captured_test']:+.2f} | {r['penalty']:g} |" for r in rows]
    lines += ["", "References: " + "; ".join(f"{n} " + ", ".join(f"{s} {v:.4f}" for s, v in d.items()) for n, d in ref_rmse.items())]
    print("\n".join(lines))
    if args.out:
        from puma_lightning.io.atomic import atomic_write_text

        Path(args.out).mkdir(parents=True, exist_ok=True)
        atomic_write_text(Path(args.out) / "reach.json", json.dumps(
            {"machine": machine_record(dtypes.text()), "config": args.config, "overrides": args.overrides, "rows": rows,
             "references": ref_rmse, "feature_seconds": round(seconds, 1)}, indent=1))
        atomic_write_text(Path(args.out) / "reach.md", "\n".join(lines) + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
