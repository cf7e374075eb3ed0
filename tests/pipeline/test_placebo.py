"""The placebo: prompts dealt to other users by a seeded derangement, the personal gain, retained and captured share,
their tables, and the ``placebo`` command's errors."""

from pathlib import Path

import numpy as np
import pytest
import torch
from torch import nn

from puma_lightning.cli.config_loader import load_config
from puma_lightning.cli.main import main
from puma_lightning.pipeline.placebo import PLACEBO_FILE, captured_shares, dealt_predictions, placebo_columns
from puma_lightning.pipeline.results import placebo_table
from puma_lightning.pipeline.predictions import PREDICTIONS_FILE
from puma_lightning.pipeline.seeds import SeedRow, SeedRun, summarise, to_markdown
from puma_lightning.tasks import PromptTuning
from puma_lightning.tasks.dealt_prompts import DealtPrompts
from puma_lightning.tasks.placebo import (MEASURABLE, NONE_MEASURABLE, captured_share, derangement, personal_gain,
                                          retained)

ROOT = Path(__file__).resolve().parents[2]
SMOKE = str(ROOT / "configs" / "smoke.yaml")
TINY = ["data.n_users=12", "data.rows_per_user=10", "trainer.num_threads=1"]


# -- the derangement -------------------------------------------------------------------------------
@pytest.mark.parametrize("n", [2, 3, 7, 60, 1000])
def test_the_derangement_moves_every_user_and_is_a_permutation(n):
    for seed in range(5):
        dealt = derangement(n, seed)
        assert sorted(dealt.tolist()) == list(range(n))
        assert not (dealt == np.arange(n)).any()


def test_the_derangement_is_seeded():
    assert np.array_equal(derangement(50, 7), derangement(50, 7))
    assert not np.array_equal(derangement(50, 7), derangement(50, 8))
    with pytest.raises(ValueError):
        derangement(1, 0)


