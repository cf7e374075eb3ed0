"""Prompt banks from soft prompts a user's own system trained (``bank import``).

Two sources, both checked before anything is written and written as one atomic bank folder:

- a tensor file (``.safetensors``, ``.npy`` or ``.pt``/``.pth``) of shape ``[N, l, d]`` or ``[N, d]``
  with a file of user ids in row order (one per line, or a column of a CSV/TSV/Parquet table);
- a folder of PEFT prompt-tuning adapters, one sub-folder per user (``bank export-peft --all`` writes
  these), rows in sorted sub-folder order, the id from the safetensors metadata ``user_id`` or else
  the sub-folder name.

The model's name, width and fingerprint come from the caller (the CLI loads the model), so these
functions need no model. The bank's lineage (:mod:`puma_lightning.io.lineage`) says ``made_by``
``import:tensor`` or ``import:peft`` and, under ``imported``, the absolute source paths and their
sha256. Ids are kept as strings exactly as written ("007" stays "007").
"""

from __future__ import annotations

import csv
import io
import json
from pathlib import Path
from typing import Any

import numpy as np
import torch

from puma_lightning.io.bank import BankError, PromptBank
from puma_lightning.io.lineage import make_lineage
from puma_lightning.io.ownership import check_not_an_input, check_replaceable, file_sha256
from puma_lightning.io.pair_files import require_pyarrow

__all__ = ["import_peft_bank", "import_tensor_bank", "read_prompt_tensor", "read_user_ids"]

TABLE_SUFFIXES = (".csv", ".tsv", ".tab", ".parquet", ".pq")
PEFT_CONFIG, PEFT_WEIGHTS, PEFT_KEY = "adapter_config.json", "adapter_model.safetensors", "prompt_embeddings"


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip()
    return text.splitlines()[0] if text else type(exc).__name__


def _one_tensor(found: dict[str, Any], key: str | None, path: Path) -> torch.Tensor:
    """The tensor named ``key`` in ``found``, or its only tensor."""
    tensors = {k: v for k, v in found.items() if isinstance(v, torch.Tensor)}
    if key is not None:
        if key not in tensors:
            raise BankError(f"{path}: no tensor {key!r} (tensors: {', '.join(sorted(tensors)) or 'none'})")
        return tensors[key]
    if len(tensors) != 1:
        raise BankError(f"{path}: expected exactly one tensor, found {len(tensors)} ({', '.join(sorted(tensors)[:5])}); "
                        "name one with --tensor-key")
    return next(iter(tensors.values()))


def read_prompt_tensor(path: str | Path, key: str | None = None) -> torch.Tensor:
    """Prompts ``[N, l, d]`` float32 from a ``.safetensors``, ``.npy`` or ``.pt``/``.pth`` file (``[N, d]`` gives l=1).

    Nothing is unpickled (``allow_pickle=False``, ``weights_only=True``): these files come from
    elsewhere. ``key`` names the tensor in a file that holds several."""
    path = Path(path)
    if not path.is_file():
        raise BankError(f"prompts file not found: {path}")
    suffix = path.suffix.lower()
    if suffix == ".safetensors":
        from safetensors.torch import load_file

        try:
            tensor = _one_tensor(load_file(str(path)), key, path)
        except BankError:
            raise
        except Exception as exc:  # safetensors raises its own error types
            raise BankError(f"{path}: not a readable safetensors file ({_first_line(exc)})") from None
    elif suffix == ".npy":
        if key is not None:
            raise BankError(f"{path}: --tensor-key applies to .safetensors and .pt files, a .npy holds one array")
        try:
            array = np.load(path, allow_pickle=False)
        except Exception as exc:  # ValueError for text or pickles, OSError for a short file
            raise BankError(f"{path}: not a readable .npy array ({_first_line(exc)})") from None
        if not isinstance(array, np.ndarray) or not np.issubdtype(array.dtype, np.number):
            raise BankError(f"{path}: expected a numeric array, got dtype {getattr(array, 'dtype', type(array).__name__)}")
        tensor = torch.from_numpy(np.ascontiguousarray(array))
    elif suffix in (".pt", ".pth"):
        try:
            obj = torch.load(path, map_location="cpu", weights_only=True)
        except Exception as exc:  # UnpicklingError, RuntimeError, EOFError ...
            raise BankError(f"{path}: not a PyTorch tensor file readable with weights_only=True ({_first_line(exc)})") from None
        if isinstance(obj, torch.Tensor):
            if key is not None:
                raise BankError(f"{path}: holds a single tensor, not a dict; drop --tensor-key")
            tensor = obj
        elif isinstance(obj, dict):
            tensor = _one_tensor(obj, key, path)
        else:
            raise BankError(f"{path}: expected a tensor or a dict of tensors, got {type(obj).__name__}")
    else:
        raise BankError(f"{path}: unknown prompts file type {suffix or '(no extension)'!r}; expected .safetensors, .npy, .pt or .pth")
    return _as_prompts(tensor, str(path))


