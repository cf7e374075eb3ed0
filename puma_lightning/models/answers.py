"""Answer tokens: which vocabulary entries a template's answers ("1".."5", "Yes") are read from.

A tokenizer may store an answer as the bare string, with a SentencePiece space ("▁5") or with a
byte-level space ("Ġ5"); the first form that is a single token wins, and an answer no form
encodes as one token is a ``ValueError`` naming the forms tried.
"""

from __future__ import annotations

from typing import Any, Sequence

SENTENCEPIECE_SPACE = "▁"
BYTE_LEVEL_SPACE = "Ġ"


def _tokenizer_label(tokenizer: Any) -> str:
    name = getattr(tokenizer, "name_or_path", "") or ""
    return f"{type(tokenizer).__name__}({name!r})" if name else type(tokenizer).__name__


def resolve_answer_ids(tokenizer: Any, answers: Sequence[str]) -> list[int]:
    """Single token id of each answer string, checked to decode back to it.

    First ``tokenizer(ans, add_special_tokens=False)``; if that is not exactly one token (e.g.
    a tokenizer that splits "1" into [space, "1"]), the vocabulary entry of the exact string, then
    its SentencePiece / byte-level forms. Raises ``ValueError`` naming tokenizer and answer when
    none is a single token.
    """
    unk = getattr(tokenizer, "unk_token_id", None)
    vocab = tokenizer.get_vocab()
    ids: list[int] = []
    for ans in answers:
        found: int | None = None
        enc = tokenizer(ans, add_special_tokens=False)["input_ids"]
        if len(enc) == 1 and tokenizer.decode(enc) == ans:
            found = int(enc[0])
        else:
            candidates = [ans, SENTENCEPIECE_SPACE + ans, BYTE_LEVEL_SPACE + ans]
            # exact decodes first, then forms that decode to the answer after a leading space
            for strict in (True, False):
                for tok in candidates:
                    tid = vocab.get(tok)
                    if tid is None or tid == unk:
                        continue
                    text = tokenizer.decode([tid])
                    if text == ans or (not strict and text.strip() == ans):
                        found = int(tid)
                        break
                if found is not None:
                    break
        if found is None:
            raise ValueError(
                f"answer {ans!r} is not a single token of tokenizer {_tokenizer_label(tokenizer)}: "
                f"it splits into {len(enc)} pieces {pieces(tokenizer, enc)} (ids {enc}) and no vocabulary entry "
                f"{candidates_repr(ans)} exists"
            )
        ids.append(found)
    if len(set(ids)) != len(ids):
        raise ValueError(f"answers {list(answers)} map to repeated token ids {ids}")
    return ids


def pieces(tokenizer: Any, ids: Sequence[int]) -> list[str]:
    """The vocabulary entries of ``ids`` (how a tokenizer split a string), for error messages."""
    try:
        return [str(t) for t in tokenizer.convert_ids_to_tokens(list(ids))]
    except Exception:  # a tokenizer without the method: decode one by one
        return [tokenizer.decode([i]) for i in ids]


def candidates_repr(ans: str) -> str:
    """The vocabulary forms tried for an answer, for error messages."""
    return ", ".join(repr(t) for t in (ans, SENTENCEPIECE_SPACE + ans, BYTE_LEVEL_SPACE + ans))