# -- the statistics on synthetic vectors -----------------------------------------------------------
def _rows(n=400, users=40, seed=0):
    rng = np.random.default_rng(seed)
    label = rng.normal(size=n)
    return label, np.repeat(np.arange(users), n // users), rng


def test_identical_predictions_have_a_gain_of_exactly_zero():
    label, user, rng = _rows()
    own = label + rng.normal(size=len(label))
    gain = personal_gain("rmse", own, own.copy(), label, user)
    assert gain["value"] == 0.0 and gain["low"] == 0.0 and gain["high"] == 0.0
    assert gain["verdict"] == NONE_MEASURABLE


@pytest.mark.parametrize("metric", ["rmse", "mae", "auc", "uauc"])
def test_better_own_predictions_have_a_positive_gain_whatever_the_metric_direction(metric):
    label, user, rng = _rows()
    if metric in ("auc", "uauc"):
        label = (label > 0).astype(float)
    own = label + rng.normal(scale=0.3, size=len(label))
    placebo = label + rng.normal(scale=1.5, size=len(label))
    gain = personal_gain(metric, own, placebo, label, user, resamples=200)
    assert gain["low"] > 0 and gain["verdict"] == MEASURABLE
    assert personal_gain(metric, placebo, own, label, user, resamples=200)["high"] < 0  # reversed: negative


def test_the_weighted_auc_is_roc_auc_on_the_repeated_rows():
    from sklearn.metrics import roc_auc_score

    from puma_lightning.tasks.placebo import weighted_auc

    label, _, rng = _rows()
    label = (label > 0).astype(float)
    prediction = np.round(label + rng.normal(size=len(label)), 1)  # with ties
    counts = rng.integers(0, 3, size=len(label))
    repeated = np.repeat(np.arange(len(label)), counts)
    assert weighted_auc(prediction, label, np.ones(len(label))) == pytest.approx(roc_auc_score(label, prediction))
    assert weighted_auc(prediction, label, counts.astype(float)) == pytest.approx(
        roc_auc_score(label[repeated], prediction[repeated]))


def test_uauc_intervals_resample_users():
    label, user, rng = _rows()
    label = (label > 0).astype(float)
    own, placebo = label + rng.normal(size=len(label)), label + rng.normal(scale=2, size=len(label))
    by_rows = personal_gain("uauc", own, placebo, label, np.arange(len(label)) // 2, resamples=300)  # 200 tiny users
    by_users = personal_gain("uauc", own, placebo, label, user, resamples=300)
    assert by_rows["value"] != by_users["value"]  # the user grouping is what the statistic and its resampling use


def test_retained_is_exactly_one_for_a_copy_of_full_retraining():
    label, user, rng = _rows()
    own, placebo = label + rng.normal(scale=0.5, size=len(label)), label + rng.normal(size=len(label))
    out = retained("rmse", own.copy(), placebo.copy(), own, placebo, label, user)
    assert out["value"] == 1.0 and out["low"] == 1.0 and out["high"] == 1.0 and out["full_gain_measurable"]


def test_retained_halves_with_half_the_gain():
    label = np.zeros(1000)
    full_own, full_placebo = np.full(1000, 1.0), np.full(1000, 3.0)  # MAE gain 2
    own, placebo = np.full(1000, 1.0), np.full(1000, 2.0)  # MAE gain 1
    assert retained("mae", own, placebo, full_own, full_placebo, label)["value"] == pytest.approx(0.5)


def test_captured_share_is_the_fraction_of_the_bias_to_ridge_gap():
    label = np.zeros(800)
    bias, ridge = np.full(800, 1.0), np.full(800, 0.5)  # MAE 1.0 and 0.5
    row = np.full(800, 0.8)  # MAE 0.8: captures (1.0 - 0.8) / (1.0 - 0.5) = 40 %
    share = captured_share("mae", row, bias, ridge, label)
    assert share["value"] == pytest.approx(0.4) and share["low"] == pytest.approx(0.4)
    assert captured_share("mae", bias, bias, ridge, label)["value"] == 0.0
    assert captured_share("mae", ridge, bias, ridge, label)["value"] == pytest.approx(1.0)


def _pred(prediction, label, user):
    return {"row": np.arange(len(label)), "user": user, "prediction": np.asarray(prediction, float), "label": label}


def test_the_results_table_adds_gain_retained_and_captured_share_only_where_it_can():
    label, user, rng = _rows()
    full = _pred(label + rng.normal(scale=0.5, size=len(label)), label, user)
    full_placebo = _pred(label + rng.normal(size=len(label)), label, user)
    predictions = {"full_retrain": full, "puma": dict(full), "global_mean": _pred(np.zeros(len(label)), label, user)}
    placebo = {"full_retrain": full_placebo, "puma": dict(full_placebo), "global_mean": None}
    columns = placebo_table(("rmse", "mae"), predictions, placebo)
    assert columns["puma"]["retained"]["value"] == 1.0
    assert "retained" not in columns["full_retrain"] and columns["full_retrain"]["personal_gain"]["low"] > 0
    assert "personal_gain_mae" in columns["puma"] and set(columns["puma"]["placebo"]) == {"rmse", "mae"}
    assert columns["global_mean"] == {}
    assert not any("captured_share" in c for c in columns.values())  # no attribute_ridge row: no share, no error
    predictions.update(user_item_bias=_pred(label + 1.0, label, user), attribute_ridge=_pred(label + 0.5, label, user))
    shares = captured_shares("rmse", predictions)
    assert set(shares) == {"full_retrain", "puma", "global_mean"}
    expected = (1.0 - np.sqrt(np.mean((full["prediction"] - label) ** 2))) / (1.0 - 0.5)
    assert shares["puma"]["value"] == pytest.approx(expected)


def test_a_row_tested_on_other_rows_gets_no_gain():
    label, user, rng = _rows()
    own = _pred(label, label, user)
    other = {**own, "row": own["row"] + 1}
    assert placebo_columns("rmse", own, other) == {}
    assert placebo_columns("rmse", own, None) == {}


def test_the_table_over_seeds_pools_the_placebo_columns(tmp_path):
    runs = {}
    for seed in (0, 1):
        label, user, rng = _rows(seed=seed)
        rows = {}
        for name, noise in (("full_retrain", 0.5), ("puma", 0.5)):
            folder = tmp_path / f"s{seed}" / name
            folder.mkdir(parents=True)
            own = label + np.random.default_rng(seed).normal(scale=noise, size=len(label))  # puma: a copy of full
            np.savez(folder / PREDICTIONS_FILE, **_pred(own, label, user))
            dealt = label + np.random.default_rng(seed + 10).normal(size=len(label))  # puma's: a copy of full's
            np.savez(folder / PLACEBO_FILE, **_pred(dealt, label, user))
            rows[name] = SeedRow({"rmse": 0.5, "mae": 0.4, "wall_s": 1.0}, folder,
                                 ["full_retrain"] if name == "puma" else [], "full_retrain" if name == "puma" else None)
        runs[seed] = SeedRun("rating", rows)
    results = summarise(runs, resamples=200)
    puma = results["methods"]["puma"]
    assert puma["retained"]["value"] == pytest.approx(1.0) and puma["personal_gain"]["rows"] == 800
    assert puma["placebo"]["rmse"]["std"] > 0  # one placebo value per seed
    assert "retained" not in results["methods"]["full_retrain"]
    assert "personal gain" in to_markdown(results)


# -- the dealt prompts on a real test pass ---------------------------------------------------------
class _PromptReader(nn.Module):
    """A stand-in backbone whose single answer logit is the prompt's first feature (the prompt is the prediction)."""

    hidden_size = 4

    def __init__(self) -> None:
        super().__init__()
        self.register_buffer("anchor", torch.zeros(1))
        from puma_lightning.models.tiny import build_tiny_model

        self.tokenizer = build_tiny_model("tiny-llama", seed=0)[1]

    def answer_logits(self, rows, prompts):  # noqa: ANN001, ANN201
        return prompts[:, 0, :1]


class _Identity(nn.Module):
    """A rating head that predicts the logit itself (MSE loss)."""

    def forward(self, logits, hidden=None):  # noqa: ANN001, ANN201
        return logits[:, 0].float()

    def loss(self, logits, output, label):  # noqa: ANN001, ANN201
        return torch.mean((output - label) ** 2)

    @staticmethod
    def predict(output):  # noqa: ANN001, ANN205
        return output


def _experiment(tmp_path):
    from puma_lightning.pipeline.experiment import Experiment

    cfg = load_config([SMOKE], [f"run_dir={tmp_path}", *TINY])
    return cfg, Experiment(cfg)


def _own_and_dealt(cfg, exp, module, tmp_path):
    from puma_lightning.pipeline.builders import build_datamodule
    from puma_lightning.pipeline.training import test_metrics

    dm = build_datamodule(exp.table, module.backbone.tokenizer, cfg, 8)
    test_metrics(module, dm, cfg, tmp_path, "own")
    own = module.test_predictions()
    _, dealt, seed = dealt_predictions(module, dm, cfg, tmp_path, "dealt", exp.table.n_users)
    assert np.array_equal(own["row"], dealt["row"]) and not (dealt["prompt_user"] == dealt["user"]).any()
    return own, dealt


def test_a_bank_whose_prompts_are_the_same_for_every_user_has_a_gain_of_exactly_zero(tmp_path):
    from puma_lightning.models.backbone import FrozenLM
    from puma_lightning.models.heads import RatingHead
    from puma_lightning.models.tiny import build_tiny_model

    cfg, exp = _experiment(tmp_path)
    model, tok = build_tiny_model("tiny-llama", seed=0)
    lm = FrozenLM(model, tok, ("1", "2", "3", "4", "5"), name="tiny-llama", fingerprint="f")
    same = torch.randn(1, 1, lm.hidden_size).expand(exp.table.n_users, -1, -1).contiguous()
    module = PromptTuning(lm, RatingHead(), "rating", same, train_prompts=False, train_head=False)
    own, dealt = _own_and_dealt(cfg, exp, module, tmp_path)
    assert np.array_equal(own["prediction"], dealt["prediction"])
    gain = personal_gain("rmse", own["prediction"], dealt["prediction"], own["label"], own["user"])
    assert gain["value"] == 0.0 and gain["verdict"] == NONE_MEASURABLE


def test_a_bank_whose_prediction_reads_the_prompt_has_a_clearly_positive_gain(tmp_path):
    cfg, exp = _experiment(tmp_path)
    table = exp.table
    test = table.rows("test")
    prompts = torch.zeros(table.n_users, 1, _PromptReader.hidden_size)
    for u in range(table.n_users):  # each user's prompt holds that user's mean test rating
        prompts[u, 0, 0] = float(table.label[test][table.user[test] == u].mean())
    module = PromptTuning(_PromptReader(), _Identity(), "rating", prompts, train_prompts=False, train_head=False)
    module.user_bias = nn.Parameter(torch.zeros(table.n_users))  # a per-user offset stays with its own user
    own, dealt = _own_and_dealt(cfg, exp, module, tmp_path)
    assert np.allclose(own["prediction"], prompts[own["user"], 0, 0].numpy())
    gain = personal_gain("rmse", own["prediction"], dealt["prediction"], own["label"], own["user"])
    assert gain["low"] > 0.1 and gain["verdict"] == MEASURABLE


def test_dealing_prompts_leaves_the_wrapped_head_trainable_as_it_was():
    inner = PromptTuning(_PromptReader(), _Identity(), "rating", torch.zeros(3, 1, 4), train_prompts=False)
    inner.head.register_parameter("w", nn.Parameter(torch.zeros(1)))
    DealtPrompts(inner, derangement(3, 0))
    assert inner.head.w.requires_grad


# -- the command's errors --------------------------------------------------------------------------
def test_the_placebo_command_names_a_missing_bank_in_one_line(tmp_path, capsys):
    code = main(["placebo", "--config", SMOKE, f"run_dir={tmp_path / 'run'}", f"bank={tmp_path / 'nowhere'}"])
    err = capsys.readouterr().err.strip()
    assert code == 2 and err.startswith("error: placebo: bank not found") and "nowhere" in err and "\n" not in err
    code = main(["placebo", "--config", SMOKE, f"run_dir={tmp_path / 'run2'}"])
    err = capsys.readouterr().err.strip()
    assert code == 2 and "bank=PATH" in err and "\n" not in err
