"""``adapter.shrink``: PUMA's migrated prompts pulled towards their mean by a factor chosen on validation (the saved
adapter and ``migrate``: ``test_adapter_levers.py``)."""

import numpy as np
import torch

from puma_lightning.models.adapters import OutputShrunk
from puma_lightning.pipeline.judging import paired_z, row_losses
from puma_lightning.pipeline.levers.shrink import SHRINK_GRID, chosen_alpha, shrink_migrated
from puma_lightning.tasks import Migration


def test_the_wrapper_scales_each_prompt_s_distance_from_the_centre():
    torch.manual_seed(0)
    x = torch.randn(30, 2, 5)
    centre = torch.randn(2, 5)
    for alpha in (0.0, 0.5, 1.0):
        out = OutputShrunk(torch.nn.Identity(), centre, alpha)(x)
        assert torch.allclose(out - centre, alpha * (x - centre), atol=1e-6)
    assert torch.allclose(OutputShrunk(torch.nn.Identity(), centre, 1.0)(x), x)


def test_the_choice_keeps_one_unless_a_smaller_factor_is_better_beyond_noise():
    rng = np.random.default_rng(0)
    base = rng.exponential(size=400)
    same = {1.0: base, 0.8: base.copy(), 0.6: base.copy()}
    assert chosen_alpha(same)[0] == 1.0  # ties: no change
    clear = {1.0: base, 0.8: base - 0.2, 0.6: base - 0.1}
    assert chosen_alpha(clear)[0] == 0.8
    # lower on average but by less than two standard errors of the paired difference: no change
    noisy = {1.0: base, 0.4: base + rng.normal(size=400) - 0.05}
    alpha, z = chosen_alpha(noisy)
    assert alpha == 1.0 and -2.0 < z[0.4] < 0, z
    assert chosen_alpha(noisy, margin_se=0.0)[0] == 0.4  # a bare minimum would have taken it


def test_rows_of_one_user_count_as_one_cluster():
    """A difference carried by a few users' many rows is less certain than the same rows from many users."""
    rng = np.random.default_rng(2)
    per_user = rng.normal(-0.1, 0.3, size=8)  # 8 users, each with its own shift
    diff = np.repeat(per_user, 50) + rng.normal(scale=0.05, size=400)
    users = np.repeat(np.arange(8), 50)
    independent, clustered = paired_z(diff), paired_z(diff, users)
    assert abs(clustered) < abs(independent) / 3, (independent, clustered)
    assert paired_z(np.zeros(10), np.arange(10)) == 0.0


def test_row_losses_are_the_task_metric_per_row():
    assert np.allclose(row_losses("rating", np.array([3.0, 4.5]), np.array([4.0, 4.0])), [1.0, 0.25])
    assert np.allclose(row_losses("click", np.array([0.5, 0.9]), np.array([1.0, 0.0])), [np.log(2), -np.log(0.1)])


def test_the_lever_picks_the_factor_validation_prefers_and_leaves_the_adapter_wrapped():
    """A stand-in validation whose error is smallest at 0.4 of the spread, clearly: that factor is chosen, and the
    migrated prompts are the centre plus 0.4 of each one's distance from it."""
    torch.manual_seed(0)
    source = torch.randn(12, 1, 4)
    adapter = torch.nn.Linear(4, 6)
    module = Migration(torch.nn.Identity(), torch.nn.Identity(), "rating", source, adapter, output_scale=2.0)
    before = module.migrate_all()

    def rows(m):
        noise = np.random.default_rng(1).normal(scale=0.05, size=300)  # the same rows for every factor
        return {"prediction": abs(float(m.adapter.alpha) - 0.4) + noise, "label": np.zeros(300), "user": np.arange(300)}

    record = shrink_migrated(module, rows)
    assert record["alpha"] == 0.4 and set(record["valid_loss"]) == {str(a) for a in SHRINK_GRID}
    assert record["valid_rows"] == 300 and record["valid_z"]["0.4"] < -2
    centre = before.mean(0)
    assert torch.allclose(module.migrate_all(), centre + 0.4 * (before - centre), atol=1e-5)
