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
- ``item_text_embedding``: the mean input embedding of the item text's tokens (no model pass: what the words say);
- ``*_topK``: a channel's top-K principal directions, whitened; ``*_kmeansC``: one-hot k-means clusters of its whitened
  top-64 view (item structure found without ratings); ``*_shared_rank8``: a basis shared by all users (see
  :func:`shared_basis_fit`);
- ``item_text_embedding_<weighting>``: the same mean with each token weighted by the share of the catalogue's items whose
  text holds it (``df``, ``sqrt_df``), or only the tokens that at least 3 items share (``shared3``): does stressing
  the words items have in common (genre, mood) over their titles' words help a per-user learner?
- ``attributes``: the one-hot item attributes (the ``attribute_ridge`` reference, as a check of the fit).

Every row reports train/valid/test RMSE and the captured share ``(bias - rmse) / (bias - attribute_ridge)`` on test.
One forward and a few backward passes per item (seconds to minutes on a CPU). Printed under a ``machine: ...`` line.
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path
from typing import Any, Sequence

import numpy as np

from puma_lightning.machine import describe_machine, machine_record

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


SHARED_RANKS = (8, 16, 32, 64)

ITEM_WORD_WEIGHTS = {"df": lambda share, count: share, "sqrt_df": lambda share, count: share ** 0.5,
                     "shared3": lambda share, count: float(count >= 3)}
"""Token weightings of ``item_text_embedding_<name>``: a token's weight from the share (and count) of the catalogue's
rated items whose text holds it."""


def weighted_item_embeddings(lm: Any, table: Any, max_tokens: int, weight: Any) -> np.ndarray:
    """``[n_items, d]``: each item text's token embeddings averaged with ``weight(share, count)`` per token, where
    ``share``/``count`` are the share/number of rated items whose (cut) text holds the token; zeros where all weigh 0."""
    import torch

    from puma_lightning.data.encoding import item_text_token_ids

    ids = [item_text_token_ids(lm.tokenizer, text, max_tokens) for text in table.item_texts]
    rated = np.unique(table.item)
    counts: dict[int, int] = {}
    for i in rated:
        for token in set(ids[i]):
            counts[token] = counts.get(token, 0) + 1
    tokens = sorted({t for item in ids for t in item})
    with torch.no_grad():
        table_rows = lm.embed(torch.as_tensor(tokens, device=lm.device)).float().cpu().numpy()
    row = {t: k for k, t in enumerate(tokens)}
    out = np.zeros((len(ids), table_rows.shape[1]))
    for i, item in enumerate(ids):
        w = np.array([weight(counts.get(t, 0) / len(rated), counts.get(t, 0)) for t in item], dtype=np.float64)
        if len(item) and w.sum() > 0:
            out[i] = (w[:, None] * table_rows[[row[t] for t in item]]).sum(0) / w.sum()
    return out
"""Ranks of the shared principal-direction views of each channel."""


def top_components(x: np.ndarray, items: np.ndarray, k: int) -> np.ndarray:
    """``x`` projected on its top ``k`` principal directions over ``items``, scaled to unit variance each."""
    centred = x - x[items].mean(0)
    _, s, vt = np.linalg.svd(centred[items], full_matrices=False)
    z = centred @ vt[:k].T
    return z / (z[items].std(0) + 1e-12)


KMEANS_CLUSTERS = (10, 25)
"""Cluster counts of the k-means views (10 genres, 25 one-hot attribute columns)."""


def kmeans_onehot(x: np.ndarray, items: np.ndarray, clusters: int, seed: int) -> np.ndarray:
    """One-hot k-means cluster of every item (clusters fitted on ``items``): item structure found without ratings."""
    from sklearn.cluster import KMeans

    labels = KMeans(clusters, n_init=10, random_state=seed).fit_predict(x[items])
    out = np.zeros((len(x), clusters))
    out[items, labels] = 1.0
    return out


def decodability(table: Any, x: np.ndarray, folds: int = 5) -> dict[str, float]:
    """Per attribute, the 5-fold cross-validated accuracy of a ridge classifier reading the item's category from ``x``
    over the rated items (chance: the majority share): whether the channel holds what the item text says."""
    from sklearn.linear_model import RidgeClassifierCV
    from sklearn.model_selection import cross_val_score

    items = np.unique(table.item)
    out = {}
    for name, values in table.meta.get("item_attributes", {}).items():
        y = np.asarray(values)[items]
        score = cross_val_score(RidgeClassifierCV(alphas=np.logspace(-3, 4, 15)), x[items], y, cv=folds).mean()
        out[name] = round(float(score), 3)
        out[f"{name}_chance"] = round(float(np.bincount(y).max() / len(y)), 3)
    return out


