"""Shared-prefix KV cache: the cached path equals the plain path (logits and prompt gradients).

Checked for the three tiny families (LLaMA, Gemma-3 with a sliding window shorter than the test
sequences, Qwen2), for the paper's template (one constant prefix) and the item-first one (one prefix
per item, different lengths, left-padded in the cache), on right-padded batches; and for the real
packaged models (``real_model``). Also: LRU budget, reuse across calls, inference mode, fallbacks.
"""

from __future__ import annotations

import logging

import numpy as np
import pytest
import torch
from torch import nn

import puma_lightning.models.cached_forward as cached_forward_mod
from puma_lightning.data.batching import PadCollator
from puma_lightning.data.encoding import TemplateEncoder
from puma_lightning.data.templates import get_template
from puma_lightning.models.backbone import FrozenLM
from puma_lightning.models.loading import load_backbone
from puma_lightning.models.prefix_cache import PrefixKVCache, static_support_reason
from puma_lightning.models.templated_rows import TemplatedRows
from puma_lightning.models.tiny import TINY_MODEL_NAMES

RATING = ("1", "2", "3", "4", "5")
ITEMS = [
    "dark night tale of the lost king",
    "funny family comedy",
    "Zorblax 3000!",
    "a quiet story",
    "funny family comedy",  # repeated item: shares its prefix with row 1 under item_first
    "the city of love and the road home in ten years",
]
TEMPLATES = ("movie", "item_first")


def make_batch(tokenizer, template: str, items=ITEMS, prompt_length: int = 1) -> dict[str, torch.Tensor]:
    """A right-padded batch exactly as the datamodule builds it."""
    enc = TemplateEncoder(tokenizer, get_template(template), prompt_length=prompt_length, max_item_tokens=24)
    samples = []
    for i, text in enumerate(items):
        e = enc.encode_text(text)
        samples.append({"input_ids": e.input_ids, "slot_pos": e.slot_pos, "answer_pos": e.answer_pos,
                        "user": i, "label": 3.0, "row": i})
    return PadCollator(tokenizer.pad_token_id)(samples)


def logits_and_grad(lm: FrozenLM, batch: dict[str, torch.Tensor], prompts: torch.Tensor, cached: bool):
    """Answer logits and d(loss)/d(prompts) through the plain or the cached path."""
    p = prompts.clone().requires_grad_(True)
    args = (TemplatedRows.of(batch), p)
    logits = lm.cached_answer_logits(*args) if cached else lm.plain_answer_logits(*args)
    assert logits is not None
    weights = torch.linspace(-1.0, 1.0, logits.numel()).reshape(logits.shape)
    (logits * weights).sum().backward()
    return logits.detach(), p.grad


def assert_equivalent(lm: FrozenLM, batch: dict[str, torch.Tensor], prompt_length: int, atol: float = 2e-5,
                      grad_rtol: float = 1e-4) -> None:
    gen = torch.Generator().manual_seed(1)
    ids = torch.randint(0, lm.model.get_input_embeddings().weight.shape[0], (len(batch["user"]), prompt_length),
                        generator=gen)
    prompts = lm.embed(ids).detach() + 0.1 * torch.randn(len(batch["user"]), prompt_length, lm.hidden_size, generator=gen)
    plain, g_plain = logits_and_grad(lm, batch, prompts, cached=False)
    cached, g_cached = logits_and_grad(lm, batch, prompts, cached=True)
    scale = max(1.0, float(plain.abs().max()))
    assert float((plain - cached).abs().max()) <= atol * scale
    rel = float((g_plain - g_cached).norm() / g_plain.norm())
    assert rel <= grad_rtol, rel


@pytest.fixture(scope="module", params=TINY_MODEL_NAMES)
def tiny_lm(request) -> FrozenLM:
    b = load_backbone(request.param)
    lm = FrozenLM(b.model, b.tokenizer, RATING, name=b.name, prefix_cache_mb=64)
    assert lm.prefix_cache is not None, lm.prefix_cache_reason
    return lm


# -- equivalence -----------------------------------------------------------------------------------


