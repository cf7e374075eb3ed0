"""``python -m puma_lightning bank ...``: inspect, compare and export prompt banks.

  bank info PATH                                 manifest summary and the bank's full lineage
  bank diff A B                                  users added/removed; mean cosine and L2 change of shared users
  bank export-peft PATH --user ID --out DIR      one user's prompt as a Hugging Face PEFT prompt-tuning adapter

Banks are opened lazily (only the manifest, then the shards holding the rows asked for), so these
commands work on sharded banks of millions of users.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path
from typing import Any, Sequence

import torch

from puma_lightning.io.bank import PromptBank, content_hash
from puma_lightning.io.lineage import ancestor_hashes, format_history

DIFF_CHUNK = 65536


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
        f"  made by      {info.get('made_by')}; dataset {info.get('dataset')}, template {info.get('template')}, seed {info.get('seed')}",
    ]
    if info.get("metrics"):
        lines.append("  metrics      " + ", ".join(f"{k}={v:.4f}" for k, v in info["metrics"].items() if isinstance(v, (int, float))))
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


def export_peft(path: str | Path, user: str, out: str | Path, base_model: str | None = None) -> Path:
    """Write one user's prompt as a PEFT prompt-tuning adapter (``adapter_config.json`` +
    ``adapter_model.safetensors``, tensor ``prompt_embeddings [l, d]``) for the bank's model.

    PEFT puts the virtual tokens before the input text; the bank's prompt was trained at the
    template's slot, so use the exported adapter with the same template text after it.
    Prompts are stored in the model's input-embedding space (after any embedding scaling, e.g.
    Gemma's sqrt(d)), which is also where PEFT concatenates them.
    """
    from peft import PromptTuningConfig, TaskType
    from safetensors.torch import save_file

    from puma_lightning.io.atomic import atomic_dir

    bank = PromptBank.open(path)
    prompt = bank.rows_for([str(user)])[0].float().contiguous()  # [l, d]
    config = PromptTuningConfig(task_type=TaskType.CAUSAL_LM, num_virtual_tokens=bank.prompt_length, token_dim=bank.hidden_size,
                                num_transformer_submodules=1, base_model_name_or_path=base_model or bank.model_name,
                                inference_mode=True)
    out = Path(out)
    with atomic_dir(out, "peft", "PEFT adapter folder") as tmp:
        config.save_pretrained(str(tmp))
        save_file({"prompt_embeddings": prompt}, str(tmp / "adapter_model.safetensors"),
                  metadata={"format": "pt", "puma_bank": str(Path(path).resolve()), "user_id": str(user),
                            "bank_content_hash": bank.manifest.get("content_hash") or content_hash(bank.manifest),
                            "model_fingerprint": bank.model_fingerprint})
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
    p = sub.add_parser("export-peft", help="one user's prompt as a PEFT prompt-tuning adapter")
    p.add_argument("path")
    p.add_argument("--user", required=True, help="user id")
    p.add_argument("--out", required=True, help="output folder")
    p.add_argument("--base-model", default=None, help="base_model_name_or_path to record (default: the bank's model name)")
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
    elif args.action == "export-peft":
        out = export_peft(args.path, args.user, args.out, args.base_model)
        print(f"wrote PEFT prompt-tuning adapter for user {args.user} to {out}")
    return 0