def _as_prompts(tensor: torch.Tensor, where: str) -> torch.Tensor:
    """``[N, l, d]`` float32 from a 2-D or 3-D floating-point tensor; empty, integer or other ranks refused."""
    if tensor.ndim not in (2, 3):
        raise BankError(f"{where}: prompts must be [N, l, d] or [N, d], got a {tensor.ndim}-D tensor of shape {tuple(tensor.shape)}")
    if not tensor.is_floating_point():
        raise BankError(f"{where}: prompts must be floating point, got {str(tensor.dtype).replace('torch.', '')} "
                        "(token ids are not soft prompts)")
    if tensor.numel() == 0:
        raise BankError(f"{where}: the prompt tensor is empty (shape {tuple(tensor.shape)})")
    if tensor.ndim == 2:
        tensor = tensor.unsqueeze(1)
    return tensor.detach().to(torch.float32).contiguous().clone()


def _text_ids(path: Path) -> list[tuple[str, str]]:
    """``(id, "line N")`` from a text file, one id per line (BOM and surrounding whitespace dropped)."""
    entries = []
    data = path.read_bytes()
    for number, raw in enumerate(data.splitlines(), start=1):
        try:
            line = raw.decode("utf-8-sig" if number == 1 else "utf-8").strip()
        except UnicodeDecodeError as exc:
            raise BankError(f"{path}:{number}: not UTF-8 text (byte {raw[exc.start]:#04x}); expected one user id per line") from None
        if not line:
            raise BankError(f"{path}:{number}: blank line; expected one user id per line")
        entries.append((line, f"line {number}"))
    return entries


def _csv_ids(path: Path, column: str) -> list[tuple[str, str]]:
    """``(id, "line N")`` from column ``column`` of a CSV (TSV for ``.tsv``/``.tab``) file with a header row."""
    try:
        text = path.read_bytes().decode("utf-8-sig")
    except UnicodeDecodeError as exc:
        line = path.read_bytes()[:exc.start].count(b"\n") + 1
        raise BankError(f"{path}:{line}: not UTF-8 text; expected a CSV table with a header row") from None
    delimiter = "\t" if path.suffix.lower() in (".tsv", ".tab") else ","
    reader = csv.DictReader(io.StringIO(text, newline=""), delimiter=delimiter)
    if not reader.fieldnames:
        raise BankError(f"{path}: empty table; expected a header row with a column {column!r}")
    if column not in reader.fieldnames:
        raise BankError(f"{path}: no column {column!r} (columns: {', '.join(reader.fieldnames)})")
    entries = []
    for row in reader:
        value = (row.get(column) or "").strip()
        if not value:
            raise BankError(f"{path}:{reader.line_num}: empty user id in column {column!r}")
        entries.append((value, f"line {reader.line_num}"))
    return entries


def _parquet_ids(path: Path, column: str) -> list[tuple[str, str]]:
    """``(id, "row N")`` from column ``column`` of a Parquet file (any type, read as text)."""
    pq = require_pyarrow().parquet
    try:
        names = pq.ParquetFile(str(path)).schema_arrow.names
    except Exception as exc:  # ArrowInvalid / OSError for a damaged or foreign file
        raise BankError(f"{path}: not a readable Parquet file ({_first_line(exc)})") from None
    if column not in names:
        raise BankError(f"{path}: no column {column!r} (columns: {', '.join(names)})")
    values = pq.read_table(str(path), columns=[column]).column(column).to_pylist()
    entries = []
    for row, value in enumerate(values):
        text = "" if value is None else str(value).strip()
        if not text:
            raise BankError(f"{path}: row {row}: empty user id in column {column!r}")
        entries.append((text, f"row {row}"))
    return entries


