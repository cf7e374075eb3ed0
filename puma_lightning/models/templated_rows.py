"""A batch of templated token rows: what the frozen model needs, besides the prompts, to answer.

Every forward of :class:`~puma_lightning.models.backbone.FrozenLM` (plain or through the prefix
cache) reads the same four things of a batch: the token ids, their padding mask, where each row's
soft prompt is spliced in (``slot_pos``) and where its answer is read (``answer_pos``). They travel
together as one :class:`TemplatedRows`, so call sites cannot swap two positional tensors.
"""

from __future__ import annotations

from typing import Mapping, NamedTuple

from torch import Tensor

class TemplatedRows(NamedTuple):
    """Right-padded token rows of a template with a soft-prompt slot."""

    input_ids: Tensor
    """Token ids ``[B, T]``."""
    attention_mask: Tensor | None
    """``[B, T]``, 1 on real tokens (None: every token is real)."""
    slot_pos: int | Tensor
    """Where each row's prompt rows go (an int for all rows, or ``[B]``); the ids there are placeholders."""
    answer_pos: int | Tensor
    """Each row's last real token, the answer cue (an int or ``[B]``)."""

    @classmethod
    def of(cls, batch: Mapping[str, Tensor]) -> TemplatedRows:
        """The rows of a datamodule batch (its ``input_ids``, ``attention_mask``, ``slot_pos`` and ``answer_pos``; other
        keys such as labels are ignored)."""
        return cls(batch["input_ids"], batch.get("attention_mask"), batch["slot_pos"], batch["answer_pos"])

    def select(self, index: Tensor) -> TemplatedRows:
        """The rows at ``index`` (``[k]`` long, on the rows' device); int positions stay ints."""
        def pick(value: int | Tensor | None) -> int | Tensor | None:
            return value.index_select(0, index) if isinstance(value, Tensor) and value.dim() > 0 else value

        return TemplatedRows(pick(self.input_ids), pick(self.attention_mask), pick(self.slot_pos), pick(self.answer_pos))
