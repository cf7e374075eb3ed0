"""The levers of prompt tuning: lazy row-wise AdamW, warmup, early stopping, item-text initialisation,
a per-user bias, and one prompt shared by every user."""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest
import torch

from puma_lightning.cli.config_loader import ConfigError, load_config
from puma_lightning.cli.main import main
from puma_lightning.models.heads import build_head
from puma_lightning.tasks import PromptTuning
from puma_lightning.tasks.optim import LazyAdamW, build_optimizer, warmup_cosine

SMOKE = str(Path(__file__).resolve().parents[2] / "configs" / "smoke.yaml")
FAST = ["prompt.epochs=1", "adapter.epochs=1", "data.n_users=20", "data.rows_per_user=8", "selection.budget=8",
        "baselines.random_init=false", "baselines.classic=false"]


def test_lazy_adamw_leaves_rows_without_gradient_untouched():
    torch.manual_seed(0)
    p = torch.nn.Parameter(torch.randn(4, 2, 3))
    opt = LazyAdamW([{"params": [p], "lr": 0.1, "weight_decay": 0.1, "lazy": True}])
    p.grad = torch.randn_like(p)  # every row gets momentum
    opt.step()
    frozen = p.detach()[1:].clone()
    moments = opt.state[p]["exp_avg"][1:].clone()
    for _ in range(3):  # now only row 0 is in the batch
        p.grad = torch.zeros_like(p)
        p.grad[0] = torch.randn(2, 3)
        opt.step()
    assert torch.equal(p.detach()[1:], frozen) and torch.equal(opt.state[p]["exp_avg"][1:], moments)
    assert opt.state[p]["step"].tolist() == [4, 1, 1, 1]


def test_lazy_adamw_equals_adamw_when_every_row_has_a_gradient():
    torch.manual_seed(1)
    a = torch.nn.Parameter(torch.randn(5, 1, 4))
    b = torch.nn.Parameter(a.detach().clone())
    lazy = build_optimizer("lazy_adamw", [{"params": [a], "lr": 0.05, "weight_decay": 0.01, "lazy": True}])
    plain = build_optimizer("adamw", [{"params": [b], "lr": 0.05, "weight_decay": 0.01, "lazy": True}])
    for _ in range(5):
        g = torch.randn_like(a)
        a.grad, b.grad = g.clone(), g.clone()
        lazy.step()
        plain.step()
    assert torch.allclose(a, b, atol=1e-6)


def test_plain_adamw_moves_rows_that_had_no_gradient():
    """Why the lazy variant exists: AdamW's momentum and decay move a user's prompt while the user is absent."""
    p = torch.nn.Parameter(torch.ones(3, 1, 2))
    opt = build_optimizer("adamw", [{"params": [p], "lr": 0.1, "weight_decay": 0.1, "lazy": True}])
    p.grad = torch.ones_like(p)
    opt.step()
    before = p.detach()[1:].clone()
    p.grad = torch.zeros_like(p)
    p.grad[0] = 1.0
    opt.step()
    assert not torch.equal(p.detach()[1:], before)


def test_unknown_optimizer_is_rejected():
    with pytest.raises(ValueError, match="lazy_adamw"):
        build_optimizer("sgd", [{"params": [torch.nn.Parameter(torch.ones(1))], "lr": 1.0, "lazy": False}])


def test_warmup_then_cosine():
    f = warmup_cosine(100, 10)
    assert [round(f(s), 6) for s in (0, 4, 9)] == [0.1, 0.5, 1.0]
    assert f(10) == pytest.approx(1.0) and f(55) == pytest.approx(0.5) and f(100) == pytest.approx(0.0)
    plain = warmup_cosine(50, 0)  # no warmup: the cosine used before warmup existed
    assert all(plain(s) == pytest.approx(0.5 * (1 + math.cos(math.pi * s / 50))) for s in range(0, 51, 7))


class _Logits(torch.nn.Module):
    """Stands in for the backbone: answer logits = the prompt's first 5 features."""

    def answer_logits(self, rows, prompts):  # noqa: ANN001
        return prompts[:, 0, :5]


