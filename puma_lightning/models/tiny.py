"""Tiny random causal LMs with in-process tokenizers, for unit tests and the smoke config.

Nothing here touches the disk or the network: each model is built from a config and seeded, so
the same ``(name, seed)`` always gives the same weights. Three architectures, two tokenizer kinds:

- ``tiny-llama``  (LlamaForCausalLM, hidden 32, 2 layers, 4 heads, untied LM head) and
  ``tiny-qwen2`` (Qwen2ForCausalLM, hidden 40, q/k/v biases, tied head): a word-level (WordPiece)
  tokenizer that adds no BOS (like SmolLM2); unknown ASCII words are spelled letter by letter,
  other characters become ``<unk>``.
- ``tiny-gemma3`` (Gemma3ForCausalLM, hidden 48, one sliding-window and one full-attention layer,
  embeddings scaled by sqrt(48) inside the embedding module, final logit soft-capping): a
  SentencePiece-style Unigram tokenizer with byte fallback that adds ``<bos>`` (like Gemma).

In both tokenizers "1".."5", "Yes", "No" (and their lower-case forms) are single tokens, while
" 1" with a leading space is two tokens in the Gemma-style one, as in the real tokenizers.
"""

from __future__ import annotations

import string
from typing import Callable

import torch
from transformers import PreTrainedModel, PreTrainedTokenizerFast

TINY_MODEL_NAMES: tuple[str, ...] = ("tiny-llama", "tiny-gemma3", "tiny-qwen2")

# Words of the project's templates plus common words, so tiny-model inputs are mostly known tokens.
_WORDS = """
the a an of to and in is for on with as by at from that this it be are was or not but we you they
he she his her their our its user users user's preferences preference information about encoded feature
features predict prediction rating ratings integer between movie movies tv business news headline
headlines item items title titles question answer would will enjoy click clicked interacted
following additionally using all available make whether above have has had which based reviews review
stars star categorized category categories like likes liked love good bad great best worst new old
drama comedy action thriller horror romance documentary animation family fantasy science fiction
mystery crime adventure war western musical history biography sport music show series season episode
film films book books restaurant restaurants bar bars cafe shop shops hotel food pizza coffee
dark light happy sad funny serious quiet loud warm cold bright gentle epic tale story stories night
day city world life love time home road river house king queen man woman girl boy lost last first
one two three four five six seven eight nine ten year years decade
yes no true false maybe very more less most least high low
""".split()

_DIGITS = list("0123456789")
_ANSWER_WORDS = ["Yes", "No", "yes", "no", "Question", "Answer", "We", "Predict", "A", "Using", "Additionally"]
_PUNCT = list(string.punctuation)
_LETTERS = list(string.ascii_letters)


def _word_level_tokenizer() -> PreTrainedTokenizerFast:
    """Word-level tokenizer without BOS (WordPiece over whole words, letter pieces for the rest).

    Known words, digits and punctuation are single tokens; an unknown ASCII word is spelled with
    letter pieces (``##x``); anything else (accents, CJK, emoji) becomes ``<unk>``.
    """
    from tokenizers import Tokenizer, decoders, models, normalizers, pre_tokenizers

    specials = ["<unk>", "<pad>", "<s>", "</s>"]
    vocab: dict[str, int] = {}
    for tok in specials + _DIGITS + _PUNCT + _ANSWER_WORDS + _WORDS + _LETTERS + ["##" + c for c in _LETTERS]:
        vocab.setdefault(tok, len(vocab))
    tk = Tokenizer(models.WordPiece(vocab=vocab, unk_token="<unk>", max_input_chars_per_word=64))
    tk.normalizer = normalizers.NFKC()
    # split on whitespace, then isolate every punctuation mark and every single digit
    tk.pre_tokenizer = pre_tokenizers.Sequence(
        [
            pre_tokenizers.WhitespaceSplit(),
            pre_tokenizers.Punctuation(behavior="isolated"),
            pre_tokenizers.Digits(individual_digits=True),
        ]
    )
    tk.decoder = decoders.WordPiece(prefix="##", cleanup=True)  # joins words with spaces
    return PreTrainedTokenizerFast(
        tokenizer_object=tk,
        unk_token="<unk>",
        pad_token="<pad>",
        bos_token="<s>",
        eos_token="</s>",
        padding_side="right",
        clean_up_tokenization_spaces=False,
    )


def _sentencepiece_style_tokenizer() -> PreTrainedTokenizerFast:
    """Gemma-like tokenizer: Unigram over ▁-marked pieces with byte fallback, adds <bos>."""
    from tokenizers import Tokenizer, decoders, models, normalizers, processors

    specials = ["<pad>", "<eos>", "<bos>", "<unk>"]
    pieces: list[tuple[str, float]] = [(s, 0.0) for s in specials]
    pieces += [(f"<0x{b:02X}>", -20.0) for b in range(256)]
    seen = {p for p, _ in pieces}

    def add(piece: str, score: float) -> None:
        if piece not in seen:
            seen.add(piece)
            pieces.append((piece, score))

    for d in _DIGITS:
        add(d, -2.0)
    for w in _ANSWER_WORDS + _WORDS:
        add(w, -3.0)
        add("▁" + w, -3.0)
    add("▁", -4.0)
    for c in _PUNCT + _LETTERS:
        add(c, -8.0)
        add("▁" + c, -8.0)
    tk = Tokenizer(models.Unigram(pieces, unk_id=3, byte_fallback=True))
    # SentencePiece without a dummy prefix (as Gemma): spaces become ▁ and stay attached to words
    tk.normalizer = normalizers.Replace(" ", "▁")
    tk.decoder = decoders.Sequence([decoders.Replace("▁", " "), decoders.ByteFallback(), decoders.Fuse()])
    tk.post_processor = processors.TemplateProcessing(
        single="<bos> $A", pair="<bos> $A $B", special_tokens=[("<bos>", 2)]
    )
    return PreTrainedTokenizerFast(
        tokenizer_object=tk,
        unk_token="<unk>",
        pad_token="<pad>",
        bos_token="<bos>",
        eos_token="<eos>",
        padding_side="right",
        clean_up_tokenization_spaces=False,
    )


