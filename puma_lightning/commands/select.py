"""The ``select`` command: run only the user selection of an experiment and explain it.

Trains (or reuses) the source stage, computes the per-user statistics the strategy needs (cached
beside the source bank), runs :meth:`Experiment.select` (``<run_dir>/selection.json``) and writes
``selection_summary.md`` (per-cluster counts; label variance, and loss when available, of the
selected users against all users) and ``selection.png`` (prompts in 2-D by PCA, selected users
highlighted).
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

import numpy as np
from omegaconf import DictConfig, OmegaConf

from puma_lightning.commands.arguments import Arguments
from puma_lightning.io.atomic import atomic_write_text, atomic_write_with
from puma_lightning.pipeline.distributed import on_rank_zero
from puma_lightning.pipeline.run_dir import RunDir

log = logging.getLogger(__name__)

QUANTILES = (0.0, 0.1, 0.25, 0.5, 0.75, 0.9, 1.0)


def _distribution_rows(name: str, values: np.ndarray, selected: np.ndarray) -> list[str]:
    """Markdown rows comparing the distribution of ``values`` over all users and the selected ones."""
    rows = []
    for label, v in (("all", values), ("selected", values[selected])):
        v = v[np.isfinite(v)]
        if v.size == 0:
            rows.append(f"| {name} | {label} | 0 |" + " n/a |" * (len(QUANTILES) + 1))
            continue
        q = np.quantile(v, QUANTILES)
        rows.append(f"| {name} | {label} | {v.size} | {v.mean():.4f} | " + " | ".join(f"{x:.4f}" for x in q) + " |")
    return rows


def selection_summary(record: dict[str, Any], users: np.ndarray, variance: np.ndarray, train_counts: np.ndarray,
                      loss: np.ndarray | None = None) -> str:
    """Markdown summary of one selection (what ran, per-cluster counts, distributions)."""
    info = record.get("info", {})
    lines = [
        f"# Selection: {record['strategy']}",
        "",
        f"- budget {record['budget']}, selected {record['num_selected']} of {len(variance)} users"
        f" ({int((train_counts > 0).sum())} with training rows), seed {record.get('seed', 'n/a')}",
        f"- training rows of the selected users: {int(train_counts[users].sum())} of {int(train_counts.sum())}",
        "- parameters: " + ", ".join(f"{k}={v}" for k, v in record.get("params", {}).items()) if record.get("params") else "- parameters: none",
        f"- seconds: {record.get('seconds', 'n/a')}",
    ]
    if "allocation" in info:
        lines.append(f"- allocation: {info['allocation']} (random top-up {info.get('n_random_topup', 0)})")
    if "cluster_sizes" in info:
        sizes, picked = info["cluster_sizes"], info.get("selected_per_cluster", [])
        lines += ["", "## Per cluster", "", "| cluster | users | selected | share of cluster |", "|---|---|---|---|"]
        for c, size in enumerate(sizes):
            k = picked[c] if c < len(picked) else 0
            lines.append(f"| {c} | {size} | {k} | {k / size:.3f} |" if size else f"| {c} | 0 | 0 | n/a |")
        lines.append(f"| all | {sum(sizes)} | {sum(picked)} | {sum(picked) / max(sum(sizes), 1):.3f} |")
    head = "| statistic | users | n | mean | " + " | ".join(f"q{int(q * 100)}" for q in QUANTILES) + " |"
    lines += ["", "## Distributions (selected vs all)", "", head, "|" + "---|" * (4 + len(QUANTILES))]
    lines += _distribution_rows("label variance", np.asarray(variance, dtype=np.float64), users)
    if loss is not None:
        lines += _distribution_rows("task loss", np.asarray(loss, dtype=np.float64), users)
    return "\n".join(lines) + "\n"


def plot_selection(path: Path, prompts: np.ndarray, users: np.ndarray, title: str) -> None:
    """PNG of the prompts projected on their first two principal axes, selected users highlighted."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from puma_lightning.selection.allocation import pca

    xy = pca(prompts, 2)
    if xy.shape[1] < 2:
        xy = np.concatenate([xy, np.zeros((xy.shape[0], 1), np.float32)], axis=1)
    mask = np.zeros(len(xy), dtype=bool)
    mask[users] = True
    fig, ax = plt.subplots(figsize=(6, 5), dpi=110)
    ax.scatter(xy[~mask, 0], xy[~mask, 1], s=6, c="0.7", label=f"not selected ({int((~mask).sum())})", linewidths=0)
    ax.scatter(xy[mask, 0], xy[mask, 1], s=12, c="tab:red", label=f"selected ({int(mask.sum())})", linewidths=0)
    ax.set_xlabel("PC 1")
    ax.set_ylabel("PC 2")
    ax.set_title(title)
    ax.legend(loc="best", fontsize=8)
    fig.tight_layout()
    on_rank_zero(lambda: atomic_write_with(path, lambda tmp: fig.savefig(tmp, format="png")))
    plt.close(fig)


def run_select(cfg: DictConfig) -> None:
    """Select users for ``cfg`` and write ``selection.json``, ``selection_summary.md``, ``selection.png``."""
    from puma_lightning.io.bank import PromptBank
    from puma_lightning.pipeline.experiment import Experiment
    from puma_lightning.pipeline.user_stats import ensure_user_stats
    from puma_lightning.selection import strategy_class

    exp = Experiment(cfg)
    exp.pretrain("source", "source")
    bank = PromptBank.load(exp.stage_dir("source") / "bank")
    node = OmegaConf.to_container(cfg.selection, resolve=True)
    needs = strategy_class(node).needs
    stats = ensure_user_stats(exp, bank, needs)  # computed once, cached beside the bank; select() reads it
    selection = exp.select(bank)
    record, users = dict(selection["record"]), np.asarray(selection["users"], dtype=np.int64)
    record.setdefault("seed", int(node["seed"]) if node.get("seed") is not None else int(cfg.seed))
    table = exp.table
    run_dir = RunDir.of(cfg).path
    loss = stats.get("loss")
    if loss is None and "loss" in _cached_names(exp, bank):  # shown when already cached; never computed just for this
        loss = ensure_user_stats(exp, bank, ("loss",)).get("loss")
    summary = selection_summary(record, users, table.label_variance(), table.train_counts(), loss)
    on_rank_zero(lambda: atomic_write_text(run_dir / "selection_summary.md", summary))
    prompts = bank.rows_for(table.user_ids).reshape(table.n_users, -1).numpy()
    plot_selection(run_dir / "selection.png", prompts, users,
                   f"{record['strategy']}: {len(users)} of {table.n_users} users")
    print(summary)
    print(f"wrote {run_dir / 'selection.json'}, {run_dir / 'selection_summary.md'}, {run_dir / 'selection.png'}")


def _cached_names(exp: Any, bank: Any) -> set[str]:
    """Statistics already cached for this bank and data (cheap: reads the cache, computes nothing)."""
    from puma_lightning.pipeline.user_stats import bank_sha256, data_sha256, read_cache, stats_path

    return set(read_cache(stats_path(exp), {"bank_sha256": bank_sha256(bank), "data_sha256": data_sha256(exp)})[0])


def run(cfg: DictConfig, run_dir: Path, args: Arguments) -> None:
    """The command: :func:`run_select` on the loaded config."""
    run_select(cfg)