@pytest.mark.parametrize("template", TEMPLATES)
@pytest.mark.parametrize("prompt_length", [1, 3])
def test_cached_path_equals_plain_path(tiny_lm, template, prompt_length):
    batch = make_batch(tiny_lm.tokenizer, template, prompt_length=prompt_length)
    assert len(set(batch["attention_mask"].sum(1).tolist())) > 1  # really padded
    if template == "item_first":
        assert len(set(batch["slot_pos"].tolist())) > 1  # prefixes of different lengths
        if tiny_lm.name == "tiny-gemma3":
            assert int(batch["slot_pos"].max()) > tiny_lm.model.config.sliding_window  # crosses the window
    else:
        assert len(set(batch["slot_pos"].tolist())) == 1
    assert_equivalent(tiny_lm, batch, prompt_length)


def test_answer_logits_dispatches_to_cache_and_shares_prefixes(tiny_lm):
    cache = tiny_lm.prefix_cache
    cache.clear()
    before = (cache.stats.hits, cache.stats.misses)
    batch = make_batch(tiny_lm.tokenizer, "item_first")
    prompts = torch.zeros(len(ITEMS), 1, tiny_lm.hidden_size)
    args = (TemplatedRows.of(batch), prompts)
    first = tiny_lm.answer_logits(*args)
    distinct = len(set(ITEMS))
    assert len(cache) == distinct and cache.stats.misses - before[1] == distinct
    second = tiny_lm.answer_logits(*args)  # every prefix from the cache now
    assert cache.stats.hits - before[0] == distinct and cache.stats.misses - before[1] == distinct
    assert torch.equal(first, second)
    torch.testing.assert_close(first, tiny_lm.plain_answer_logits(*args), atol=2e-5, rtol=2e-5)


def test_prefix_entries_never_require_grad_and_model_gets_none(tiny_lm):
    batch = make_batch(tiny_lm.tokenizer, "movie")
    prompts = torch.randn(len(ITEMS), 1, tiny_lm.hidden_size, requires_grad=True)
    logits = tiny_lm.answer_logits(TemplatedRows.of(batch), prompts)
    logits.sum().backward()
    assert prompts.grad is not None and float(prompts.grad.abs().sum()) > 0
    assert all(p.grad is None for p in tiny_lm.model.parameters())
    assert all(not kv.requires_grad for kv in tiny_lm.prefix_cache._entries.values())


def test_entries_made_in_inference_mode_serve_training_steps():
    b = load_backbone("tiny-llama")
    lm = FrozenLM(b.model, b.tokenizer, RATING, prefix_cache_mb=8)
    batch = make_batch(lm.tokenizer, "item_first")
    rows = TemplatedRows.of(batch)
    with torch.inference_mode():  # as in Lightning's validation loop
        lm.answer_logits(rows, torch.zeros(len(ITEMS), 1, lm.hidden_size))
    prompts = torch.randn(len(ITEMS), 1, lm.hidden_size, requires_grad=True)
    lm.answer_logits(rows, prompts).sum().backward()  # reuses those entries
    assert lm.prefix_cache.stats.hits == len(set(ITEMS)) and prompts.grad is not None


# -- the LRU store ---------------------------------------------------------------------------------


def test_lru_budget_and_eviction():
    cache = PrefixKVCache(max_mb=3 * 4 / 2**20 * 100)  # room for three entries of 100 float32
    for k in "abc":
        assert cache.put(k, torch.zeros(100))
    assert cache.get("a") is not None  # "a" is now the most recent
    cache.put("d", torch.zeros(100))
    assert "b" not in cache and {"a", "c", "d"} <= set(cache._entries) and cache.stats.evictions == 1
    assert not cache.put("huge", torch.zeros(1000)) and cache.stats.uncached == 1
    assert cache.bytes == 3 * 400
    cache.clear()
    assert len(cache) == 0 and cache.bytes == 0
    with pytest.raises(ValueError):
        PrefixKVCache(-1)


def test_constant_head_is_a_function_of_the_template(tiny_lm):
    item_first = TemplateEncoder(tiny_lm.tokenizer, get_template("item_first"), max_item_tokens=24)
    head = item_first.constant_head()
    prefixes = [item_first.encode_text(t) for t in ITEMS]
    assert 0 < len(head) < min(e.slot_pos for e in prefixes)
    assert all(e.input_ids[: len(head)] == head for e in prefixes)
    movie = TemplateEncoder(tiny_lm.tokenizer, get_template("movie"), max_item_tokens=24)
    assert movie.constant_head() == movie.encode_text(ITEMS[0]).input_ids[: movie.encode_text(ITEMS[0]).slot_pos]


