"""``python -m puma_lightning bank ...``: inspect, compare and export prompt banks.

  bank info PATH                                 manifest summary and the bank's full lineage
  bank diff A B                                  users added/removed; mean cosine and L2 change of shared users
  bank export-peft PATH --user ID --out DIR      one user's prompt as a Hugging Face PEFT prompt-tuning adapter
  bank export-peft PATH --all --out DIR          every user's, one adapter folder each (NNNNN-<id>, in row order)
  bank import --prompts FILE --users FILE [--users-column COL] [--tensor-key KEY] --model NAME --out DIR
                                                 a bank from your own prompts: a tensor [N, l, d] or [N, d]
                                                 (.safetensors, .npy, .pt) and the user ids in row order
                                                 (text, one per line, or a CSV/TSV/Parquet column)
  bank import --peft DIR --model NAME --out DIR  a bank from a folder of PEFT prompt-tuning adapters, one per user

``import`` labels the bank with the named model's fingerprint (loaded locally: a tiny or packaged
name, a folder, or a hub id already in the Hugging Face cache; ``--cache-dir``,
``--trust-remote-code``) and records where the prompts came from in its lineage.

Banks are opened lazily (only the manifest, then the shards holding the rows asked for), so these
commands work on sharded banks of millions of users.
"""

from __future__ import annotations

import argparse
import json
import re
from pathlib import Path
from typing import Any, Sequence

import torch

from puma_lightning.io.bank import PromptBank, content_hash
from puma_lightning.io.lineage import ancestor_hashes, format_history

DIFF_CHUNK = 65536
EXPORT_CHUNK = 4096


def bank_info(path: str | Path) -> str:
    """A readable summary of a bank: model, shape, files, creation info and lineage."""
    bank = PromptBank.open(path)
    m = bank.manifest
    info = m.get("info") or {}
    lines = [
        f"bank {Path(path)}",
        f"  model        {m['model_name']} (fingerprint {m['model_fingerprint']})",
        f"  prompts      {len(bank.user_ids):,} users x {m.get('prompt_length')} x {m.get('hidden_size')}",
        f"  storage      {len(bank.shards)} shard(s): " + ", ".join(s["file"] for s in bank.shards[:3]) + (" ..." if len(bank.shards) > 3 else ""),
        f"  content hash {m.get('content_hash') or content_hash(m)}",
        f"  head         {'yes' if 'head_sha256' in m else 'no'}",
        f"  made by      {info.get('made_by')}" + (f"; dataset {info.get('dataset')}, template {info.get('template')}, seed {info.get('seed')}"
                                                   if info.get("dataset") else ""),
    ]
    if info.get("metrics"):
        lines.append("  metrics      " + ", ".join(f"{k}={v:.4f}" for k, v in info["metrics"].items() if isinstance(v, (int, float))))
    for name, source in ((info.get("lineage") or {}).get("imported") or {}).items():
        detail = f", column {source['column']}" if source.get("column") else f", {len(source['adapters'])} adapters" if "adapters" in source else ""
        lines.append(f"  imported     {name} {source.get('path')}{detail}" + (f" (sha256 {source['sha256'][:16]})" if source.get("sha256") else ""))
    lines.append("  lineage (newest first):")
    lines.append(format_history(info.get("lineage")))
    return "\n".join(lines)


