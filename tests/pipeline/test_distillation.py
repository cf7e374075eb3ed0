"""Distillation (``adapter.distill_items``): the source model's soft targets on items the selected users never
rated join the adapter's training rows, weighted against the task loss, and are paid for in PUMA's cost."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch

from puma_lightning.cli.config_loader import ConfigError, load_config
from puma_lightning.cli.main import main, setup_runtime
from puma_lightning.data.table import InteractionTable
from puma_lightning.models.heads import ClickHead, RatingHead
from puma_lightning.pipeline.distillation import teach, unrated_pairs, with_teacher_rows
from puma_lightning.pipeline.experiment import Experiment
from puma_lightning.tasks import Migration, TeacherRows

SMOKE = str(Path(__file__).resolve().parents[2] / "configs" / "smoke.yaml")
FAST = ["prompt.epochs=1", "adapter.epochs=1", "data.n_users=20", "data.rows_per_user=8", "selection.budget=8",
        "baselines.random_init=false", "baselines.full_retrain=false", "baselines.classic=false", "trainer.num_threads=1"]


def small_table() -> InteractionTable:
    users = np.array([0, 0, 0, 1, 1, 2])
    items = np.array([0, 1, 2, 0, 3, 1])
    n = len(users)
    return InteractionTable(user=users, item=items, label=np.array([4, 3, 5, 2, 1, 4], np.float32),
                            timestamp=np.arange(n, dtype=np.int64), split=np.zeros(n, np.int8),
                            user_ids=["a", "b", "c"], item_texts=[f"item {i}" for i in range(6)])


def test_unrated_pairs_are_unrated_distinct_seeded_and_capped():
    table = small_table()
    users, items = unrated_pairs(table, np.array([2, 0, 1]), per_user=2, seed=3)
    rated = {(int(u), int(i)) for u, i in zip(table.user, table.item)}
    assert not rated & set(zip(users.tolist(), items.tolist()))
    # items come from those in the table's rows (0..3); user 0 has rated 3 of them, so only one is left
    assert set(items.tolist()) <= {0, 1, 2, 3} and users.tolist() == [0, 1, 1, 2, 2] and items[0] == 3
    again = unrated_pairs(table, np.array([0, 1, 2]), per_user=2, seed=3)
    assert [a.tolist() for a in again] == [users.tolist(), items.tolist()]  # the order users are given in does not matter
    other = unrated_pairs(table, np.array([0, 1, 2]), per_user=1, seed=4)
    assert len(other[0]) == 3


def test_teacher_rows_are_appended_training_rows_and_keep_the_real_rows_offsets():
    table = small_table()
    cfg = load_config([SMOKE], ["prompt.residual=user_item_bias"])
    users, items = np.array([1, 2]), np.array([2, 3])
    grown, offsets = with_teacher_rows(cfg, table, users, items, np.array([3.5, 2.25], np.float32))
    from puma_lightning.pipeline.residual import bias_terms, row_offsets

    assert len(grown) == len(table) + 2 and grown.label[-2:].tolist() == [3.5, 2.25] and (grown.split[-2:] == 0).all()
    mu, bu, bi = bias_terms(cfg, table)
    assert np.allclose(offsets[: len(table)], row_offsets(cfg, table))  # fitted on the real rows only
    assert np.allclose(offsets[-2:], mu + bu[users] + bi[items])
    assert with_teacher_rows(load_config([SMOKE], []), table, users, items, np.zeros(2, np.float32))[1] is None


def test_soft_losses_reduce_to_the_hard_losses_on_one_hot_targets():
    torch.manual_seed(0)
    head = RatingHead()
    logits, label = torch.randn(6, 5), torch.tensor([1.0, 2, 3, 4, 5, 3])
    output = head(logits)
    one_hot = torch.nn.functional.one_hot(label.long() - 1, 5).float()
    assert torch.allclose(head.soft_loss(logits, output, label, one_hot), head.loss(logits, output, label))
    soft = torch.softmax(torch.randn(6, 5), -1)
    assert not torch.allclose(head.soft_loss(logits, output, label, soft), head.loss(logits, output, label))
    click = ClickHead()
    out = click(torch.randn(4, 1))
    p = torch.tensor([0.1, 0.9, 0.5, 0.3])
    assert torch.allclose(click.soft_loss(None, out, p, p[:, None]),
                          torch.nn.functional.binary_cross_entropy_with_logits(out, p))


def test_migration_loss_weights_the_teacher_rows_against_the_real_rows():
    torch.manual_seed(0)
    head = RatingHead()
    dist = torch.softmax(torch.randn(3, 5), -1)
    module = Migration(torch.nn.Identity(), head, "rating", torch.zeros(4, 1, 2), torch.nn.Identity(),
                       teacher=TeacherRows(first_row=10, distribution=dist, weight=0.25))
    logits = torch.randn(5, 5)
    output = head(logits)
    batch = {"row": torch.tensor([3, 11, 0, 12, 10]), "label": torch.tensor([4.0, 3.3, 2.0, 1.7, 4.6])}
    real, taught = torch.tensor([0, 2]), torch.tensor([1, 3, 4])
    expected = head.loss(logits[real], output[real], batch["label"][real]) + 0.25 * head.soft_loss(
        logits[taught], output[taught], batch["label"][taught], dist[torch.tensor([1, 2, 0])])
    assert torch.allclose(module.training_loss(batch, logits, output), expected)
    only_real = {"row": torch.tensor([0, 1]), "label": torch.tensor([4.0, 2.0])}
    assert torch.allclose(module.training_loss(only_real, logits[:2], output[:2]), head.loss(logits[:2], output[:2],
                                                                                           only_real["label"]))
    plain = Migration(torch.nn.Identity(), head, "rating", torch.zeros(4, 1, 2), torch.nn.Identity())
    assert torch.allclose(plain.training_loss(batch, logits, output), head.loss(logits, output, batch["label"]))


@pytest.mark.slow
def test_fit_with_distillation_trains_on_teacher_rows_and_pays_for_them(tmp_path):
    run = tmp_path / "run"
    assert main(["fit", "--config", SMOKE, f"run_dir={run}", *FAST, "adapter.distill_items=3", "prompt.residual=user_item_bias"]) == 0
    record = json.loads((run / "puma" / "stage.json").read_text())
    selected = json.loads((run / "selection.json").read_text())["num_selected"]
    assert record["teacher_rows"] == 3 * selected and record["teacher_s"] > 0
    cfg = load_config([SMOKE], [f"run_dir={run}", *FAST, "prompt.residual=user_item_bias"])
    setup_runtime(cfg)
    exp = Experiment(cfg)
    table = exp.table
    chosen = np.array([table.user_ids.index(u) for u in json.loads((run / "selection.json").read_text())["user_ids"]])
    real_rows = len(table.rows("train", chosen))
    assert record["train_samples"] == real_rows + record["teacher_rows"]  # one adapter epoch over both
    # the teacher is the source stage as served: on pairs that are test rows it gives the source stage's predictions
    test = table.rows("test")[:7]
    prediction, distribution, _ = teach(exp, table.user[test], table.item[test])
    source = np.load(run / "source" / "test_predictions.npz")
    expected = source["prediction"][np.searchsorted(source["row"], test)]
    assert np.allclose(prediction, expected, atol=1e-4)
    assert distribution.shape == (7, 5) and np.allclose(distribution.sum(1), 1, atol=1e-5)


@pytest.mark.parametrize("override", ["adapter.distill_items=-1", "adapter.distill_weight=-0.5"])
def test_bad_distillation_settings_name_the_key(override):
    with pytest.raises(ConfigError, match=override.split("=")[0].replace(".", r"\.")):
        load_config([SMOKE], [override])
