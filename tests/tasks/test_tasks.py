"""LightningModules on tiny models: prompt scaling, migration mapping, checkpoints without the
frozen backbone, trainable-parameter accounting, non-finite loss detection."""

import pytest
import torch

from puma_lightning.models.adapters import build_adapter
from puma_lightning.models.backbone import FrozenLM
from puma_lightning.models.heads import RatingHead
from puma_lightning.models.tiny import build_tiny_model
from puma_lightning.tasks import Migration, NonFiniteLossError, PromptTuning, embedding_unit, init_prompts

ANSWERS = ("1", "2", "3", "4", "5")


def _lm(name="tiny-llama"):
    model, tok = build_tiny_model(name, seed=0)
    return FrozenLM(model, tok, ANSWERS, name=name, fingerprint="f")


def _batch(lm, users):
    ids = lm.tokenizer("a movie rated by the user", add_special_tokens=False)["input_ids"]
    ids = torch.tensor([ids + [0] + ids] * len(users))
    n = ids.shape[1]
    return {"input_ids": ids, "attention_mask": torch.ones_like(ids), "slot_pos": torch.full((len(users),), len(ids[0]) // 2),
            "answer_pos": torch.full((len(users),), n - 1), "user": torch.tensor(users),
            "label": torch.tensor([4.0] * len(users)), "row": torch.arange(len(users))}


def test_scaled_prompts_are_served_in_model_units_and_exported_unchanged():
    lm = _lm("tiny-gemma3")
    scale = embedding_unit(lm.embedding_std())
    assert scale == pytest.approx(lm.embedding_std() / (0.1 / 3 ** 0.5))
    prompts = init_prompts(4, 1, lm.hidden_size, seed=0) * scale
    module = PromptTuning(lm, RatingHead(), "rating", prompts, scale=scale)
    assert module.prompts.abs().max() <= 0.1 + 1e-6  # the trained parameter keeps the published range
    assert torch.allclose(module.prompts_for(torch.tensor([2, 0])), prompts[[2, 0]], atol=1e-5)
    assert torch.allclose(module.model_prompts(), prompts, atol=1e-5)


def test_prompt_tuning_trains_only_prompts_and_head():
    lm = _lm()
    module = PromptTuning(lm, RatingHead(), "rating", init_prompts(3, 1, lm.hidden_size), lr=0.05)
    assert module.trainable_parameter_count() == 3 * lm.hidden_size + sum(p.numel() for p in RatingHead().parameters())
    logits, output = module(_batch(lm, [0, 2]))
    module.head.loss(logits, output, torch.tensor([4.0, 4.0])).backward()
    assert module.prompts.grad is not None and module.prompts.grad[1].abs().sum() == 0  # user 1 not in batch
    assert all(p.grad is None for p in lm.parameters())


def test_checkpoint_state_leaves_out_the_backbone():
    lm = _lm()
    module = PromptTuning(lm, RatingHead(), "rating", init_prompts(3, 1, lm.hidden_size))
    state = module.trainable_state_dict()
    assert "prompts" in state and not [k for k in state if k.startswith("backbone.")]
    checkpoint = {"state_dict": module.state_dict()}
    module.on_save_checkpoint(checkpoint)
    assert not [k for k in checkpoint["state_dict"] if "backbone" in k]
    other = PromptTuning(lm, RatingHead(), "rating", torch.zeros(3, 1, lm.hidden_size))
    other.load_trainable_state_dict(state)
    assert torch.equal(other.prompts, module.prompts)


def test_migration_maps_every_user_like_the_training_path():
    source_lm, target_lm = _lm("tiny-llama"), _lm("tiny-gemma3")
    source = init_prompts(6, 1, source_lm.hidden_size, seed=3)
    adapter = build_adapter("compact", source_lm.hidden_size, target_lm.hidden_size, hidden=32, dropout=0.0)
    module = Migration(target_lm, RatingHead(), "rating", source, adapter, output_scale=2.0)
    module.eval()
    with torch.no_grad():
        expected = module.prompts_for(torch.arange(6))
    migrated = module.migrate_all(batch_size=4)
    assert migrated.shape == (6, 1, target_lm.hidden_size)
    assert torch.allclose(migrated, expected, atol=1e-6)
    assert torch.allclose(migrated, adapter(source) * 2.0, atol=1e-6)
    assert module.trainable_parameter_count() == sum(p.numel() for p in adapter.parameters()) + \
        sum(p.numel() for p in RatingHead().parameters())
    assert "source_prompts" not in module.state_dict()


def test_non_finite_loss_stops_with_step_and_users():
    lm = _lm()
    prompts = init_prompts(3, 1, lm.hidden_size)
    prompts[1] = float("nan")
    module = PromptTuning(lm, RatingHead(), "rating", prompts)
    with pytest.raises(NonFiniteLossError, match=r"step 0 .*users \[1\]"):
        module.training_step(_batch(lm, [1, 1]), 0)