def test_template_head_is_computed_once_and_prefixes_continue_it(tiny_lm, monkeypatch):
    """With the stem set, missing prefixes run only their item part on top of the cached head: same results."""
    calls = []
    real = cached_forward_mod.compute_prefix_kv

    def spy(body, prefixes, device, **kw):
        calls.append((len(prefixes), [len(p) for p in prefixes], kw.get("stem_kv") is not None))
        return real(body, prefixes, device, **kw)

    monkeypatch.setattr(cached_forward_mod, "compute_prefix_kv", spy)
    encoder = TemplateEncoder(tiny_lm.tokenizer, get_template("item_first"), max_item_tokens=24)
    head = encoder.constant_head()
    tiny_lm.prefix_cache.clear()
    tiny_lm.set_prefix_stem(head)
    try:
        batch = make_batch(tiny_lm.tokenizer, "item_first")
        assert_equivalent(tiny_lm, batch, 1)
    finally:
        tiny_lm.set_prefix_stem(None)
    assert calls[0] == (1, [len(head)], False)  # the head, once
    assert all(with_stem for _, _, with_stem in calls[1:]) and len(calls) >= 2
    rests = [n for _, lengths, _ in calls[1:] for n in lengths]
    slots = sorted({e.slot_pos for e in (encoder.encode_text(t) for t in ITEMS)})
    assert sorted(set(rests)) == [s - len(head) for s in slots]  # only the tokens after the head ran


def test_zero_budget_still_computes_the_cached_path():
    b = load_backbone("tiny-qwen2")
    lm = FrozenLM(b.model, b.tokenizer, RATING, prefix_cache_mb=0)
    batch = make_batch(lm.tokenizer, "movie")
    assert_equivalent(lm, batch, 1)
    assert len(lm.prefix_cache) == 0 and lm.prefix_cache.stats.uncached > 0


# -- fallbacks -------------------------------------------------------------------------------------


def test_static_reasons():
    class NoCacheBody(nn.Module):
        def forward(self, inputs_embeds=None, attention_mask=None):  # no past_key_values
            return inputs_embeds

    b = load_backbone("tiny-llama")
    assert static_support_reason(b.model, b.model.model) is None
    assert "no key/value cache argument" in static_support_reason(b.model, NoCacheBody())
    b.model.config.layer_types = ["linear_attention", "full_attention"]
    assert "linear_attention" in static_support_reason(b.model, b.model.model)


class _ForwardingBody(nn.Module):
    """Wraps a real decoder body; subclasses name the cache argument as one transformers API does."""

    def __init__(self, body: nn.Module) -> None:
        super().__init__()
        from puma_lightning.models.prefix_cache import cache_argument

        self.body, self.real_argument = body, cache_argument(body)
        self.calls = 0

    def run(self, cache, kw, **args):
        assert not {"cache", "past_key_values"} & set(kw), f"cache passed under both names: {sorted(kw)}"
        self.calls += 1
        return self.body(**args, **kw, **{self.real_argument: cache})


class NewApiBody(_ForwardingBody):  # transformers >= 5.24
    def forward(self, input_ids=None, attention_mask=None, position_ids=None, cache=None, inputs_embeds=None,
                use_cache=None, **kw):
        return self.run(cache, kw, input_ids=input_ids, attention_mask=attention_mask, position_ids=position_ids,
                        inputs_embeds=inputs_embeds, use_cache=use_cache)


class OldApiBody(_ForwardingBody):  # transformers < 5.24
    def forward(self, input_ids=None, attention_mask=None, position_ids=None, past_key_values=None, inputs_embeds=None,
                use_cache=None, **kw):
        return self.run(past_key_values, kw, input_ids=input_ids, attention_mask=attention_mask,
                        position_ids=position_ids, inputs_embeds=inputs_embeds, use_cache=use_cache)


@pytest.mark.parametrize("wrapper,argument", [(NewApiBody, "cache"), (OldApiBody, "past_key_values")])
def test_both_decoder_cache_argument_names(wrapper, argument, monkeypatch):
    """Decoders that take ``cache=`` (transformers >= 5.24) and ``past_key_values=`` (older) both run cached."""
    from puma_lightning.models.prefix_cache import cache_argument

    b = load_backbone("tiny-llama")
    body = wrapper(b.model.model)
    assert cache_argument(body) == argument
    assert static_support_reason(b.model, body) is None
    monkeypatch.setattr(type(b.model), "get_decoder", lambda self: body)
    lm = FrozenLM(b.model, b.tokenizer, RATING, prefix_cache_mb=8)
    assert lm.prefix_cache is not None, lm.prefix_cache_reason
    for template in TEMPLATES:
        assert_equivalent(lm, make_batch(lm.tokenizer, template), 1)
    assert body.calls > 2  # probe + prefixes + suffixes went through the wrapper, under its own argument name