def bank_diff(path_a: str | Path, path_b: str | Path) -> dict[str, Any]:
    """Users added/removed from A to B and, for shared users of equal width, the mean change."""
    a, b = PromptBank.open(path_a), PromptBank.open(path_b)
    set_a, set_b = set(a.user_ids), set(b.user_ids)
    shared = [u for u in a.user_ids if u in set_b]
    out: dict[str, Any] = {
        "a": str(path_a), "b": str(path_b), "a_model": a.model_name, "b_model": b.model_name,
        "a_users": len(a.user_ids), "b_users": len(b.user_ids), "shared_users": len(shared),
        "added": sorted(set_b - set_a), "removed": sorted(set_a - set_b),
        "a_is_ancestor_of_b": (a.manifest.get("content_hash") or content_hash(a.manifest)) in ancestor_hashes(b.info.get("lineage")),
        "b_is_ancestor_of_a": (b.manifest.get("content_hash") or content_hash(b.manifest)) in ancestor_hashes(a.info.get("lineage")),
    }
    same_shape = (a.hidden_size, a.prompt_length) == (b.hidden_size, b.prompt_length)
    out["comparable"] = same_shape
    if not same_shape:
        out["note"] = (f"different widths ({a.prompt_length}x{a.hidden_size} vs {b.prompt_length}x{b.hidden_size}): "
                       "prompts live in different spaces, only the users are compared")
        return out
    cos_sum = l2_sum = rel_sum = 0.0
    changed = 0
    for start in range(0, len(shared), DIFF_CHUNK):
        ids = shared[start:start + DIFF_CHUNK]
        pa, pb = a.rows_for(ids).flatten(1).double(), b.rows_for(ids).flatten(1).double()
        cos_sum += float(torch.nn.functional.cosine_similarity(pa, pb, dim=1).sum())
        dist = (pa - pb).norm(dim=1)
        l2_sum += float(dist.sum())
        rel_sum += float((dist / pa.norm(dim=1).clamp_min(1e-12)).sum())
        changed += int((dist > 0).sum())
    n = max(len(shared), 1)
    out.update(mean_cosine=cos_sum / n, mean_l2=l2_sum / n, mean_relative_l2=rel_sum / n, changed_users=changed)
    return out


def format_diff(d: dict[str, Any]) -> str:
    """The diff as text."""
    def few(ids: list[str]) -> str:
        return ", ".join(ids[:5]) + (" ..." if len(ids) > 5 else "")

    lines = [f"A {d['a']} ({d['a_model']}, {d['a_users']:,} users)", f"B {d['b']} ({d['b_model']}, {d['b_users']:,} users)",
             f"  shared users {d['shared_users']:,}; added in B {len(d['added']):,} [{few(d['added'])}]; "
             f"removed from A {len(d['removed']):,} [{few(d['removed'])}]"]
    if d["a_is_ancestor_of_b"]:
        lines.append("  A is in B's lineage (B descends from A)")
    if d["b_is_ancestor_of_a"]:
        lines.append("  B is in A's lineage (A descends from B)")
    if not d["comparable"]:
        lines.append("  " + d["note"])
    else:
        lines.append(f"  shared users' prompts: mean cosine {d['mean_cosine']:.4f}, mean L2 change {d['mean_l2']:.4g} "
                     f"(relative {d['mean_relative_l2']:.4g}), {d['changed_users']:,} changed")
    return "\n".join(lines)


def _peft_config_text(bank: Any, base_model: str | None) -> str:
    """``adapter_config.json`` of a PEFT prompt-tuning adapter for the bank's model (one virtual token per prompt row)."""
    import tempfile

    from peft import PromptTuningConfig, TaskType

    config = PromptTuningConfig(task_type=TaskType.CAUSAL_LM, num_virtual_tokens=bank.prompt_length, token_dim=bank.hidden_size,
                                num_transformer_submodules=1, base_model_name_or_path=base_model or bank.model_name,
                                inference_mode=True)
    with tempfile.TemporaryDirectory() as tmp:
        config.save_pretrained(tmp)
        return (Path(tmp) / "adapter_config.json").read_text(encoding="utf-8")


def _write_adapter(folder: Path, config_text: str, prompt: torch.Tensor, metadata: dict[str, str]) -> None:
    from safetensors.torch import save_file

    folder.mkdir(parents=True, exist_ok=True)
    (folder / "adapter_config.json").write_text(config_text, encoding="utf-8")
    save_file({"prompt_embeddings": prompt.float().contiguous()}, str(folder / "adapter_model.safetensors"),
              metadata={"format": "pt", **metadata})


