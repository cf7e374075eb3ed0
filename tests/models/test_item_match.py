"""``prompt.item_match``: the item-word match term, from the batch's item tokens to every scorer of a bank."""

from __future__ import annotations

import csv
import math
from pathlib import Path

import numpy as np
import pytest
import torch

from puma_lightning.cli.config_loader import load_config
from conftest import smoke_prompt_module
from puma_lightning.cli.main import main
from puma_lightning.data.encoding import item_text_token_ids
from puma_lightning.io.bank import PromptBank
from puma_lightning.models.heads import build_head, load_head
from puma_lightning.models.item_match import ITEM_PAD, ItemWordMatch, mean_item_embedding
from puma_lightning.pipeline.builders import item_embedding_centre
from puma_lightning.pipeline.levers.item_match import attach_item_match
from puma_lightning.pipeline.experiment import Experiment
from puma_lightning.tasks.base import scored_rows

ROOT = Path(__file__).resolve().parents[2]
SMOKE = str(ROOT / "configs" / "smoke.yaml")
FAST = ["data.n_users=16", "data.rows_per_user=10", "selection.budget=8", "baselines.classic=false", "trainer.num_threads=1",
        "prompt.residual=user_item_bias", "data.template=item_first"]


def test_the_term_is_the_scaled_product_of_the_prompt_and_item_offsets():
    gen = torch.Generator().manual_seed(0)
    d, sigma = 8, 0.5
    anchor, centre = torch.randn(d, generator=gen), torch.randn(d, generator=gen)
    match = ItemWordMatch(d)
    match.set(0.3, anchor, centre, sigma)
    prompts, items = torch.randn(4, 2, d, generator=gen), torch.randn(4, d, generator=gen)
    expected = 0.3 * ((prompts.mean(1) - anchor) * (items - centre)).sum(-1) / (sigma ** 2 * math.sqrt(d))
    torch.testing.assert_close(match(prompts, items), expected)
    torch.testing.assert_close(match(anchor.expand(4, 1, d), items), torch.zeros(4))  # the starting mean scores nothing
    match.set(0.0, anchor, centre, sigma)
    assert torch.equal(match(prompts, items), torch.zeros(4))
    with pytest.raises(ValueError, match="width 8"):
        match.set(0.3, torch.zeros(7), centre, sigma)


def test_the_mean_item_embedding_ignores_padding():
    table = torch.nn.Embedding(10, 3)
    ids = torch.tensor([[1, 2, ITEM_PAD], [4, ITEM_PAD, ITEM_PAD], [ITEM_PAD, ITEM_PAD, ITEM_PAD]])
    out = mean_item_embedding(table, ids)
    w = table.weight.detach()
    torch.testing.assert_close(out, torch.stack([(w[1] + w[2]) / 2, w[4], torch.zeros(3)]))


def _module(tmp_path: Path, scale: float):
    return smoke_prompt_module(tmp_path, [*FAST, f"prompt.item_match={scale}"], 3.0)  # the term attached where configured


def test_batches_carry_each_rows_own_item_tokens_cut_as_configured(tmp_path):
    cfg, lm, table, _, dm = _module(tmp_path, 0.3)
    data = dm.dataset("train")
    batch = dm.collate([data[i] for i in range(8)])
    for b in range(8):
        item = int(table.item[int(batch["row"][b])])
        ids = [int(t) for t in batch["item_ids"][b] if t != ITEM_PAD]
        expected = item_text_token_ids(lm.tokenizer, table.item_texts[item], cfg.data.max_item_tokens)
        assert tuple(ids) == expected and 0 < len(ids) <= cfg.data.max_item_tokens
        assert all(t == ITEM_PAD for t in batch["item_ids"][b, len(ids):].tolist())  # padding only after the tokens


