"""``source.bank``: a prompt bank the user already has stands in for training source prompts.

The source stage then reads the imported prompts for the data's users (every one of them must have a prompt), never
trains them, and fits a head on them, frozen, when the bank has none (the head only: its cost is the stage's cost).
The stage saves the bank with its head in ``source/bank`` like a trained one (lineage: the imported bank), so PUMA,
``vocab_map``, polish, the placebo columns and the topologies use it unchanged.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

from omegaconf import DictConfig

from puma_lightning.errors import PumaError
from puma_lightning.io.bank import PromptBank, content_hash, read_manifest


@dataclass(frozen=True)
class ImportedSource:
    """The imported bank and what the source stage records about it."""

    path: Path
    bank: PromptBank
    manifest: dict[str, Any]
    """The bank's manifest as written (its tensors' hashes identify the content)."""

    @property
    def content_hash(self) -> str:
        return self.manifest.get("content_hash") or content_hash(self.manifest)

    @property
    def has_head(self) -> bool:
        return self.bank.head_state is not None

    def record(self) -> dict[str, Any]:
        """What ``stage.json`` and the results table say: where the prompts came from, and where the head."""
        return {"path": str(self.path.resolve()), "content_hash": self.content_hash,
                "made_by": (self.bank.info or {}).get("made_by"), "users": len(self.bank.user_ids),
                "head": "from the bank" if self.has_head else "fitted on the frozen imported prompts"}


def imported_source(cfg: DictConfig) -> ImportedSource | None:
    """The bank ``source.bank`` names (None when unset); a missing or unreadable bank is a one-line error."""
    path = cfg.source.get("bank")
    if not path:
        return None
    path = Path(str(path)).expanduser()
    if not path.exists():
        raise PumaError(f"source.bank={path}: no such folder (make one with `python -m puma_lightning bank import`)")
    return ImportedSource(path, PromptBank.load(path), read_manifest(path))


def check_imported(source: ImportedSource, user_ids: list[str], hidden_size: int, fingerprint: str) -> None:
    """Refuse a bank of another model, or one without a prompt for some of the data's users (naming a few)."""
    source.bank.check_model(hidden_size, fingerprint, where=f"source.bank={source.path}")
    have = set(source.bank.user_ids)
    missing = [u for u in user_ids if u not in have]
    if missing:
        raise PumaError(f"source.bank={source.path}: {len(missing):,} of the data's {len(user_ids):,} users have no prompt in "
                        f"the bank (e.g. {', '.join(repr(u) for u in missing[:3])}); import prompts for them, or keep only "
                        "the bank's users in the interactions")
