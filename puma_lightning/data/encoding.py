"""Tokenisation of a template around the user-prompt slot.

Each sample's token sequence is ``[BOS?] + ids(before) + [fill] * prompt_length + ids(after)``:
the ``prompt_length`` fill positions starting at ``slot_pos`` get their input embeddings replaced
by the user's soft prompt, and the next-token logits at ``answer_pos`` (the last token) are read.
When the template depends only on the item, each item is tokenised once and cached; when it uses
``{history}`` (per-row text from ``InteractionTable.row_text``) samples are encoded per row, from
cached tokenisations of each distinct text before and after the slot.
"""

from __future__ import annotations

from dataclasses import dataclass

from transformers import PreTrainedTokenizerBase

from .templates import NO_HISTORY, Template


@dataclass(frozen=True)
class EncodedItem:
    """Token ids of one item's filled template and where the slot and answer sit."""

    input_ids: tuple[int, ...]
    slot_pos: int
    """Index of the first of the ``prompt_length`` slot positions."""
    answer_pos: int
    """Index whose next-token logits are read (the last token)."""


def special_prefix(tokenizer: PreTrainedTokenizerBase) -> list[int]:
    """Ids the tokenizer puts before the text by itself (e.g. ``[bos]``), ``[]`` if none.

    Found by comparing the encoding of ``"a"`` with and without special tokens; anything the
    tokenizer appends (an EOS) is ignored, since the answer must be the last token.
    """
    with_special = list(tokenizer("a")["input_ids"])
    plain = list(tokenizer("a", add_special_tokens=False)["input_ids"])
    for start in range(len(with_special) - len(plain) + 1):
        if with_special[start : start + len(plain)] == plain:
            return with_special[:start]
    return []


class TemplateEncoder:
    """Tokenises a template around the user slot for each item, once per item index."""

    def __init__(
        self,
        tokenizer: PreTrainedTokenizerBase,
        template: Template,
        prompt_length: int = 1,
        max_item_tokens: int | None = 48,
    ) -> None:
        if prompt_length < 1:
            raise ValueError(f"prompt_length must be >= 1, got {prompt_length}")
        self.tokenizer = tokenizer
        self.template = template
        self.prompt_length = prompt_length
        self.max_item_tokens = max_item_tokens
        self.prefix = special_prefix(tokenizer)
        self.fill_id = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else 0
        """Placeholder id at the slot; its embedding is replaced by the soft prompt."""
        self._cache: dict[int, EncodedItem] = {}
        self._item_ids: dict[int, tuple[int, ...]] = {}
        self._truncated: dict[int, str] = {}
        self._parts: dict[str, list[int]] = {}

    def _ids(self, text: str) -> list[int]:
        return list(self.tokenizer(text, add_special_tokens=False)["input_ids"]) if text else []

    def truncate_item(self, item_text: str) -> str:
        """The item text cut to ``max_item_tokens`` tokens (decoded back to a string)."""
        if self.max_item_tokens is None:
            return item_text
        ids = self._ids(item_text)
        if len(ids) <= self.max_item_tokens:
            return item_text
        return self.tokenizer.decode(ids[: self.max_item_tokens], skip_special_tokens=True).strip()

    def item_token_ids(self, item_index: int, item_text: str) -> tuple[int, ...]:
        """The item text's own token ids (no template, no special tokens), the first ``max_item_tokens`` of them;
        cached by item index. What the item-word match term averages (``models/item_match.py``)."""
        item_index = int(item_index)
        hit = self._item_ids.get(item_index)
        if hit is None:
            hit = self._item_ids[item_index] = item_text_token_ids(self.tokenizer, item_text, self.max_item_tokens)
        return hit

    def encode_text(self, item_text: str, history: str = NO_HISTORY) -> EncodedItem:
        """Encode one item's text (and a row's history text, if the template uses it); no caching."""
        before, after = self.template.render(self.truncate_item(item_text), history)
        head = self.prefix + self._ids(before)
        tail = self._ids(after)
        if not tail:
            raise ValueError(f"template {self.template.name!r} has no text after the slot for the answer cue")
        ids = head + [self.fill_id] * self.prompt_length + tail
        return EncodedItem(tuple(ids), slot_pos=len(head), answer_pos=len(ids) - 1)

    def constant_head(self) -> tuple[int, ...]:
        """Tokens that every row's text before the slot starts with, whatever its item and history.

        The common start of two renderings with unrelated placeholder texts: a function of the
        template and tokenizer alone (not of the data), so every stage and split agrees on it. A real
        item whose first characters merge with the head's last token simply does not start with it.
        """
        a = self.prefix + self._ids(self.template.render("x", "x")[0])
        b = self.prefix + self._ids(self.template.render("Q9", "Q9")[0])
        n = 0
        while n < min(len(a), len(b)) and a[n] == b[n]:
            n += 1
        return tuple(a[:n])

    def _part(self, text: str) -> list[int]:
        hit = self._parts.get(text)
        if hit is None:
            hit = self._parts[text] = self._ids(text)
        return hit

    def _row_parts(self, item_index: int, item_text: str, history: str) -> tuple[list[int], list[int]]:
        item_index = int(item_index)
        item = self._truncated.get(item_index)
        if item is None:
            item = self._truncated[item_index] = self.truncate_item(item_text)
        before, after = self.template.render(item, history)
        tail = self._part(after)
        if not tail:
            raise ValueError(f"template {self.template.name!r} has no text after the slot for the answer cue")
        return self.prefix + self._part(before), tail

    def row_length(self, item_index: int, item_text: str, history: str) -> int:
        """Token count of :meth:`encode_row` without building the ids."""
        head, tail = self._row_parts(item_index, item_text, history)
        return len(head) + self.prompt_length + len(tail)

    def encode_row(self, item_index: int, item_text: str, history: str) -> EncodedItem:
        """Encode one row of a template that uses ``{history}`` (the text parts' tokens are cached)."""
        head, tail = self._row_parts(item_index, item_text, history)
        ids = head + [self.fill_id] * self.prompt_length + tail
        return EncodedItem(tuple(ids), slot_pos=len(head), answer_pos=len(ids) - 1)

    def encode(self, item_index: int, item_text: str) -> EncodedItem:
        """Encode the template for an item, cached by item index."""
        item_index = int(item_index)
        hit = self._cache.get(item_index)
        if hit is None:
            hit = self._cache[item_index] = self.encode_text(item_text)
        return hit


def item_text_token_ids(tokenizer: PreTrainedTokenizerBase, item_text: str, max_tokens: int | None) -> tuple[int, ...]:
    """An item text's own token ids (no special tokens), the first ``max_tokens`` of them (all when None)."""
    ids = list(tokenizer(item_text, add_special_tokens=False)["input_ids"]) if item_text else []
    return tuple(ids if max_tokens is None else ids[:max_tokens])
