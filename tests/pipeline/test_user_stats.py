"""Tests of per-user statistics for selection: FFN activation features on tiny models of two
families, per-user task loss, and their cache beside the source bank."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

from puma_lightning.cli.config_loader import load_config
from puma_lightning.io.bank import PromptBank
from puma_lightning.models.backbone import FrozenLM
from puma_lightning.models.heads import build_head
from puma_lightning.models.templated_rows import TemplatedRows
from puma_lightning.models.tiny import build_tiny_model
from puma_lightning.pipeline import user_stats
from puma_lightning.pipeline.experiment import Experiment
from puma_lightning.pipeline import stat_models as stats
from puma_lightning.selection.ffn import normalise_bits
from puma_lightning.tasks import embedding_unit, init_prompts

ROOT = Path(__file__).resolve().parents[2]
ANSWERS = ["1", "2", "3", "4", "5"]


def frozen(name: str) -> FrozenLM:
    model, tok = build_tiny_model(name)
    return FrozenLM(model, tok, ANSWERS, name=name, fingerprint=name)


@pytest.mark.parametrize("name", ["tiny-llama", "tiny-gemma3"])
def test_ffn_features_shape_binary_normalised(name):
    lm = frozen(name)
    n_layers = len(lm.body.layers)
    width = lm.model.config.intermediate_size
    prompts = init_prompts(9, 1, lm.hidden_size, seed=1) * embedding_unit(lm.embedding_std())
    feats = stats.ffn_features(lm, prompts, n_layers=3, batch_size=4)
    assert feats.shape == (9, min(3, n_layers) * width) and feats.dtype == np.float32
    for row in feats:
        k = int((row > 0).sum())
        assert k > 0 and np.allclose(row[row > 0], 1 / np.sqrt(k)) and np.isclose(np.linalg.norm(row), 1.0)
    assert len({r.tobytes() for r in feats}) > 1  # prompts differ -> features differ
    # batching does not change a row; one layer gives the last layer's block
    assert np.array_equal(feats, stats.ffn_features(lm, prompts, batch_size=9))
    assert np.array_equal(stats.ffn_features(lm, prompts, n_layers=1), normalise_bits(feats[:, -width:] > 0))
    assert not any(m._forward_hooks or m._forward_pre_hooks for m in lm.modules())  # hooks removed


def test_ffn_features_match_gate_sign_and_use_bos():
    lm = frozen("tiny-llama")
    prompts = init_prompts(5, 1, lm.hidden_size, seed=2)
    captured = []
    last = lm.body.layers[-1].mlp
    handle = last.register_forward_pre_hook(lambda m, inp: captured.append(inp[0]))
    bos = lm.embed(torch.tensor([[lm.tokenizer.bos_token_id]]))
    with torch.no_grad():
        lm.body(inputs_embeds=torch.cat([bos.expand(5, 1, -1), prompts], 1), use_cache=False)
    handle.remove()
    gate_fires = (last.gate_proj(captured[0][:, -1]) > 0).numpy()
    feats = stats.ffn_features(lm, prompts, n_layers=1)
    assert np.array_equal(feats > 0, gate_fires)  # silu(gate) > 0 <=> gate > 0, last position, with BOS


@pytest.mark.parametrize("task", ["rating", "click"])
def test_per_row_loss_matches_head_loss(task):
    head = build_head(task)
    g = torch.Generator().manual_seed(0)
    logits = torch.randn(6, 5 if task == "rating" else 1, generator=g)
    label = torch.tensor([1.0, 2, 3, 4, 5, 3]) if task == "rating" else torch.tensor([0.0, 1, 1, 0, 1, 0])
    out = head(logits)
    assert torch.allclose(stats._heads_per_row_loss(head, logits, out, label).mean(), head.loss(logits, out, label), atol=1e-6)


@pytest.fixture(scope="module")
def experiment(tmp_path_factory):
    run = tmp_path_factory.mktemp("stats_run")
    cfg = load_config([ROOT / "configs" / "smoke.yaml"], [f"run_dir={run}", "data.n_users=12", "data.rows_per_user=6",
                                                        "selection=ffn_kmeans_loss", "selection.budget=5"])
    exp = Experiment(cfg)
    lm = exp.backbone("source")
    prompts = init_prompts(exp.table.n_users, 1, lm.hidden_size, seed=0)
    head = build_head(exp.table.task)
    head.init_bias(3.0)
    bank = PromptBank(prompts, list(exp.table.user_ids), lm.name, lm.fingerprint, head_state=head.state_dict())
    return exp, bank


def test_user_task_loss_is_mean_over_training_rows(experiment):
    exp, bank = experiment
    lm, table = exp.backbone("source"), exp.table
    prompts = bank.rows_for(table.user_ids)
    loss = stats.user_task_loss(lm, bank.head_state, prompts, table, exp.cfg)
    assert loss.shape == (table.n_users,) and np.all(np.isfinite(loss))
    # by hand for user 3: every training row on its own
    from puma_lightning.pipeline.builders import build_datamodule

    dm = build_datamodule(table, lm.tokenizer, exp.cfg, 4)
    data = dm.dataset("train")
    head = build_head(table.task)
    head.load_state_dict(bank.head_state)
    per_row = []
    with torch.no_grad():
        for i in range(len(data)):
            s = data[i]
            if s["user"] != 3:
                continue
            b = dm.collate([s])
            logits = lm.answer_logits(TemplatedRows.of(b), prompts[[3]])
            per_row.append(float(head.loss(logits, head(logits), b["label"])))
    assert loss[3] == pytest.approx(np.mean(per_row), rel=1e-4)


def test_ensure_user_stats_caches_by_bank(experiment, monkeypatch):
    exp, bank = experiment
    path = user_stats.stats_path(exp)
    path.unlink(missing_ok=True)
    first = user_stats.ensure_user_stats(exp, bank, ["loss"])
    assert set(first) == {"loss"} and path.is_file()
    both = user_stats.ensure_user_stats(exp, bank, ["loss", "ffn_features"])  # adds ffn, keeps loss
    assert np.array_equal(both["loss"], first["loss"]) and both["ffn_features"].shape[0] == exp.table.n_users

    def boom(*a, **k):
        raise AssertionError("recomputed a cached statistic")

    monkeypatch.setattr(stats, "user_task_loss", boom)
    monkeypatch.setattr(stats, "ffn_features", boom)
    again = user_stats.ensure_user_stats(exp, bank, ("ffn_features", "loss"))
    assert np.array_equal(again["ffn_features"], both["ffn_features"])  # bit-packed round trip is exact
    other = PromptBank(bank.prompts + 0.01, bank.user_ids, bank.model_name, bank.model_fingerprint, head_state=bank.head_state)
    with pytest.raises(AssertionError, match="recomputed"):
        user_stats.ensure_user_stats(exp, other, ["loss"])
    assert user_stats.ensure_user_stats(exp, bank, ()) == {}
    with pytest.raises(ValueError, match="unknown user statistics"):
        user_stats.ensure_user_stats(exp, bank, ["entropy"])


def test_selection_context_filled_only_for_needs(experiment):
    exp, bank = experiment
    ctx = user_stats.build_selection_context(exp, bank)  # ffn_kmeans_loss needs both
    assert ctx.loss is not None and ctx.ffn_features is not None and ctx.seed == exp.cfg.seed
    exp2 = Experiment(load_config([ROOT / "configs" / "smoke.yaml"], [f"run_dir={exp.run_dir}", "data.n_users=12",
                                                                      "data.rows_per_user=6", "selection=kmeans_fps"]))
    ctx2 = user_stats.build_selection_context(exp2, bank)
    assert ctx2.loss is None and ctx2.ffn_features is None


def test_every_optional_statistic_is_registered_once():
    from puma_lightning.pipeline.user_stats import STATISTICS, UserStatistic, register_statistic
    from puma_lightning.selection.registry import OPTIONAL_STATS

    assert set(STATISTICS) == set(OPTIONAL_STATS)
    with pytest.raises(ValueError, match="already registered"):
        register_statistic(UserStatistic("loss", lambda *a: None))
    with pytest.raises(ValueError, match="not an optional SelectionContext field"):
        register_statistic(UserStatistic("mood", lambda *a: None))


def test_the_selection_layer_imports_nothing_above_it():
    """Strategies read arrays; running models (pipeline, models, data) stays out of puma_lightning.selection."""
    import ast

    root = Path(__file__).resolve().parents[2] / "puma_lightning" / "selection"
    for path in root.glob("*.py"):
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            names = [a.name for a in node.names] if isinstance(node, ast.Import) else \
                [node.module or ""] if isinstance(node, ast.ImportFrom) else []
            for name in names:
                assert not name.startswith(("puma_lightning.pipeline", "puma_lightning.models", "puma_lightning.data")), \
                    f"{path.name} imports {name}"
