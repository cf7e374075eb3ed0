"""``adapter.aggregate_start``: an aggregated bank's start map weighted block by block, chosen on validation."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

from puma_lightning.cli.config_loader import ConfigError, load_config
from puma_lightning.pipeline.judging import best_against
from puma_lightning.pipeline.levers.aggregate_start import MEAN, block_alone, candidate_starts, choose_block_start
from puma_lightning.pipeline.levers.registry import get_lever
from puma_lightning.pipeline.vocab_map import VocabMap

SMOKE = str(Path(__file__).resolve().parents[2] / "configs" / "smoke.yaml")


def _mean_map() -> VocabMap:
    """Two sources of widths 2 and 3 into width 4, their maps at 1/2 as ``adapter.init`` builds them, one indicator row."""
    w_a, w_b = torch.arange(8.0).reshape(2, 4) + 1, -torch.arange(12.0).reshape(3, 4) - 1
    return VocabMap(torch.cat([w_a / 2, w_b / 2, torch.zeros(1, 4)]), 10, 1.5, (("a", 2), ("b", 3)))


def test_block_alone_is_that_sources_own_map_and_zero_elsewhere():
    start = _mean_map()
    a, b = block_alone(start, 0), block_alone(start, 1)
    assert torch.equal(a.weight[:2], start.weight[:2] * 2) and not a.weight[2:].any()
    assert torch.equal(b.weight[2:5], start.weight[2:5] * 2) and not b.weight[:2].any() and not b.weight[5:].any()
    # a prompt [p_a, p_b, indicator] maps to p_a W_a under "a": the single-source start
    prompt = torch.tensor([[1.0, 2, 3, 4, 5, 1]])
    assert torch.allclose(prompt @ a.weight, prompt[:, :2] @ (start.weight[:2] * 2))
    assert list(candidate_starts(start)) == [MEAN, "a", "b"]


def _judge_with(errors: dict[str, np.ndarray]):
    """A judge whose validation rows have label 0 and, for the candidate whose weight is that of ``errors``' key, the
    given per-row errors (4 rows for each of 100 users)."""
    start = _mean_map()
    by_weight = {key: candidate.weight for key, candidate in candidate_starts(start).items()}
    users = np.repeat(np.arange(100), 4)

    def judge(candidate: VocabMap) -> dict:
        key = next(k for k, w in by_weight.items() if torch.equal(w, candidate.weight))
        return {"user": users, "prediction": errors[key], "label": np.zeros(len(users))}
    return start, judge


def test_a_source_clearly_better_than_the_mean_is_chosen_and_its_map_returned():
    rng = np.random.default_rng(0)
    noise = rng.normal(size=400)
    start, judge = _judge_with({MEAN: noise, "a": noise * 0.5, "b": noise * 2})
    chosen, record = choose_block_start("rating", start, judge)
    assert record["chosen"] == "a" and torch.equal(chosen.weight, block_alone(start, 0).weight)
    assert chosen.seconds == start.seconds and chosen.blocks == start.blocks
    assert record["valid_rows"] == 400 and record["valid_z"]["a"] < -2 < record["valid_z"]["b"]
    assert record["valid_loss"]["a"] < record["valid_loss"][MEAN] < record["valid_loss"]["b"]


def test_a_source_better_only_by_chance_leaves_the_mean():
    noise = np.random.default_rng(1).normal(size=400)
    lucky = noise.copy()
    lucky[:4] = 0.0  # better on one user's rows only: a lower mean loss, one standard error at most
    start, judge = _judge_with({MEAN: noise, "a": lucky, "b": noise * 1.5})
    chosen, record = choose_block_start("rating", start, judge)
    assert record["chosen"] == MEAN and torch.equal(chosen.weight, start.weight)
    assert record["valid_loss"]["a"] < record["valid_loss"][MEAN]  # lower, but within the margin
    assert best_against({k: v ** 2 for k, v in {MEAN: np.ones(3), "a": np.zeros(3)}.items()}, MEAN)[0] == "a"


def test_the_lever_acts_only_under_valid_on_a_map_with_several_blocks():
    lever = get_lever("aggregate_start")
    cfg = load_config([SMOKE], ["adapter.init=vocab_map", "adapter.aggregate_start=valid"])
    single = VocabMap(torch.ones(3, 4), 10, 0.0)

    def never(_map):
        raise AssertionError("judged a start that has nothing to weight")
    assert lever.choose_start(cfg, single, never) is None
    assert lever.choose_start(cfg, None, never) is None
    cfg.adapter.aggregate_start = "mean"
    assert lever.choose_start(cfg, _mean_map(), never) is None


@pytest.mark.parametrize(("overrides", "message"), [
    (["adapter.aggregate_start=valid"], r"'adapter\.aggregate_start' is 'valid'.*'adapter\.init' is 'random'"),
    (["adapter.aggregate_start=best"], r"adapter\.aggregate_start"),
])
def test_bad_aggregate_start_settings_name_the_key(overrides, message):
    with pytest.raises(ConfigError, match=message):
        load_config([SMOKE], overrides)
