"""``prompt.hidden_readout=ridge_own``: the ridge readout, fitted through the neutral prompt as under ``ridge``, then
read through each user's own prompt, so that the prompts' gradients reach them through the hidden state too."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from conftest import smoke_prompt_module
from puma_lightning.cli.main import main
from puma_lightning.models.heads import load_head
from puma_lightning.models.templated_rows import TemplatedRows
from puma_lightning.pipeline.levers.hooks import before_train
from puma_lightning.tasks.base import answer_outputs

SMOKE = str(Path(__file__).resolve().parents[2] / "configs" / "smoke.yaml")
FAST = ["prompt.epochs=1", "adapter.epochs=1", "data.n_users=12", "data.rows_per_user=8", "selection.budget=6",
        "baselines.random_init=false", "baselines.full_retrain=false", "baselines.classic=false", "trainer.num_threads=1",
        "prompt.residual=user_item_bias", "data.template=item_first"]


def _fitted(tmp_path: Path, mode: str):
    """A prompt-tuning module on the smoke data with its readout fitted under ``mode``, a batch, and the record."""
    cfg, lm, _, module, dm = smoke_prompt_module(tmp_path, [*FAST, f"prompt.hidden_readout={mode}"], 0.0)
    record = before_train(cfg, module, dm).get("readout")
    batch = dm.collate([dm.dataset("train")[i] for i in range(8)])
    with torch.no_grad():  # a readout with weight, whatever the fit chose on this tiny table, so that its channel shows
        module.head.readout.linear.weight.copy_(torch.randn(module.head.readout.linear.weight.shape,
                                                            generator=torch.Generator().manual_seed(0)))
    return module, lm, batch, record


@pytest.mark.parametrize("mode", ["ridge", "ridge_own"])
def test_the_readout_reads_the_users_own_prompt_only_under_ridge_own(tmp_path, mode):
    module, lm, batch, record = _fitted(tmp_path, mode)
    assert record is not None and record["train_rows"] > 0  # fitted the same way under both
    assert not module.head.readout.linear.weight.requires_grad  # frozen under both
    prompts = module.prompts_for(batch["user"])
    _, hidden = answer_outputs(lm, module.head, batch, prompts)
    own = lm.plain_answer_hidden(TemplatedRows.of(batch), prompts).float()
    if mode == "ridge_own":
        assert not module.head.readout.neutral and record["reads"] == "own prompt"
        torch.testing.assert_close(hidden.float(), own, atol=2e-5, rtol=2e-5)
    else:
        assert module.head.readout.neutral and "reads" not in record
        assert not torch.allclose(hidden.float(), own, atol=1e-3)


@pytest.mark.parametrize("mode", ["ridge", "ridge_own"])
def test_under_ridge_own_the_prompts_gradient_flows_through_the_readout(tmp_path, mode):
    module, lm, batch, _ = _fitted(tmp_path, mode)
    with torch.no_grad():  # silence the logits channel: what is left reaches the prompts through the readout only
        for p in module.head.mlp.parameters():
            p.zero_()
    module.zero_grad()
    _, output = module(batch)
    output.sum().backward()
    grad = module.prompts.grad
    assert grad is not None
    if mode == "ridge_own":
        assert float(grad.abs().sum()) > 0.0
    else:  # the neutral readout's term does not depend on the prompt
        assert float(grad.abs().sum()) == 0.0


def test_a_saved_ridge_own_head_keeps_reading_the_own_prompt(tmp_path):
    module, lm, batch, _ = _fitted(tmp_path, "ridge_own")
    reloaded = load_head("rating", module.head.state_dict())
    assert not reloaded.readout.neutral
    prompts = module.prompts_for(batch["user"])
    logits, hidden = answer_outputs(lm, reloaded, batch, prompts)
    torch.testing.assert_close(reloaded(logits, hidden), module.head(logits, hidden))


@pytest.mark.slow
def test_fit_runs_with_ridge_own_and_records_what_the_readout_reads(tmp_path):
    import json

    assert main(["fit", "--config", SMOKE, f"run_dir={tmp_path / 'own'}", *FAST, "prompt.hidden_readout=ridge_own"]) == 0
    record = json.loads((tmp_path / "own" / "source" / "stage.json").read_text())
    assert record["readout"]["reads"] == "own prompt"


def test_an_unknown_readout_is_still_refused(tmp_path, capsys):
    code = main(["fit", "--config", SMOKE, f"run_dir={tmp_path / 'x'}", *FAST, "prompt.hidden_readout=ridge_mine"])
    assert code == 2 and "hidden_readout" in capsys.readouterr().err