def _tiny_llama(tok: PreTrainedTokenizerFast) -> PreTrainedModel:
    from transformers import LlamaConfig, LlamaForCausalLM

    cfg = LlamaConfig(
        vocab_size=len(tok),
        hidden_size=32,
        intermediate_size=64,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        max_position_embeddings=512,
        tie_word_embeddings=False,
        initializer_range=0.1,
        pad_token_id=tok.pad_token_id,
        bos_token_id=tok.bos_token_id,
        eos_token_id=tok.eos_token_id,
    )
    return LlamaForCausalLM(cfg)


def _tiny_gemma3(tok: PreTrainedTokenizerFast) -> PreTrainedModel:
    from transformers import Gemma3ForCausalLM, Gemma3TextConfig

    cfg = Gemma3TextConfig(
        vocab_size=len(tok),
        hidden_size=48,
        intermediate_size=96,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        head_dim=12,
        sliding_window=8,  # short, so that test sequences cross the window
        layer_types=["sliding_attention", "full_attention"],
        max_position_embeddings=512,
        final_logit_softcapping=30.0,  # exercised by the answer-logit path (real 270M has none)
        tie_word_embeddings=True,
        initializer_range=0.1,
        pad_token_id=tok.pad_token_id,
        bos_token_id=tok.bos_token_id,
        eos_token_id=tok.eos_token_id,
    )
    return Gemma3ForCausalLM(cfg)


def _tiny_qwen2(tok: PreTrainedTokenizerFast) -> PreTrainedModel:
    from transformers import Qwen2Config, Qwen2ForCausalLM

    cfg = Qwen2Config(
        vocab_size=len(tok),
        hidden_size=40,
        intermediate_size=80,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        max_position_embeddings=512,
        tie_word_embeddings=True,
        initializer_range=0.1,
        pad_token_id=tok.pad_token_id,
        bos_token_id=tok.bos_token_id,
        eos_token_id=tok.eos_token_id,
    )
    return Qwen2ForCausalLM(cfg)


_BUILDERS: dict[str, tuple[Callable[[], PreTrainedTokenizerFast], Callable[[PreTrainedTokenizerFast], PreTrainedModel]]] = {
    "tiny-llama": (_word_level_tokenizer, _tiny_llama),
    "tiny-gemma3": (_sentencepiece_style_tokenizer, _tiny_gemma3),
    "tiny-qwen2": (_word_level_tokenizer, _tiny_qwen2),
}


def is_tiny_model(name: str) -> bool:
    """Whether ``name`` is one of the tiny in-process model names."""
    return name in _BUILDERS


def build_tiny_tokenizer(name: str) -> PreTrainedTokenizerFast:
    """The in-process tokenizer of tiny model ``name`` (no files, no network)."""
    if name not in _BUILDERS:
        raise KeyError(f"unknown tiny model {name!r}; choose one of {list(TINY_MODEL_NAMES)}")
    return _BUILDERS[name][0]()


def redraw_weights(model: PreTrainedModel, seed: int) -> None:
    """Draw every weight matrix (and embedding) from N(0, initializer_range) with our own generator, in
    parameter-name order, so a tiny model is the same on every transformers release (their init code
    differs between releases): biases zero, norm weights the identity (0 for Gemma's 1 + w, else 1), padding
    rows zero."""
    std = float(getattr(model.config, "initializer_range", 0.02))
    gen = torch.Generator().manual_seed(seed)
    unit_norm = 0.0 if "gemma" in str(getattr(model.config, "model_type", "")) else 1.0
    with torch.no_grad():
        for name, param in sorted(model.named_parameters(), key=lambda kv: kv[0]):
            if param.dim() >= 2:
                param.copy_(torch.randn(param.shape, generator=gen, dtype=torch.float32) * std)
            elif name.endswith("bias"):
                param.zero_()
            else:  # norm weights: Gemma's norms scale by (1 + w), the others by w
                param.fill_(unit_norm)
        for module in model.modules():  # as transformers does: the padding row of an embedding is zero
            if isinstance(module, torch.nn.Embedding) and module.padding_idx is not None:
                module.weight[module.padding_idx].zero_()


def build_tiny_model(name: str, seed: int = 0) -> tuple[PreTrainedModel, PreTrainedTokenizerFast]:
    """Build tiny model ``name`` with weights fixed by ``seed``, plus its tokenizer.

    The global RNG state is left untouched (weights are drawn inside ``torch.random.fork_rng``).
    """
    if name not in _BUILDERS:
        raise KeyError(f"unknown tiny model {name!r}; choose one of {list(TINY_MODEL_NAMES)}")
    make_tok, make_model = _BUILDERS[name]
    tok = make_tok()
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        model = make_model(tok)
    redraw_weights(model, seed)
    model.config.name_or_path = name
    model.eval()
    return model, tok
