"""Prompt banks: every user's soft prompt for one model, with a manifest saying what they are.

A bank is a folder holding ``prompts.safetensors`` (one float32 tensor ``[N, l, d]``) and
``manifest.json`` (model name and fingerprint, hidden size, prompt length, user ids in row
order, dataset, template, how the bank was made, and the tensor file's sha256). The folder is
written atomically; loading checks the hash, and using a bank on a model of another width or
fingerprint is refused with a clear message.

Banks for millions of users are sharded: ``prompts-00000-of-000NN.safetensors`` files of at most
``rows_per_shard`` rows each, listed in the manifest (``shards``: file, rows, sha256). A bank with
a single ``prompts.safetensors`` is the same format with one implicit shard. ``PromptBank.load``
reads every shard (existing callers see no difference); ``PromptBank.open`` returns a
:class:`LazyPromptBank` that reads only the manifest and fetches rows on demand, opening (and
hash-checking) only the shards that hold them, through memory-mapped ``safe_open``.
"""

from __future__ import annotations

import hashlib
import json
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterable, Iterator, Sequence

import numpy as np
import torch
from safetensors import safe_open
from safetensors.torch import load_file, save_file

from puma_lightning.errors import PumaError
from puma_lightning.io.atomic import atomic_dir

TENSOR_FILE = "prompts.safetensors"
HEAD_FILE = "head.safetensors"
MANIFEST_FILE = "manifest.json"
FORMAT_VERSION = 1
SHARDED_FORMAT_VERSION = 2
DEFAULT_ROWS_PER_SHARD = 1_000_000
"""Banks with more rows than this are written as shards unless ``save`` is told otherwise."""
READ_GAP_ROWS = 64
"""A lazy read copies a span of rows it does not need only when the span is at most this many rows."""


def shard_name(index: int, count: int) -> str:
    """File name of shard ``index`` of ``count`` (``prompts-00000-of-00004.safetensors``)."""
    return f"prompts-{index:05d}-of-{count:05d}.safetensors"


def content_hash(manifest: dict[str, Any]) -> str:
    """Identity of a bank's content from its manifest: tensor hashes, head hash, model, users.

    Independent of ``info`` (so lineage notes can be added without changing it) and of how the
    rows are sharded only through the per-shard hashes; cheap (the manifest alone is read).
    """
    tensors = [s["sha256"] for s in manifest["shards"]] if "shards" in manifest else [manifest.get("sha256")]
    blob = json.dumps([tensors, manifest.get("head_sha256"), manifest.get("model_fingerprint"),
                       list(manifest.get("user_ids", []))])
    return hashlib.sha256(blob.encode()).hexdigest()


