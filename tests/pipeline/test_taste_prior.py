"""``prompt.taste_prior``: a prior shared by all users finds the few directions that carry tastes, where a per-user
isotropic ridge (what gradient descent with weight decay does) cannot; and it stays out where it does not help."""

import json
from pathlib import Path

import numpy as np
import pytest

from puma_lightning.cli.config_loader import load_config
from puma_lightning.cli.main import main
from puma_lightning.pipeline.taste_prior import Rows, fit_prior

ROOT = Path(__file__).resolve().parents[2]
PERSONAL = str(ROOT / "configs" / "personal.yaml")


def _hierarchical(seed: int, users: int = 200, items: int = 120, k: int = 40, rank: int = 2, per_user: int = 12,
                  signal: float = 1.0):
    """Tastes in ``rank`` of ``k`` item directions, ``per_user`` training rows and 4 validation rows a user."""
    rng = np.random.default_rng(seed)
    z = rng.normal(size=(items, k))
    z /= np.sqrt((z ** 2).sum(1).mean())
    axes = np.linalg.qr(rng.normal(size=(k, rank)))[0]
    tastes = signal * rng.normal(size=(users, rank)) @ axes.T * np.sqrt(k)
    def rows(n: int) -> Rows:
        user = np.repeat(np.arange(users), n)
        item = rng.integers(0, items, size=len(user))
        target = np.einsum("rk,rk->r", z[item], tastes[user]) + rng.normal(scale=0.5, size=len(user))
        return Rows(user, item, target)
    return z, rows(per_user), rows(4), tastes


def test_a_shared_prior_beats_the_isotropic_ridge_on_low_rank_tastes():
    z, train, valid, tastes = _hierarchical(0)
    fitted = fit_prior(z, train, valid, np.zeros_like(tastes), iterations=30, seed=0)
    record = fitted.record
    assert record["used"] and record["iteration"] and record["iteration"] > 0
    assert record["valid_rmse"] < record["valid_rmse_isotropic"] - 0.1, record  # EM found the two directions
    oracle = float(np.sqrt(np.mean((np.einsum("rk,rk->r", z[valid.item], tastes[valid.user]) - valid.target) ** 2)))
    assert record["valid_rmse"] < oracle + 0.15, (record, oracle)
    assert np.corrcoef(fitted.means.ravel(), tastes.ravel())[0, 1] > 0.9


def test_no_tastes_means_no_large_move():
    """Pure noise: whatever validation picks (the start, or a chance win), no user's term moves far."""
    z, train, valid, tastes = _hierarchical(1, signal=0.0)
    fitted = fit_prior(z, train, valid, np.zeros_like(tastes), iterations=10, seed=0)
    means = fitted.means if fitted.means is not None else np.zeros_like(tastes)
    assert np.abs(means).max() < 0.2, np.abs(means).max()


def test_the_option_is_refused_where_it_cannot_act():
    with pytest.raises(ValueError, match="prompt.item_match > 0"):
        load_config([PERSONAL], ["prompt.item_match=0", "prompt.taste_prior=5"])
    with pytest.raises(ValueError, match=">= 0"):
        load_config([PERSONAL], ["prompt.taste_prior=-1"])


@pytest.mark.parametrize("iterations", [0, 10])
def test_pretrain_records_the_prior_only_when_it_is_on(tmp_path, iterations):
    run = tmp_path / f"run{iterations}"
    assert main(["pretrain", "--config", PERSONAL, "seeds=null", "model=source", "source.name=tiny-llama",
                 "data.n_users=40", "prompt.epochs=1", f"prompt.taste_prior={iterations}", "trainer.num_threads=1",
                 f"run_dir={run}"]) == 0
    record = json.loads((run / "source" / "stage.json").read_text())
    if iterations:
        prior = record["taste_prior"]
        assert prior["iterations"] == iterations and prior["rank"] > 0 and prior["seconds"] >= 0
        assert prior["prior_users"] == 40 and isinstance(prior["used"], bool)
    else:
        assert "taste_prior" not in record


def test_fit_applies_the_prior_where_prompts_train_and_nowhere_else(tmp_path):
    assert main(["fit", "--config", PERSONAL, "seeds=null", "source.name=tiny-llama", "target.name=tiny-qwen2",
                 "data.n_users=40", "selection.budget=4", "prompt.epochs=1", "adapter.epochs=1", "prompt.taste_prior=5",
                 "trainer.num_threads=1", f"run_dir={tmp_path}"]) == 0
    records = {name: json.loads((tmp_path / name / "stage.json").read_text())
               for name in ("source", "full_retrain", "random_init", "puma")}
    assert "taste_prior" in records["source"] and "taste_prior" in records["full_retrain"]
    assert "taste_prior" not in records["random_init"] and "taste_prior" not in records["puma"]  # no prompts of their own train


def test_on_clicks_the_prior_fits_the_logit_residual_of_a_logistic_base(tmp_path):
    """A click stage with a logistic residual base and the match term: the prior is fitted (targets in logit units,
    the residual of the base's click probability) and recorded; it moves nothing it cannot beat on validation."""
    click = str(ROOT / "configs" / "personal_click.yaml")
    assert main(["pretrain", "--config", PERSONAL, "--config", click, "seeds=null", "model=source",
                 "source.name=tiny-llama", "data.n_users=40", "prompt.epochs=1", "prompt.taste_prior=5",
                 "prompt.residual=user_item_logodds", "trainer.num_threads=1", f"run_dir={tmp_path}"]) == 0
    record = json.loads((tmp_path / "source" / "stage.json").read_text())
    prior = record["taste_prior"]
    assert prior["iterations"] == 5 and prior["rank"] > 0 and prior["prior_users"] == 40
    # targets are (click - p) / 0.25 with p in (0, 1): their RMS under a zero term lies within (0, 4]
    # probability residuals (|click - p| about 0.5) over 0.25: an RMS near 2, where the rating target (click - logit)
    # or the undivided residual would be near 0.5
    assert 1.2 < prior["valid_rmse_start"] <= 4.0 and prior["valid_rmse"] <= prior["valid_rmse_start"], prior
