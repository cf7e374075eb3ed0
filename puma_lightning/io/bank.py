"""Prompt banks: every user's soft prompt for one model, with a manifest saying what they are.

A bank is a folder holding ``prompts.safetensors`` (one float32 tensor ``[N, l, d]``) and
``manifest.json`` (model name and fingerprint, hidden size, prompt length, user ids in row
order, dataset, template, how the bank was made, and the tensor file's sha256). The folder is
written atomically; loading checks the hash, and using a bank on a model of another width or
fingerprint is refused with a clear message.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Sequence

import numpy as np
import torch
from safetensors.torch import load_file, save_file

from puma_lightning.errors import PumaError
from puma_lightning.io.atomic import atomic_dir

TENSOR_FILE = "prompts.safetensors"
HEAD_FILE = "head.safetensors"
MANIFEST_FILE = "manifest.json"
FORMAT_VERSION = 1


class BankError(PumaError):
    """A prompt bank that cannot be read or does not fit the model it is used with."""


def _sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as fh:
        for chunk in iter(lambda: fh.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


@dataclass
class PromptBank:
    """Soft prompts ``[N, l, d]`` for the users ``user_ids`` on one model."""

    prompts: torch.Tensor
    user_ids: list[str]
    model_name: str
    model_fingerprint: str
    info: dict[str, Any] = field(default_factory=dict)
    """Dataset, template, how the bank was made (pretrain / migrate), metrics at creation."""
    head_state: dict[str, torch.Tensor] | None = None
    """The rating/click head trained with these prompts, so the bank can be evaluated on its own."""

    def __post_init__(self) -> None:
        if self.prompts.ndim != 3:
            raise BankError(f"prompts must be [users, length, hidden], got shape {tuple(self.prompts.shape)}")
        if self.prompts.shape[0] != len(self.user_ids):
            raise BankError(f"{self.prompts.shape[0]} prompt rows but {len(self.user_ids)} user ids")
        if len(set(self.user_ids)) != len(self.user_ids):
            raise BankError("user ids in a bank must be unique")

    @property
    def hidden_size(self) -> int:
        return int(self.prompts.shape[2])

    @property
    def prompt_length(self) -> int:
        return int(self.prompts.shape[1])

    def manifest(self) -> dict[str, Any]:
        return {
            "format_version": FORMAT_VERSION,
            "model_name": self.model_name,
            "model_fingerprint": self.model_fingerprint,
            "hidden_size": self.hidden_size,
            "prompt_length": self.prompt_length,
            "num_users": len(self.user_ids),
            "user_ids": list(self.user_ids),
            "info": self.info,
        }

    def save(self, path: str | Path) -> Path:
        """Write the bank folder atomically; returns its path."""
        path = Path(path)
        with atomic_dir(path) as tmp:
            tensor_path = tmp / TENSOR_FILE
            save_file({"prompts": self.prompts.detach().float().cpu().contiguous()}, str(tensor_path))
            manifest = self.manifest()
            manifest["sha256"] = _sha256(tensor_path)
            if self.head_state is not None:
                save_file({k: v.detach().float().cpu().contiguous() for k, v in self.head_state.items()}, str(tmp / HEAD_FILE))
                manifest["head_sha256"] = _sha256(tmp / HEAD_FILE)
            (tmp / MANIFEST_FILE).write_text(json.dumps(manifest, indent=1), encoding="utf-8")
        return path

    @classmethod
    def load(cls, path: str | Path) -> "PromptBank":
        """Read a bank folder, verifying its manifest and tensor hash."""
        path = Path(path)
        manifest_path, tensor_path = path / MANIFEST_FILE, path / TENSOR_FILE
        if not manifest_path.is_file() or not tensor_path.is_file():
            raise BankError(f"{path}: not a prompt bank (expected {MANIFEST_FILE} and {TENSOR_FILE})")
        try:
            manifest = json.loads(manifest_path.read_text(encoding="utf-8"))
        except (json.JSONDecodeError, UnicodeDecodeError) as exc:
            raise BankError(f"{manifest_path}: not valid JSON ({exc})") from None
        for key in ("model_name", "model_fingerprint", "user_ids", "sha256"):
            if key not in manifest:
                raise BankError(f"{manifest_path}: missing key {key!r}")
        if _sha256(tensor_path) != manifest["sha256"]:
            raise BankError(f"{tensor_path}: content hash does not match the manifest (file changed or corrupted)")
        try:
            prompts = load_file(str(tensor_path))["prompts"]
        except Exception as exc:  # safetensors raises its own error types
            raise BankError(f"{tensor_path}: cannot read tensor ({exc})") from None
        head_state = None
        if "head_sha256" in manifest:
            head_path = path / HEAD_FILE
            if not head_path.is_file() or _sha256(head_path) != manifest["head_sha256"]:
                raise BankError(f"{head_path}: missing or its hash does not match the manifest")
            head_state = load_file(str(head_path))
        return cls(prompts, list(manifest["user_ids"]), manifest["model_name"], manifest["model_fingerprint"],
                   manifest.get("info", {}), head_state)

    def check_model(self, hidden_size: int, fingerprint: str | None = None, *, where: str = "bank") -> None:
        """Refuse a model of another width or (when given) another fingerprint."""
        if hidden_size != self.hidden_size:
            raise BankError(
                f"{where}: prompts have hidden size {self.hidden_size} (model {self.model_name}) "
                f"but the model has {hidden_size}; migrate the bank first"
            )
        if fingerprint is not None and fingerprint != self.model_fingerprint:
            raise BankError(
                f"{where}: made for model {self.model_name} (fingerprint {self.model_fingerprint}) "
                f"but used with fingerprint {fingerprint}"
            )

    def rows_for(self, user_ids: Sequence[str]) -> torch.Tensor:
        """Prompts ``[len(user_ids), l, d]`` in the order of ``user_ids``; every id must be present."""
        index = {u: i for i, u in enumerate(self.user_ids)}
        missing = [u for u in user_ids if u not in index]
        if missing:
            raise BankError(f"{len(missing)} users are not in the bank (first: {missing[:3]})")
        rows = torch.as_tensor(np.fromiter((index[u] for u in user_ids), dtype=np.int64, count=len(user_ids)))
        return self.prompts.index_select(0, rows)