def _export_metadata(path: str | Path, bank: Any) -> dict[str, str]:
    return {"puma_bank": str(Path(path).resolve()), "model_fingerprint": bank.model_fingerprint,
            "bank_content_hash": bank.manifest.get("content_hash") or content_hash(bank.manifest)}


def export_peft(path: str | Path, user: str, out: str | Path, base_model: str | None = None) -> Path:
    """Write one user's prompt as a PEFT prompt-tuning adapter (``adapter_config.json`` +
    ``adapter_model.safetensors``, tensor ``prompt_embeddings [l, d]``) for the bank's model.

    PEFT puts the virtual tokens before the input text; the bank's prompt was trained at the
    template's slot, so use the exported adapter with the same template text after it.
    Prompts are stored in the model's input-embedding space (after any embedding scaling, e.g.
    Gemma's sqrt(d)), which is also where PEFT concatenates them.
    """
    from puma_lightning.io.atomic import atomic_dir

    bank = PromptBank.open(path)
    prompt = bank.rows_for([str(user)])[0]  # [l, d]
    out = Path(out)
    with atomic_dir(out, "peft", "PEFT adapter folder") as tmp:
        _write_adapter(tmp, _peft_config_text(bank, base_model), prompt, {**_export_metadata(path, bank), "user_id": str(user)})
    return out


def adapter_folder_name(row: int, user: str, width: int) -> str:
    """A filesystem-safe, unique folder name for row ``row``'s user: the zero-padded row (so names sort in bank
    order) and the id with anything but letters, digits, ``.``, ``_``, ``-`` replaced (the metadata keeps the id)."""
    safe = re.sub(r"[^A-Za-z0-9._-]+", "_", str(user))[:64]
    return f"{row:0{width}d}-{safe}" if safe else f"{row:0{width}d}"