def test_shared_prompt_and_user_bias():
    prompts = torch.randn(6, 1, 8)
    module = PromptTuning(_Logits(), build_head("rating"), "rating", prompts, shared=True, user_bias=True)
    assert module.prompts.shape == (1, 1, 8)
    assert torch.equal(module.model_prompts(), prompts[:1].expand(6, -1, -1))
    with torch.no_grad():
        module.user_bias.copy_(torch.arange(6.0))
    users = torch.tensor([0, 3, 5])
    batch = {"user": users, "input_ids": None, "attention_mask": None, "slot_pos": None, "answer_pos": None}
    _, out = module(batch)
    base = module.head(prompts[:1, 0, :5].expand(3, -1))
    assert torch.allclose(out - base, users.float())
    assert module.trainable_parameter_count() == 8 + 6 + sum(p.numel() for p in module.head.parameters())
    assert module.per_user_parameters() == []  # a shared prompt is not a per-user row


def test_item_text_start_is_the_mean_of_the_users_training_items(tmp_path):
    from puma_lightning.pipeline.builders import initial_prompts, item_text_embeddings
    from puma_lightning.pipeline.experiment import Experiment

    cfg = load_config([SMOKE], [*FAST, f"run_dir={tmp_path}", "prompt.init_from=item_text", "prompt.length=2"])
    exp = Experiment(cfg)
    lm, table = exp.backbone("source"), exp.table
    start, _ = initial_prompts(cfg, lm, table)
    cfg.prompt.init_from = "random"
    random, _ = initial_prompts(cfg, lm, table)
    items = item_text_embeddings(lm, table.item_texts, int(cfg.data.max_item_tokens or 32))
    user = 3
    rows = table.rows("train")
    mine = table.item[rows][table.user[rows] == user]
    expected = items[torch.as_tensor(mine)].mean(0)
    assert torch.allclose(start[user] - random[user], expected.expand(2, -1), atol=1e-5)
    # the embedding of one item's text is the mean over its tokens
    ids = lm.tokenizer(table.item_texts[0], add_special_tokens=False)["input_ids"][: int(cfg.data.max_item_tokens or 32)]
    assert torch.allclose(items[0], lm.embed(torch.tensor(ids)).float().mean(0), atol=1e-5)


@pytest.mark.slow
def test_fit_with_shared_prompt_user_bias_and_lazy_updates(tmp_path):
    assert main(["fit", "--config", SMOKE, f"run_dir={tmp_path}", *FAST, "baselines.shared_prompt=[source,target]",
                 "prompt.user_bias=true", "prompt.optimizer=lazy_adamw", "prompt.warmup_ratio=0.2"]) == 0
    results = json.loads((tmp_path / "results.json").read_text())
    methods = results["methods"]
    assert {"shared_prompt_source", "shared_prompt_target"} <= set(methods)
    assert methods["source"]["user_bias"] and methods["full_retrain"]["user_bias"]
    assert (tmp_path / "shared_prompt_target" / "test_predictions.npz").is_file()
    assert not (tmp_path / "shared_prompt_target" / "bank").exists()
    # one prompt row of width d plus one bias per user: far fewer parameters than a prompt per user
    assert methods["shared_prompt_target"]["trainable_params"] < methods["full_retrain"]["trainable_params"]
    assert "+ a per-user bias" in (tmp_path / "results.md").read_text()


@pytest.mark.slow
def test_early_stopping_ends_a_stage_that_stops_improving(tmp_path):
    # learning rates far below fp32 resolution: val/loss is exactly flat, so patience 1 stops after epoch 2 of 6
    assert main(["pretrain", "--config", SMOKE, f"run_dir={tmp_path}", *FAST, "prompt.epochs=6", "prompt.lr=1e-30",
                 "prompt.head_lr=1e-30", "prompt.early_stopping_patience=1", "model=source"]) == 0
    record = json.loads((tmp_path / "source" / "stage.json").read_text())
    assert record["epochs"] == 2


@pytest.mark.parametrize("override, key", [("prompt.optimizer=sgd", "prompt.optimizer"),
                                           ("prompt.init_from=titles", "prompt.init_from"),
                                           ("prompt.warmup_ratio=1.0", "prompt.warmup_ratio"),
                                           ("prompt.early_stopping_patience=0", "prompt.early_stopping_patience"),
                                           ("baselines.shared_prompt=[both]", "baselines.shared_prompt")])
def test_bad_lever_values_name_the_key(override, key):
    with pytest.raises(ConfigError, match=key.replace(".", r"\.")):
        load_config([SMOKE], [override])