def read_manifest(path: str | Path) -> dict[str, Any]:
    """The parsed ``manifest.json`` of a bank folder, with its required keys checked."""
    path = Path(path)
    manifest_path = path / MANIFEST_FILE
    if not manifest_path.is_file():
        raise BankError(f"{path}: not a prompt bank (expected {MANIFEST_FILE} and {TENSOR_FILE} or shards)")
    try:
        manifest = json.loads(manifest_path.read_text(encoding="utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise BankError(f"{manifest_path}: not valid JSON ({exc})") from None
    for key in ("model_name", "model_fingerprint", "user_ids", "sha256"):
        if key not in manifest:
            raise BankError(f"{manifest_path}: missing key {key!r}")
    return manifest


def _shards(path: Path, manifest: dict[str, Any]) -> list[dict[str, Any]]:
    """``[{file, rows, sha256}]`` of a bank (one implicit shard for the single-file format)."""
    if "shards" in manifest:
        return list(manifest["shards"])
    return [{"file": TENSOR_FILE, "rows": len(manifest["user_ids"]), "sha256": manifest["sha256"]}]


def _check_shard(path: Path, shard: dict[str, Any]) -> Path:
    file = path / shard["file"]
    if not file.is_file():
        raise BankError(f"{path}: not a prompt bank (expected {MANIFEST_FILE} and {shard['file']})")
    if _sha256(file) != shard["sha256"]:
        raise BankError(f"{file}: content hash does not match the manifest (file changed or corrupted)")
    return file


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
        check_unique_ids(self.user_ids)

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

    def save(self, path: str | Path, rows_per_shard: int | None = None) -> Path:
        """Write the bank folder atomically; returns its path.

        More than ``rows_per_shard`` rows (default :data:`DEFAULT_ROWS_PER_SHARD`) are written as
        shards with a per-shard sha256 in the manifest; otherwise one ``prompts.safetensors``.
        """
        prompts = self.prompts.detach().float().cpu().contiguous()
        size = int(rows_per_shard or DEFAULT_ROWS_PER_SHARD)
        chunks = (prompts[i:i + size] for i in range(0, max(len(prompts), 1), size)) if len(prompts) else iter([prompts])
        return write_bank(path, self.manifest(), chunks, rows_per_shard, self.head_state)

    @classmethod
    def load(cls, path: str | Path) -> "PromptBank":
        """Read a bank folder (every shard), verifying its manifest and tensor hashes."""
        path = Path(path)
        manifest = read_manifest(path)
        parts = []
        for shard in _shards(path, manifest):
            file = _check_shard(path, shard)
            try:
                parts.append(load_file(str(file))["prompts"])
            except Exception as exc:  # safetensors raises its own error types
                raise BankError(f"{file}: cannot read tensor ({exc})") from None
        prompts = parts[0] if len(parts) == 1 else torch.cat(parts)
        head = _load_head(path, manifest)
        try:
            return cls(prompts, list(manifest["user_ids"]), manifest["model_name"], manifest["model_fingerprint"],
                       manifest.get("info", {}), head)
        except BankError as exc:  # the shape and id checks do not know where the bank came from
            raise BankError(f"{path}: {exc}") from None

    @staticmethod
    def open(path: str | Path, verify: bool = True) -> "LazyPromptBank":
        """A lazy view of a bank folder: only the manifest is read now (see :class:`LazyPromptBank`)."""
        return LazyPromptBank(path, verify=verify)

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


def _load_head(path: Path, manifest: dict[str, Any]) -> dict[str, torch.Tensor] | None:
    if "head_sha256" not in manifest:
        return None
    head_path = path / HEAD_FILE
    if not head_path.is_file() or _sha256(head_path) != manifest["head_sha256"]:
        raise BankError(f"{head_path}: missing or its hash does not match the manifest")
    return load_file(str(head_path))


def write_shard(file: str | Path, rows: torch.Tensor) -> dict[str, Any]:
    """Write one block ``[n, l, d]`` of prompts as a safetensors file (float32, under a temporary name,
    then renamed); returns its shard record without the file name: ``{"rows", "sha256"}``."""
    file = Path(file)
    tmp = file.with_name(f".{file.name}.tmp")
    save_file({"prompts": rows.detach().float().cpu().contiguous()}, str(tmp))
    os.replace(tmp, file)
    return {"rows": int(rows.shape[0]), "sha256": _sha256(file)}


def check_unique_ids(user_ids: Sequence[str]) -> None:
    """Raise :class:`BankError` naming the first repeated ids when a bank's user ids are not unique."""
    if len(set(user_ids)) != len(user_ids):
        seen: set[str] = set()
        repeated = list(dict.fromkeys(u for u in user_ids if u in seen or seen.add(u)))
        raise BankError(f"user ids in a bank must be unique; repeated: {repeated[:3]}")


def shard_count(num_users: int, rows_per_shard: int) -> int:
    """How many shard files a bank of ``num_users`` rows has at ``rows_per_shard`` (at least one)."""
    if rows_per_shard < 1:
        raise BankError(f"rows_per_shard must be >= 1, got {rows_per_shard}")
    return max(1, -(-int(num_users) // int(rows_per_shard)))


def _finish(folder: Path, manifest: dict[str, Any], shards: list[dict[str, Any]], size: int,
            head_state: dict[str, torch.Tensor] | None) -> None:
    """Complete ``manifest`` from the shard records (file, rows, sha256) already in ``folder``, save
    the head, and write ``manifest.json`` last."""
    written, n = sum(int(sh["rows"]) for sh in shards), int(manifest["num_users"])
    if written != n:
        raise BankError(f"write_bank: {written} rows written for {n} users")
    if len(shards) == 1:
        manifest["sha256"] = shards[0]["sha256"]
    else:
        manifest["format_version"] = SHARDED_FORMAT_VERSION
        manifest["shards"] = shards
        manifest["rows_per_shard"] = size
        manifest["sha256"] = hashlib.sha256("".join(sh["sha256"] for sh in shards).encode()).hexdigest()
    if head_state is not None:
        save_file({k: v.detach().float().cpu().contiguous() for k, v in head_state.items()}, str(folder / HEAD_FILE))
        manifest["head_sha256"] = _sha256(folder / HEAD_FILE)
    manifest["content_hash"] = content_hash(manifest)
    (folder / MANIFEST_FILE).write_text(json.dumps(manifest, indent=1), encoding="utf-8")


def write_bank(path: str | Path, manifest: dict[str, Any], chunks: Iterable[torch.Tensor], rows_per_shard: int | None = None,
               head_state: dict[str, torch.Tensor] | None = None) -> Path:
    """Write a bank folder atomically from consecutive row blocks ``[n_i, l, d]`` (each at most
    ``rows_per_shard`` rows), holding one block in memory at a time; ``manifest`` names the users.

    ``num_users`` rows in all: one ``prompts.safetensors`` when they fit in one shard, shards otherwise
    (each with its sha256)."""
    path = Path(path)
    size = int(rows_per_shard or DEFAULT_ROWS_PER_SHARD)
    count = shard_count(int(manifest["num_users"]), size)
    manifest = dict(manifest)
    with atomic_dir(path, "bank", "prompt bank") as tmp:
        shards = []
        for i, chunk in enumerate(chunks):
            if chunk.shape[0] > size or i >= count:
                raise BankError(f"write_bank: block {i} has {chunk.shape[0]} rows; expected at most {count} blocks of {size}")
            name = TENSOR_FILE if count == 1 else shard_name(i, count)
            shards.append({"file": name, **write_shard(tmp / name, chunk)})
        _finish(tmp, manifest, shards, size, head_state)
    return path


def assemble_bank(path: str | Path, manifest: dict[str, Any], staged: Sequence[tuple[Path, dict[str, Any]]],
                  rows_per_shard: int, head_state: dict[str, torch.Tensor] | None = None) -> Path:
    """Write a bank folder atomically from shard files already written by :func:`write_shard`
    (``staged``: each file with its record, in row order), moving them in rather than copying.

    Used where several processes wrote the shards (a distributed ``migrate``); the result is the
    bank :func:`write_bank` would have written from the same blocks."""
    path = Path(path)
    count = shard_count(int(manifest["num_users"]), rows_per_shard)
    if len(staged) != count:
        raise BankError(f"assemble_bank: {len(staged)} shard files for {count} shards")
    manifest = dict(manifest)
    with atomic_dir(path, "bank", "prompt bank") as tmp:
        shards = []
        for i, (file, record) in enumerate(staged):
            name = TENSOR_FILE if count == 1 else shard_name(i, count)
            os.replace(file, tmp / name)
            shards.append({"file": name, "rows": int(record["rows"]), "sha256": record["sha256"]})
        _finish(tmp, manifest, shards, rows_per_shard, head_state)
    return path


class LazyPromptBank:
    """A bank on disk whose rows are fetched on demand, shard by shard, memory-mapped.

    Only ``manifest.json`` is read at construction. :meth:`rows_for` opens (with ``safe_open``) just
    the shards holding the requested users, checks each one's sha256 the first time it is opened
    (``verify``), and slices the rows out without reading the rest of the shard into memory.
    ``shards_opened`` records which shard files were opened. :attr:`prompts` and
    :meth:`materialize` read everything (for callers that need a :class:`PromptBank`).
    """

    def __init__(self, path: str | Path, verify: bool = True) -> None:
        self.path = Path(path)
        self.manifest = read_manifest(self.path)
        self.verify = verify
        self.shards = _shards(self.path, self.manifest)
        self.user_ids: list[str] = list(self.manifest["user_ids"])
        try:
            check_unique_ids(self.user_ids)
        except BankError as exc:
            raise BankError(f"{self.path}: {exc}") from None
        self.model_name: str = self.manifest["model_name"]
        self.model_fingerprint: str = self.manifest["model_fingerprint"]
        self.info: dict[str, Any] = self.manifest.get("info", {})
        self._starts = np.cumsum([0] + [int(sh["rows"]) for sh in self.shards])
        if int(self._starts[-1]) != len(self.user_ids):
            raise BankError(f"{self.path}: shards hold {int(self._starts[-1])} rows but the manifest lists {len(self.user_ids)} users")
        self._index: dict[str, int] | None = None
        self._verified: set[str] = set()
        self.shards_opened: list[str] = []

    @property
    def hidden_size(self) -> int:
        return int(self.manifest["hidden_size"])

    @property
    def prompt_length(self) -> int:
        return int(self.manifest["prompt_length"])

    @property
    def head_state(self) -> dict[str, torch.Tensor] | None:
        return _load_head(self.path, self.manifest)

    def __len__(self) -> int:
        return len(self.user_ids)

    def index_of(self, user_ids: Sequence[str]) -> np.ndarray:
        """Row numbers of ``user_ids``; every id must be present."""
        if self._index is None:
            self._index = {u: i for i, u in enumerate(self.user_ids)}
        missing = [u for u in user_ids if u not in self._index]
        if missing:
            raise BankError(f"{len(missing)} users are not in the bank (first: {missing[:3]})")
        return np.fromiter((self._index[u] for u in user_ids), dtype=np.int64, count=len(user_ids))

    def rows(self, rows: np.ndarray) -> torch.Tensor:
        """Prompts ``[len(rows), l, d]`` of bank rows ``rows`` (any order), opening only their shards."""
        rows = np.asarray(rows, dtype=np.int64)
        out = torch.empty(len(rows), self.prompt_length, self.hidden_size)
        shard_of = np.searchsorted(self._starts, rows, side="right") - 1
        for shard in np.unique(shard_of):
            where = np.flatnonzero(shard_of == shard)
            local = rows[where] - int(self._starts[shard])
            out[torch.as_tensor(where)] = self._read(int(shard), local)
        return out

    def rows_for(self, user_ids: Sequence[str]) -> torch.Tensor:
        """Prompts ``[len(user_ids), l, d]`` in the order of ``user_ids``; every id must be present."""
        return self.rows(self.index_of(user_ids))

    def _read(self, shard: int, local: np.ndarray) -> torch.Tensor:
        info = self.shards[shard]
        file = self.path / info["file"]
        if self.verify and info["file"] not in self._verified:
            _check_shard(self.path, info)
            self._verified.add(info["file"])
        self.shards_opened.append(info["file"])
        wanted = np.unique(local)
        # contiguous runs of wanted rows, split where the gap is wide, so a few scattered users do not
        # copy the whole span between them out of the mapping
        cuts = np.flatnonzero(np.diff(wanted) > READ_GAP_ROWS) + 1
        parts = []
        with safe_open(str(file), framework="pt") as fh:
            tensor = fh.get_slice("prompts")
            for run in np.split(wanted, cuts):
                lo, hi = int(run[0]), int(run[-1]) + 1
                parts.append(tensor[lo:hi][torch.as_tensor(run - lo)])  # only this row range is copied
        block = torch.cat(parts) if len(parts) > 1 else parts[0]
        return block[torch.as_tensor(np.searchsorted(wanted, local))]

    def blocks(self, size: int) -> Iterator[torch.Tensor]:
        """Consecutive row blocks of at most ``size`` rows, in bank order (one block in memory at a time)."""
        for start in range(0, len(self.user_ids), int(size)):
            yield self.rows(np.arange(start, min(start + int(size), len(self.user_ids))))

    @property
    def prompts(self) -> torch.Tensor:
        """Every row (reads every shard)."""
        return self.rows(np.arange(len(self.user_ids)))

    def materialize(self) -> PromptBank:
        """The whole bank in memory."""
        return PromptBank(self.prompts, list(self.user_ids), self.model_name, self.model_fingerprint, dict(self.info),
                          self.head_state)

    def check_model(self, hidden_size: int, fingerprint: str | None = None, *, where: str = "bank") -> None:
        """As :meth:`PromptBank.check_model`."""
        PromptBank.check_model(self, hidden_size, fingerprint, where=where)  # type: ignore[arg-type]