def export_peft_all(path: str | Path, out: str | Path, base_model: str | None = None) -> Path:
    """Write every user's prompt as a PEFT prompt-tuning adapter into ``out/<NNNNN-id>/`` (see :func:`export_peft`).

    ``out`` is written as a whole (it appears complete or not at all); ``bank import --peft out``
    gives the bank back (same ids in the same order, identical prompts)."""
    from puma_lightning.io.atomic import atomic_dir

    bank = PromptBank.open(path)
    out, n = Path(out), len(bank.user_ids)
    width = max(5, len(str(max(n - 1, 0))))
    config_text, metadata = _peft_config_text(bank, base_model), _export_metadata(path, bank)
    with atomic_dir(out, "peft-all", "folder of PEFT adapters") as tmp:
        row = 0
        for block in bank.blocks(EXPORT_CHUNK):
            for prompt in block:
                user = bank.user_ids[row]
                _write_adapter(tmp / adapter_folder_name(row, user, width), config_text, prompt,
                               {**metadata, "user_id": str(user), "row": str(row)})
                row += 1
    return out


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m puma_lightning bank", description="Inspect, compare and export prompt banks.")
    sub = parser.add_subparsers(dest="action", metavar="ACTION")
    p = sub.add_parser("info", help="manifest summary and full lineage of a bank")
    p.add_argument("path")
    p.add_argument("--json", action="store_true", help="print the raw manifest info instead")
    p = sub.add_parser("diff", help="users added/removed and prompt change between two banks")
    p.add_argument("a")
    p.add_argument("b")
    p.add_argument("--json", action="store_true", help="print the diff as JSON")
    p = sub.add_parser("export-peft", help="one user's prompt (or every user's) as PEFT prompt-tuning adapters")
    p.add_argument("path")
    who = p.add_mutually_exclusive_group(required=True)
    who.add_argument("--user", help="user id")
    who.add_argument("--all", action="store_true", help="every user, one adapter folder each under --out")
    p.add_argument("--out", required=True, help="output folder")
    p.add_argument("--base-model", default=None, help="base_model_name_or_path to record (default: the bank's model name)")
    p = sub.add_parser("import", help="a bank from prompts your own system trained (a tensor file + user ids, or PEFT adapters)")
    src = p.add_mutually_exclusive_group(required=True)
    src.add_argument("--prompts", metavar="FILE", help="tensor [N, l, d] or [N, d]: .safetensors, .npy, .pt or .pth")
    src.add_argument("--peft", metavar="DIR", help="folder holding one PEFT prompt-tuning adapter folder per user")
    p.add_argument("--users", metavar="FILE", help="user ids in row order: text (one per line) or a CSV/TSV/Parquet table")
    p.add_argument("--users-column", metavar="COL", help="the column of --users holding the ids (required for tables)")
    p.add_argument("--tensor-key", metavar="KEY", help="the tensor to read when --prompts holds several")
    p.add_argument("--model", required=True, metavar="NAME", help="the model the prompts were trained for")
    p.add_argument("--out", required=True, metavar="DIR", help="the bank folder to write")
    p.add_argument("--cache-dir", default=None, help="where packaged models are converted (default $PUMA_CACHE)")
    p.add_argument("--trust-remote-code", action="store_true", help="allow the model folder's own code")
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of ``bank``; returns the exit code (2 with a one-line error for bad banks)."""
    parser = build_parser()
    args = parser.parse_args(argv)
    if not args.action:
        parser.print_help()
        return 2
    if args.action == "info":  # errors: one line, by cli.main.one_line_errors (PUMA_DEBUG=1 shows the traceback)
        if args.json:
            print(json.dumps(PromptBank.open(args.path).manifest.get("info", {}), indent=1))
        else:
            print(bank_info(args.path))
    elif args.action == "diff":
        d = bank_diff(args.a, args.b)
        print(json.dumps(d, indent=1) if args.json else format_diff(d))
    elif args.action == "export-peft" and args.all:
        out = export_peft_all(args.path, args.out, args.base_model)
        print(f"wrote {len(PromptBank.open(args.path).user_ids):,} PEFT prompt-tuning adapters to {out}")
    elif args.action == "export-peft":
        out = export_peft(args.path, args.user, args.out, args.base_model)
        print(f"wrote PEFT prompt-tuning adapter for user {args.user} to {out}")
    elif args.action == "import":
        bank = import_bank(args)
        print(f"imported {len(bank.user_ids):,} users' prompts ({len(bank.user_ids)} x {bank.prompt_length} x {bank.hidden_size}) "
              f"for model {bank.model_name} (fingerprint {bank.model_fingerprint}) -> {args.out}")
    return 0


def import_bank(args: argparse.Namespace) -> PromptBank:
    """``bank import``: check the options and the output path, load the model locally for its width and
    fingerprint, then import (see :mod:`puma_lightning.io.bank_import`)."""
    from puma_lightning.io.bank import BankError
    from puma_lightning.io.bank_import import import_peft_bank, import_tensor_bank
    from puma_lightning.io.ownership import check_not_an_input, check_replaceable
    from puma_lightning.models.loading import model_identity

    if args.peft and (args.users or args.users_column or args.tensor_key):
        raise BankError("--users, --users-column and --tensor-key go with --prompts, not --peft")
    if args.prompts and not args.users:
        raise BankError("--prompts needs --users FILE: the user ids in row order")
    inputs = {"--prompts": args.prompts, "--users": args.users} if args.prompts else {"--peft": args.peft}
    check_not_an_input(args.out, inputs, key="--out")  # before the model is loaded, which may take a while
    check_replaceable(args.out, "bank", "prompt bank")
    hidden, fingerprint = model_identity(args.model, args.cache_dir, args.trust_remote_code)
    if args.peft:
        return import_peft_bank(args.peft, args.model, fingerprint, hidden, args.out)
    return import_tensor_bank(args.prompts, args.users, args.model, fingerprint, hidden, args.out,
                              column=args.users_column, key=args.tensor_key)