def _check_duplicates(entries: list[tuple[str, str]], where: str) -> None:
    """One line naming the first repeated id and both of its places."""
    first: dict[str, str] = {}
    for value, place in entries:
        if value in first:
            raise BankError(f"{where}: duplicate user id {value!r} ({first[value]} and {place}); ids in a bank must be unique")
        first[value] = place


def read_user_ids(path: str | Path, column: str | None = None) -> list[str]:
    """User ids in row order: one per line of a text file, or column ``column`` of a CSV/TSV/Parquet table.

    A table (``.csv``, ``.tsv``, ``.parquet``) needs ``column``; with ``column`` any other file is
    read as CSV. Blank, empty and repeated ids are refused, naming the line (or row)."""
    path = Path(path)
    if not path.is_file():
        raise BankError(f"user ids file not found: {path}")
    suffix = path.suffix.lower()
    if column is None and suffix in TABLE_SUFFIXES:
        raise BankError(f"{path}: a {suffix} table needs --users-column COL to say which column holds the user ids")
    if column is None:
        entries = _text_ids(path)
    elif suffix in (".parquet", ".pq"):
        entries = _parquet_ids(path, column)
    else:
        entries = _csv_ids(path, column)
    if not entries:
        raise BankError(f"{path}: no user ids")
    _check_duplicates(entries, str(path))
    return [value for value, _ in entries]


def _check_rows(prompts: torch.Tensor, user_ids: list[str], model_name: str, hidden_size: int, where: str) -> None:
    """Width against the model, then finite values (naming how many rows and the first user)."""
    if prompts.shape[2] != hidden_size:
        raise BankError(f"{where}: prompts have width d={prompts.shape[2]} but model {model_name} has hidden size {hidden_size}")
    bad = (~torch.isfinite(prompts)).flatten(1).any(dim=1)
    if bool(bad.any()):
        first = user_ids[int(bad.nonzero()[0, 0])]
        raise BankError(f"{where}: {int(bad.sum())} of {len(user_ids)} prompt rows hold NaN or inf (first: user {first!r})")


def _save(prompts: torch.Tensor, user_ids: list[str], model_name: str, fingerprint: str, hidden_size: int, out: Path,
          made_by: str, imported: dict[str, Any]) -> PromptBank:
    model = {"name": model_name, "fingerprint": fingerprint, "hidden_size": int(hidden_size)}
    dataset = {"name": None, "task": None, "template": None, "seed": None, "num_users": len(user_ids)}
    lineage = make_lineage(made_by, model=model, dataset=dataset, extra={"imported": imported})
    bank = PromptBank(prompts, user_ids, model_name, fingerprint, {"made_by": made_by, "lineage": lineage})
    bank.save(out)
    return bank


def _check_out(out: Path, inputs: dict[str, str | Path | None]) -> None:
    """Refuse an ``--out`` that is an input (or holds one) or a folder we did not write, before any reading."""
    check_not_an_input(out, inputs, key="--out")
    check_replaceable(out, "bank", "prompt bank")


def import_tensor_bank(prompts_path: str | Path, users_path: str | Path, model_name: str, fingerprint: str, hidden_size: int,
                       out: str | Path, column: str | None = None, key: str | None = None) -> PromptBank:
    """Write the bank ``out`` from a prompt tensor file and a user-ids file (row order), for the named model.

    Everything is checked (shape, width ``hidden_size``, finite values, ids unique and one per row)
    before the folder is written atomically; returns the bank."""
    out, prompts_path, users_path = Path(out), Path(prompts_path), Path(users_path)
    _check_out(out, {"--prompts": prompts_path, "--users": users_path})
    prompts = read_prompt_tensor(prompts_path, key)
    user_ids = read_user_ids(users_path, column)
    if prompts.shape[0] != len(user_ids):
        raise BankError(f"{prompts_path} has {prompts.shape[0]} prompt rows but {users_path} has {len(user_ids)} user ids")
    _check_rows(prompts, user_ids, model_name, hidden_size, str(prompts_path))
    imported = {"prompts": {"path": str(prompts_path.resolve()), "sha256": file_sha256(prompts_path), "key": key,
                            "shape": list(prompts.shape)},
                "users": {"path": str(users_path.resolve()), "sha256": file_sha256(users_path), "column": column}}
    return _save(prompts, user_ids, model_name, fingerprint, hidden_size, out, "import:tensor", imported)