SHARED_BASIS = ((8, 0.1, 0.3, 0.03), (8, 1.0, 0.05, 0.01))
"""(rank k, penalty, init std, Adam lr) of the shared-basis fits: each user's change is ``z_u . (A f_i)``, ``A`` [k, f]
shared by all users (the first fits on the attributes alone, the second holds the LLM features back from overfitting)."""


def shared_basis_fit(table: Any, features: np.ndarray, base: np.ndarray, rank: int, penalty: float, init: float,
                     lr: float, steps: int = 800, seed: int = 0) -> dict[str, Any]:
    """A first-order prompt with a shared low-rank basis: ``delta_u = A^T z_u`` (``A`` [k, f] learned from every user's
    training rows, ``z_u`` [k] per user), so the change is ``z_u . (A f_i)``: full-batch Adam on the training rows'
    squared error plus ``penalty`` x (mean squared code norm + mean squared basis entry); train/valid/test RMSE at the
    step with the lowest validation RMSE (checked every 20 steps)."""
    import torch

    gen = torch.Generator().manual_seed(seed)
    x = features - features[np.unique(table.item)].mean(0)
    x = torch.as_tensor(x / (np.sqrt((x ** 2).sum(1).mean()) + 1e-12), dtype=torch.float32)
    width = x.shape[1]
    label = torch.as_tensor(table.label, dtype=torch.float32)
    base_t = torch.as_tensor(base, dtype=torch.float32)
    user, item = torch.as_tensor(table.user), torch.as_tensor(table.item)
    split = {s: torch.as_tensor(table.rows(s)) for s in ("train", "valid", "test")}
    a = (torch.randn(rank, width, generator=gen) * init).requires_grad_(True)
    z = (torch.randn(table.n_users, rank, generator=gen) * init).requires_grad_(True)
    opt = torch.optim.Adam([a, z], lr=lr)

    def predict(rows: torch.Tensor) -> torch.Tensor:
        return (base_t[rows] + (z[user[rows]] * (x[item[rows]] @ a.T)).sum(-1)).clamp(1.0, 5.0)

    def rmse(rows: torch.Tensor) -> float:
        with torch.no_grad():
            return float(((predict(rows) - label[rows]) ** 2).mean().sqrt())

    best = (rmse(split["valid"]), 0, {s: rmse(r) for s, r in split.items()})
    tr = split["train"]
    for step in range(1, steps + 1):
        opt.zero_grad()
        loss = ((predict(tr) - label[tr]) ** 2).mean() + penalty * ((z ** 2).sum() / table.n_users + (a ** 2).sum() / width)
        loss.backward()
        opt.step()
        if step % 20 == 0:
            score = rmse(split["valid"])
            if score < best[0]:
                best = (score, step, {s: rmse(r) for s, r in split.items()})
    return {"step": best[1], **{s: round(v, 5) for s, v in best[2].items()}}


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
    from puma_lightning.cli.probe import load_probe
    from puma_lightning.pipeline.builders import initial_prompts
    from puma_lightning.pipeline.classic import references_for
    from puma_lightning.pipeline.classic_attributes import attribute_columns

    probe = load_probe(args.config, args.overrides, "prompt_reach")
    cfg, exp, dtypes = probe.cfg, probe.exp, probe.dtypes
    table = exp.table
    lm = exp.backbone(args.model)
    start = time.perf_counter()
    prompts, _ = initial_prompts(cfg, lm, table)
    p0 = prompts.float().mean(0).to(lm.device)  # the neutral prompt of the ridge readout
    dm = exp.datamodule(lm, cfg.prompt.batch_size)
    cache = Path(args.out) / "features.npz" if args.out else None
    key = np.array(json.dumps([list(args.config), list(args.overrides), args.model, args.directions]))
    feats = None
    if cache is not None and cache.is_file():  # the features of an earlier run of the same command (seconds to analyse)
        stored = dict(np.load(cache))
        if str(stored.pop("command", "")) == str(key):
            feats = stored
    if feats is None:
        feats = item_features(lm, dm, table, p0, args.directions, args.batch)
        if cache is not None:
            cache.parent.mkdir(parents=True, exist_ok=True)
            np.savez(cache, command=key, **feats)
    seconds = time.perf_counter() - start
    from puma_lightning.pipeline.builders import item_text_embeddings

    feats["item_text_embedding"] = item_text_embeddings(lm, table.item_texts, int(cfg.data.max_item_tokens or 32)).numpy()
    for name, weight in ITEM_WORD_WEIGHTS.items():
        feats[f"item_text_embedding_{name}"] = weighted_item_embeddings(lm, table, int(cfg.data.max_item_tokens or 32), weight)
    cols, width = attribute_columns(table)
    onehot = np.zeros((table.n_items, width))
    onehot[np.arange(table.n_items)[:, None], cols] = 1.0
    feats["attributes"] = onehot
    base = probe.bias_base()
    label = table.label.astype(np.float64)
    refs = {name: references_for(table)[name].fit(table, int(cfg.seed))[0] for name in ("user_item_bias", "attribute_ridge")}
    ref_rmse = {name: {s: round(float(np.sqrt(np.mean((p[table.rows(s)] - label[table.rows(s)]) ** 2))), 5)
                       for s in ("train", "valid", "test")} for name, p in refs.items()}
    rows = []
    channels = dict(feats)
    for name in ("expected_rating", "hidden_pcs", "hidden_state", "item_text_embedding"):  # a shared low-rank view first: the top-k principal
        for k in SHARED_RANKS:  # directions over items, then the per-user ridge in that k-dimensional space
            channels[f"{name}_top{k}"] = top_components(feats[name], np.unique(table.item), k)
    for name in ("expected_rating", "hidden_state", "item_text_embedding"):  # unsupervised item structure: k-means
        for clusters in KMEANS_CLUSTERS:  # clusters of the whitened top-64 view, one-hot
            channels[f"{name}_kmeans{clusters}"] = kmeans_onehot(top_components(feats[name], np.unique(table.item), 64),
                                                                 np.unique(table.item), clusters, int(cfg.seed))
    for name, x in channels.items():
        r = per_user_ridge(table, x, base)
        r["decodes"] = decodability(table, x)
        bias, ridge = ref_rmse["user_item_bias"], ref_rmse["attribute_ridge"]
        r.update(channel=name, width=int(x.shape[1]),
                 captured_valid=round((bias["valid"] - r["valid"]) / (bias["valid"] - ridge["valid"]), 3),
                 captured_test=round((bias["test"] - r["test"]) / (bias["test"] - ridge["test"]), 3))
        rows.append(r)
    for name in ("hidden_state", "item_text_embedding", "attributes"):
        for rank, penalty, init, lr in SHARED_BASIS:
            r = shared_basis_fit(table, feats[name], base, rank, penalty, init, lr)
            bias, ridge = ref_rmse["user_item_bias"], ref_rmse["attribute_ridge"]
            r.update(channel=f"{name}_shared_rank{rank}", width=int(feats[name].shape[1]), penalty=penalty, decodes={},
                     captured_valid=round((bias["valid"] - r["valid"]) / (bias["valid"] - ridge["valid"]), 3),
                     captured_test=round((bias["test"] - r["test"]) / (bias["test"] - ridge["test"]), 3))
            rows.append(r)
    machine = describe_machine(dtypes.text())
    lines = [machine, "", f"config {args.config} {' '.join(args.overrides)}; features in {seconds:.0f} s", "",
             "| channel | features | train RMSE | valid RMSE | test RMSE | captured (valid) | captured (test) | penalty "
             "| decodes genre / mood / decade (chance) |", "|---|---|---|---|---|---|---|---|---|"]
    lines += [f"| {r['channel']} | {r['width']} | {r['train']:.4f} | {r['valid']:.4f} | {r['test']:.4f} | "
              f"{r['captured_valid']:+.2f} | {r['captured_test']:+.2f} | {r['penalty']:g} | "
              + " / ".join(f"{r['decodes'].get(a, float('nan')):.2f} ({r['decodes'].get(a + '_chance', float('nan')):.2f})"
                           for a in ("genre", "mood", "decade")) + " |" for r in rows]
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