def test_cached_path_raises_no_warning(tiny_lm):
    """Our calls into the decoder use its current argument names: no deprecation or other warning."""
    import warnings

    tiny_lm.prefix_cache.clear()
    batch = make_batch(tiny_lm.tokenizer, "item_first")
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        assert_equivalent(tiny_lm, batch, 1)
        tiny_lm.enable_prefix_cache(8)
    assert not [str(w.message) for w in caught]


def test_probe_mismatch_falls_back_with_a_logged_reason(monkeypatch, caplog):
    b = load_backbone("tiny-gemma3")
    real = cached_forward_mod.batch_cache

    def wrong_positions(entries, lengths, inverse, batch):  # drops the first cached token
        cache = real(entries, lengths, inverse, batch)
        for layer in cache.layers:
            layer.keys = layer.keys.roll(1, dims=2)
        return cache

    monkeypatch.setattr(cached_forward_mod, "batch_cache", wrong_positions)
    with caplog.at_level(logging.WARNING):
        lm = FrozenLM(b.model, b.tokenizer, RATING, prefix_cache_mb=8)
    assert lm.prefix_cache is None and "differ" in lm.prefix_cache_reason
    assert "prefix KV cache not used" in caplog.text
    batch = make_batch(lm.tokenizer, "movie")
    prompts = torch.zeros(len(ITEMS), 1, lm.hidden_size)
    out = lm.answer_logits(TemplatedRows.of(batch), prompts)
    assert out.shape == (len(ITEMS), 5)  # the plain path


def test_rows_without_prefix_use_the_plain_path(tiny_lm):
    ids = torch.randint(5, 50, (2, 6))
    prompts = torch.randn(2, 1, tiny_lm.hidden_size)
    slot, answer = torch.tensor([0, 2]), torch.tensor([5, 5])
    assert tiny_lm.cached_answer_logits(TemplatedRows(ids, None, slot, answer), prompts) is None
    before = tiny_lm.prefix_cache.stats.plain_batches
    out = tiny_lm.answer_logits(TemplatedRows(ids, None, slot, answer), prompts)
    torch.testing.assert_close(out, tiny_lm.plain_answer_logits(TemplatedRows(ids, None, slot, answer), prompts))
    assert tiny_lm.prefix_cache.stats.plain_batches == before + 1  # counted, never silent


def test_slot_out_of_range_is_an_error(tiny_lm):
    ids = torch.randint(5, 50, (2, 6))
    prompts = torch.randn(2, 2, tiny_lm.hidden_size)
    with pytest.raises(ValueError, match="outside"):
        tiny_lm.splice(ids, torch.tensor([1, 5]), prompts)
    with pytest.raises(ValueError, match="outside"):
        tiny_lm.splice(ids, 5, prompts)
    with pytest.raises(ValueError, match="outside"):
        tiny_lm.cached_answer_logits(TemplatedRows(ids, None, torch.tensor([1, 5]), torch.tensor([5, 5])), prompts)


# -- real models -----------------------------------------------------------------------------------


@pytest.mark.real_model
def test_smollm2_cached_path_equals_plain_path():
    """SmolLM2-135M (LLaMA family) in fp32, both templates, short padded batches of 3 rows.

    (Gemma-3-270M passes the same check; it is left out here to keep this file under a minute.)
    """
    b = load_backbone("smollm2-135m", dtype="float32")
    lm = FrozenLM(b.model, b.tokenizer, RATING, name="smollm2-135m", prefix_cache_mb=256)
    assert lm.prefix_cache is not None, lm.prefix_cache_reason
    items = ["funny family comedy", "a quiet story", "funny family comedy tale"]
    for template in TEMPLATES:
        batch = make_batch(lm.tokenizer, template, items=items)
        assert_equivalent(lm, batch, 1, atol=5e-5, grad_rtol=2e-4)
    # item prefixes computed on top of the template's constant head
    lm.prefix_cache.clear()
    lm.set_prefix_stem(TemplateEncoder(lm.tokenizer, get_template("item_first"), max_item_tokens=24).constant_head())
    assert_equivalent(lm, make_batch(lm.tokenizer, "item_first", items=items), 1, atol=5e-5, grad_rtol=2e-4)