def _read_adapter(folder: Path, fingerprint: str) -> tuple[torch.Tensor, str | None]:
    """One PEFT prompt-tuning adapter: its ``[l, d]`` prompt (checked against its config) and metadata ``user_id``."""
    from safetensors import safe_open

    config_file, weights = folder / PEFT_CONFIG, folder / PEFT_WEIGHTS
    if not config_file.is_file() or not weights.is_file():
        raise BankError(f"{folder}: not a PEFT adapter folder (expected {PEFT_CONFIG} and {PEFT_WEIGHTS})")
    try:
        config = json.loads(config_file.read_text(encoding="utf-8"))
        assert isinstance(config, dict)
    except (ValueError, UnicodeDecodeError, AssertionError):
        raise BankError(f"{config_file}: not a JSON object") from None
    if config.get("peft_type") != "PROMPT_TUNING":
        raise BankError(f"{config_file}: a {config.get('peft_type')} adapter, not PROMPT_TUNING")
    try:
        with safe_open(str(weights), framework="pt") as fh:
            meta, names = fh.metadata() or {}, list(fh.keys())
            if PEFT_KEY not in names:
                raise BankError(f"{weights}: no tensor {PEFT_KEY!r} (tensors: {', '.join(names) or 'none'})")
            tensor = fh.get_tensor(PEFT_KEY)
    except BankError:
        raise
    except Exception as exc:  # safetensors' own error types
        raise BankError(f"{weights}: not a readable safetensors file ({_first_line(exc)})") from None
    if tensor.ndim != 2 or not tensor.is_floating_point() or tensor.numel() == 0:
        raise BankError(f"{weights}: {PEFT_KEY} must be a non-empty floating-point [num_virtual_tokens, token_dim] tensor, "
                        f"got {str(tensor.dtype).replace('torch.', '')} of shape {tuple(tensor.shape)}")
    tensor = tensor.to(torch.float32).contiguous()
    want = (int(config.get("num_virtual_tokens") or 0) * int(config.get("num_transformer_submodules") or 1),
            int(config.get("token_dim") or 0))
    if tuple(tensor.shape) != want:
        raise BankError(f"{folder}: {PEFT_KEY} has shape {tuple(tensor.shape)} but {PEFT_CONFIG} says num_virtual_tokens="
                        f"{config.get('num_virtual_tokens')}, token_dim={config.get('token_dim')}")
    if meta.get("model_fingerprint") and meta["model_fingerprint"] != fingerprint:
        raise BankError(f"{weights}: exported for a model of fingerprint {meta['model_fingerprint']}, not {fingerprint}")
    return tensor, meta.get("user_id")


def import_peft_bank(folder: str | Path, model_name: str, fingerprint: str, hidden_size: int, out: str | Path) -> PromptBank:
    """Write the bank ``out`` from a folder of PEFT prompt-tuning adapters, one sub-folder per user (sorted by name).

    The user id is the adapter's metadata ``user_id`` when present, else the sub-folder name; every
    adapter must have one shape, agreeing with its config and the model's width ``hidden_size``."""
    folder, out = Path(folder), Path(out)
    if not folder.is_dir():
        raise BankError(f"PEFT adapters folder not found: {folder}")
    _check_out(out, {"--peft": folder})
    subs = sorted((p for p in folder.iterdir() if p.is_dir() and not p.name.startswith(".")), key=lambda p: p.name)
    if not subs:
        raise BankError(f"{folder}: no adapter sub-folders; expected one PEFT prompt-tuning adapter folder per user")
    rows, entries, records = [], [], []
    for sub in subs:
        tensor, user = _read_adapter(sub, fingerprint)
        if rows and tensor.shape != rows[0].shape:
            raise BankError(f"{sub}: prompt shape {tuple(tensor.shape)} differs from {subs[0].name}'s {tuple(rows[0].shape)}")
        if user is not None and not user.strip():
            raise BankError(f"{sub / PEFT_WEIGHTS}: empty user_id in the metadata")
        rows.append(tensor)
        entries.append((sub.name if user is None else user, f"folder {sub.name}"))
        records.append({"folder": sub.name, "sha256": file_sha256(sub / PEFT_WEIGHTS)})
    _check_duplicates(entries, str(folder))
    user_ids = [value for value, _ in entries]
    prompts = torch.stack(rows)
    _check_rows(prompts, user_ids, model_name, hidden_size, str(folder))
    imported = {"peft": {"path": str(folder.resolve()), "adapters": records}}
    return _save(prompts, user_ids, model_name, fingerprint, hidden_size, out, "import:peft", imported)