def test_the_term_is_attached_where_configured_and_reaches_the_prompts(tmp_path):
    cfg, lm, table, module, dm = _module(tmp_path, 0.3)
    match = module.head.item_match
    assert match is not None and float(match.scale) == pytest.approx(0.3)
    assert float(match.norm) == pytest.approx(lm.embedding_std() ** 2 * math.sqrt(lm.hidden_size))
    torch.testing.assert_close(match.anchor, module.model_prompts().reshape(-1, lm.hidden_size).mean(0), atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(match.centre, item_embedding_centre(lm, table, cfg.data.max_item_tokens))
    batch = dm.collate([dm.dataset("train")[i] for i in range(8)])
    prompts = module.prompts_for(batch["user"]).detach().requires_grad_(True)
    _, with_term = scored_rows(lm, module.head, batch, prompts)
    head = module.head
    saved, head.item_match = head.item_match, None
    _, without = scored_rows(lm, head, batch, prompts)
    head.item_match = saved
    item_emb = mean_item_embedding(lm.embed, batch["item_ids"])
    torch.testing.assert_close(with_term - without, saved(prompts, item_emb))
    grad_with = torch.autograd.grad(with_term.sum(), prompts, retain_graph=True)[0]
    grad_without = torch.autograd.grad(without.sum(), prompts)[0]
    assert (grad_with - grad_without).abs().sum() > 0  # the term's own gradient reaches each prompt

    off_cfg = load_config([SMOKE], [f"run_dir={tmp_path}", *FAST])
    attach_item_match(off_cfg, head, lm, table, module.model_prompts())
    assert head.item_match is None  # 0 (the default): no term, as published


def test_a_saved_head_keeps_its_term_on_its_model_and_drops_it_on_another_width():
    head = build_head("rating", None, 6)
    head.item_match.set(0.5, torch.ones(6), torch.zeros(6), 0.2)
    state = head.state_dict()
    same = load_head("rating", state, 6)
    assert same.item_match is not None and float(same.item_match.scale) == 0.5
    assert torch.equal(same.item_match.anchor, torch.ones(6))
    moved = load_head("rating", state, 9)  # a head moved to another model: that model's term is attached by its stage
    assert moved.item_match is None


ON_GPU = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU (run on the lent H200, see the closing note)")


@pytest.mark.slow
@pytest.mark.parametrize("accelerator", ["cpu", pytest.param("gpu", marks=ON_GPU)])
def test_fit_with_the_term_serves_the_same_predictions_from_its_banks(tmp_path, accelerator):
    run = tmp_path / "run"
    overrides = [f"run_dir={run}", *FAST, "prompt.item_match=0.3", "prompt.epochs=2", "adapter.epochs=1",
                 f"trainer.accelerator={accelerator}"]
    assert main(["fit", "--config", SMOKE, *overrides]) == 0
    for stage in ("source", "full_retrain", "puma"):
        bank = PromptBank.load(run / stage / "bank")
        assert bank.head_state is not None and "item_match.anchor" in bank.head_state
        assert bank.head_state["item_match.anchor"].shape[0] == bank.hidden_size
        assert float(bank.head_state["item_match.scale"]) == pytest.approx(0.3)
    # the migrated bank's term is the target's own, anchored where the adapter started, not the source's
    source, puma = (PromptBank.load(run / s / "bank") for s in ("source", "puma"))
    assert not torch.equal(source.head_state["item_match.centre"], puma.head_state["item_match.centre"])
    # predict scores the puma bank through the same head, term included: the test rows' predictions match the stage's
    exp = Experiment(load_config([SMOKE], overrides))
    table, stage = exp.table, exp.test_predictions("puma")
    pairs = [(table.user_ids[table.user[r]], table.item_id_list()[table.item[r]]) for r in stage["row"]]
    (tmp_path / "pairs.csv").write_text("user,item\n" + "".join(f"{u},{i}\n" for u, i in pairs))
    out = tmp_path / "scores.csv"
    assert main(["predict", "--config", SMOKE, *overrides[1:], f"run_dir={tmp_path / 'serve'}", f"bank={run / 'puma' / 'bank'}",
                 "model=target", f"pairs={tmp_path / 'pairs.csv'}", f"out={out}"]) == 0
    served = [float(r["prediction"]) for r in csv.DictReader(open(out, encoding="utf-8"))]
    np.testing.assert_allclose(served, stage["prediction"], atol=1e-5 if accelerator == "cpu" else 2e-3)


@pytest.mark.slow
def test_each_hop_of_a_chain_serves_its_own_models_term(tmp_path):
    from conftest import CHAIN, CHAIN_TINY

    run = tmp_path / "chain"
    assert main(["chain", "--config", CHAIN, f"run_dir={run}", *CHAIN_TINY, "prompt.item_match=0.3"]) == 0
    hops = sorted(p for p in run.iterdir() if p.name.startswith("hop"))
    assert len(hops) == 3
    centres = []
    for hop in hops:
        stages = [s for s in ("source", "puma", "full_retrain") if (hop / s / "bank").exists()]
        assert stages, hop
        for stage in stages:
            bank = PromptBank.load(hop / stage / "bank")
            assert bank.head_state["item_match.anchor"].shape[0] == bank.hidden_size  # the hop model's own width
        centres.append(PromptBank.load(hop / stages[0] / "bank").head_state["item_match.centre"])
    assert len({c.shape[0] for c in centres}) == 3  # three models, three embedding tables


def test_the_match_map_carries_each_prompts_item_scores_to_the_target_and_the_vocab_map_does_not():
    from puma_lightning.pipeline.vocab_map import fit_vocab_map, match_map_weight

    gen = torch.Generator().manual_seed(0)
    d_s, d_t, n, s_std, t_std = 12, 16, 4000, 0.2, 1.5
    source = torch.randn(n, d_s, generator=gen) * s_std
    mix = torch.randn(d_s, d_t, generator=gen) * (t_std / s_std / math.sqrt(d_s))  # the target: a linear image, no noise
    target = source @ mix
    prompts, items = torch.randn(5, d_s, generator=gen) * s_std, torch.randn(7, d_s, generator=gen) * s_std
    source_match, target_match = ItemWordMatch(d_s), ItemWordMatch(d_t)
    source_match.set(0.3, torch.zeros(d_s), torch.zeros(d_s), s_std)
    target_match.set(0.3, torch.zeros(d_t), torch.zeros(d_t), t_std)

    def scores(match, p, e):  # [5, 7]: every prompt against every item
        return torch.stack([match(p, e_i.expand(len(p), -1)) for e_i in e], dim=1)

    on_source = scores(source_match, prompts, items)
    carried = scores(target_match, prompts @ match_map_weight(source, target, s_std, t_std, ridge=1e-8), items @ mix)
    torch.testing.assert_close(carried, on_source, atol=1e-3, rtol=1e-3)
    vocab = scores(target_match, prompts @ fit_vocab_map(source, target, 1e-8), items @ mix)
    assert (vocab - on_source).abs().max() > 10 * (carried - on_source).abs().max()  # W W^T is no multiple of I here


@pytest.mark.parametrize("task", ["rating", "click"])
def test_a_flat_head_starts_at_its_bias_for_every_row_and_still_learns(task):
    head = build_head(task)
    head.init_bias(3.0)
    head.start_flat()
    logits = torch.randn(16, head.n_answers, generator=torch.Generator().manual_seed(0))
    out = head(logits)
    assert torch.allclose(out, out[:1].expand_as(out))  # no row-dependent output at the start
    label = torch.rand(16) * 4 + 1 if task == "rating" else (torch.rand(16) > 0.5).float()
    head.loss(logits, out, label).backward()
    last = head.mlp[-1].weight if task == "rating" else head.scale
    assert last.grad is not None and last.grad.abs().sum() > 0  # the zeroed weights are trained


def test_the_item_map_carries_the_term_on_the_catalogue_where_the_token_map_only_approximates_it():
    from puma_lightning.pipeline.vocab_map import TokenPairs, item_map_weight, match_map_weight

    gen = torch.Generator().manual_seed(0)
    d_s, d_t, n, n_items, s_std, t_std = 12, 16, 4000, 9, 0.2, 1.5
    source = torch.randn(n, d_s, generator=gen) * s_std
    mix = torch.randn(d_s, d_t, generator=gen) * (t_std / s_std / math.sqrt(d_s))
    target = source @ mix + torch.randn(n, d_t, generator=gen) * t_std  # tokens: a noisy linear image
    # the catalogue's item embeddings follow another relation than single tokens do (means of several tokens)
    items_s = torch.randn(n_items, d_s, generator=gen) * s_std
    items_t = items_s @ torch.randn(d_s, d_t, generator=gen) * (t_std / s_std / math.sqrt(d_s))
    pairs = TokenPairs(source, target, s_std, t_std, 0.0)
    prompts = torch.randn(5, d_s, generator=gen) * s_std
    source_match, target_match = ItemWordMatch(d_s), ItemWordMatch(d_t)
    source_match.set(0.3, torch.zeros(d_s), items_s.mean(0), s_std)
    target_match.set(0.3, torch.zeros(d_t), items_t.mean(0), t_std)

    def scores(match, p, e):
        return torch.stack([match(p, e_i.expand(len(p), -1)) for e_i in e], dim=1)

    on_source = scores(source_match, prompts, items_s)
    by_items = scores(target_match, prompts @ item_map_weight(pairs, items_s, items_t, ridge=1e-8), items_t)
    by_tokens = scores(target_match, prompts @ match_map_weight(source, target, s_std, t_std, ridge=1e-8), items_t)
    torch.testing.assert_close(by_items, on_source, atol=1e-3, rtol=1e-3)
    assert (by_tokens - on_source).abs().max() > 10 * (by_items - on_source).abs().max()