@pytest.mark.slow
def test_compiled_layers_match_eager_on_both_paths() -> None:
    """``model.compile``: compiled decoder layers give the eager logits and prompt gradients, on the
    plain and the cached path, and switching off restores the eager call."""
    b = load_backbone("tiny-llama")
    eager_lm = FrozenLM(b.model, b.tokenizer, RATING, name=b.name, prefix_cache_mb=64)
    batch = make_batch(b.tokenizer, "item_first")
    prompts = torch.randn(len(ITEMS), 1, eager_lm.hidden_size, generator=torch.Generator().manual_seed(3)) * 0.1
    expected = {cached: logits_and_grad(eager_lm, batch, prompts, cached) for cached in (False, True)}
    eager_lm.set_compiled(True)
    assert eager_lm.compiled
    for cached in (False, True):
        eager_lm.prefix_cache.clear()
        logits, grad = logits_and_grad(eager_lm, batch, prompts, cached)
        torch.testing.assert_close(logits, expected[cached][0], atol=1e-4, rtol=1e-4)
        torch.testing.assert_close(grad, expected[cached][1], atol=1e-5, rtol=1e-3)
    eager_lm.set_compiled(False)
    assert not eager_lm.compiled


def test_compile_key_reaches_the_backbone() -> None:
    from puma_lightning.cli.config_loader import load_config
    from puma_lightning.pipeline.builders import load_frozen_lm

    cfg = load_config([], ["target.name=tiny-qwen2", "target.compile=true", "target.prefix_cache_mb=null"])
    lm = load_frozen_lm(cfg.target, cfg.data, None)
    assert lm.compiled and lm.prefix_cache is None
    cfg = load_config([], ["target.name=tiny-qwen2"])
    assert not load_frozen_lm(cfg.target, cfg.data, None).compiled


def test_fixed_groups_make_prefixes_independent_of_cache_state(monkeypatch):
    """With fixed groups, a prefix is always computed with the same group-mates: cold, warm (other
    batches cached first) and evicted caches give bit-identical answer logits, in bf16."""
    monkeypatch.setattr(cached_forward_mod, "PREFIX_GROUP", 2)
    b = load_backbone("tiny-gemma3", dtype="bfloat16")
    lm = FrozenLM(b.model, b.tokenizer, RATING, prefix_cache_mb=64)
    enc = TemplateEncoder(lm.tokenizer, get_template("item_first"), max_item_tokens=24)
    lm.set_prefix_stem(enc.constant_head())
    lm.set_prefix_groups([e.input_ids[: e.slot_pos] for e in map(enc.encode_text, ITEMS)])
    full, part = make_batch(lm.tokenizer, "item_first"), make_batch(lm.tokenizer, "item_first", items=ITEMS[2:5])
    prompts = torch.randn(len(ITEMS), 1, lm.hidden_size, generator=torch.Generator().manual_seed(0)).bfloat16()

    def logits(batch):
        n = len(batch["user"])
        return lm.answer_logits(TemplatedRows.of(batch), prompts[:n])

    cold = logits(full)
    lm.clear_prefix_cache()
    logits(part)  # other batch-mates first
    warm = logits(full)
    lm.clear_prefix_cache()
    lm.prefix_cache.max_bytes = 1  # nothing fits: every prefix recomputed, every time
    evicted = logits(full)
    assert torch.equal(cold, warm) and torch.equal(cold, evicted)
    plain = lm.plain_answer_logits(TemplatedRows.of(full), prompts)
    assert float((plain - cold).abs().max()) < 0.1 * max(1.0, float(plain.abs().max()))  # and still the same function


def test_datamodule_lists_every_item_prefix():
    from puma_lightning.data.datamodule import PromptDataModule
    from puma_lightning.data.synthetic import make_synthetic

    b = load_backbone("tiny-llama")
    table = make_synthetic(seed=0, n_users=6, n_items=9, rows_per_user=6)
    dm = PromptDataModule(table, b.tokenizer, get_template("item_first"), max_item_tokens=24)
    universe = dm.prefix_universe()
    assert len(universe) == len(np.unique(table.item)) <= table.n_items
    assert all(p[: len(dm.encoder.constant_head())] == dm.encoder.constant_head() for p in universe)
