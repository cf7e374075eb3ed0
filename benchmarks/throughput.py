"""Training throughput of the plain path and of each speed lever, side by side in one process.

    python benchmarks/throughput.py --config configs/synthetic.yaml [key=value ...] \\
        [--model target] [--templates movie,item_first] [--batches 4] [--batch-size 32] [--repeats 2]

For each template and each task (prompt tuning: one trainable prompt per user; adapter training:
an adapter maps fixed source prompts), the same training batches are run by every "way", with the
ways alternated inside each repeat (the order rotates), so that machine noise hits them alike:

- ``naive``         full-vocabulary logits at every position, every batch padded to the longest row
                    of the whole sample (what random batching without buckets costs);
- ``answer-only``   only the answer tokens' rows of the LM head, at the answer position;
- ``plain``         + length-bucketed batches (each batch padded to its own longest row): the
                    project's plain path, the reference of the speed-up ratios;
- ``prefix-cache``  + shared-prefix key/value cache, warm (one untimed pass fills it first, as from
                    the second epoch on); its cold first pass is timed separately;
- ``prefix-cache+compile`` (``--compile``) the same with each decoder layer ``torch.compile``-d.

Printed first: the machine (CPU, ISA capability, threads, GPU, the backbone's compute dtype, library
versions). Printed per way: samples/s, template tokens/s (real tokens of the rows, the same numerator for
every way), peak memory (GPU: ``max_memory_allocated``; CPU: bytes of activations saved for
backward, excluding weights, plus the prefix cache) and speed-ups over ``plain`` and ``naive``.
On a GPU (or with ``--peak-tflops``) also model FLOPs utilisation: executed matmul FLOPs (2 x
non-embedding parameters x tokens run, forward, plus the same again for the input-gradient
backward) per second over the peak.
"""

from __future__ import annotations

import argparse
import logging
import statistics
import time
from dataclasses import dataclass, field
from typing import Any, Callable

import torch

from puma_lightning.cli.config_loader import load_config
from puma_lightning.data.templates import get_template
from puma_lightning.machine import describe_machine, dtype_name
from puma_lightning.models.adapters import build_adapter
from puma_lightning.models.backbone import FrozenLM
from puma_lightning.models.heads import build_head
from puma_lightning.models.loading import load_backbone
from puma_lightning.models.templated_rows import TemplatedRows
from puma_lightning.pipeline.builders import build_datamodule, build_table
from puma_lightning.tasks import Migration, PromptTuning, init_prompts

log = logging.getLogger("throughput")

GPU_PEAK_TFLOPS = {"H100": 989.0, "H200": 989.0, "A100": 312.0, "L4": 121.0, "A10": 125.0}
"""Dense bf16 tensor-core peaks by device-name fragment (used unless --peak-tflops is given)."""


# -- ways: how one batch becomes answer logits ------------------------------------------------------


def naive_logits(lm: FrozenLM, batch: dict[str, torch.Tensor], prompts: torch.Tensor) -> torch.Tensor:
    """Full LM head over every position, then the answer tokens at the answer position."""
    embeds = lm.splice(batch["input_ids"], batch["slot_pos"], prompts)
    logits = lm.model(inputs_embeds=embeds, attention_mask=batch["attention_mask"], use_cache=False).logits
    rows = torch.arange(len(logits), device=logits.device)
    return logits[rows, batch["answer_pos"]][:, lm.answer_ids].float()


@dataclass
class Way:
    name: str
    logits: Callable[[FrozenLM, dict[str, torch.Tensor], torch.Tensor], torch.Tensor]
    batches: str  # "global" (padded to the sample's longest row) or "bucketed"
    cache: bool = False
    compiled: bool = False


def plain(lm: FrozenLM, batch: dict[str, torch.Tensor], prompts: torch.Tensor) -> torch.Tensor:
    return lm.plain_answer_logits(TemplatedRows.of(batch), prompts)


def cached(lm: FrozenLM, batch: dict[str, torch.Tensor], prompts: torch.Tensor) -> torch.Tensor:
    out = lm.cached_answer_logits(TemplatedRows.of(batch), prompts)
    if out is None:
        raise RuntimeError("batch cannot use the prefix cache")
    return out


# -- measurement ---------------------------------------------------------------------------------


@dataclass
class Tally:
    seconds: list[float] = field(default_factory=list)
    samples: int = 0
    tokens: int = 0
    run_tokens: int = 0
    peak_bytes: int = 0


def pad_to(batch: dict[str, torch.Tensor], width: int, pad_id: int) -> dict[str, torch.Tensor]:
    """The batch right-padded to ``width`` columns."""
    out = dict(batch)
    extra = width - batch["input_ids"].shape[1]
    if extra > 0:
        out["input_ids"] = torch.nn.functional.pad(batch["input_ids"], (0, extra), value=pad_id)
        out["attention_mask"] = torch.nn.functional.pad(batch["attention_mask"], (0, extra), value=0)
    return out


def to_device(batch: dict[str, torch.Tensor], device: torch.device) -> dict[str, torch.Tensor]:
    return {k: v.to(device) for k, v in batch.items()}


class SavedBytes:
    """Bytes of tensors autograd saves for backward (activations; weights and duplicates excluded)."""

    def __init__(self, params: set[int]) -> None:
        self.params = params
        self.seen: set[int] = set()
        self.total = 0

    def pack(self, t: torch.Tensor) -> torch.Tensor:
        try:
            ptr = t.untyped_storage().data_ptr()
        except Exception:
            return t
        if ptr not in self.params and ptr not in self.seen:
            self.seen.add(ptr)
            self.total += t.untyped_storage().nbytes()
        return t


def run_steps(module: Any, optimizer: torch.optim.Optimizer, lm: FrozenLM, way: Way, batches: list[dict],
              device: torch.device, autocast: bool, measure_memory: bool, params: set[int]) -> tuple[float, int]:
    """One pass of training steps over ``batches``; (seconds, peak bytes)."""
    peak = 0
    lm.set_compiled(way.compiled)
    if device.type == "cuda":
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()
    start = time.perf_counter()
    for batch in batches:
        with torch.autocast(device.type, dtype=torch.bfloat16, enabled=autocast):
            prompts = module.prompts_for(batch["user"])
            if measure_memory and device.type != "cuda":
                saved = SavedBytes(params)
                with torch.autograd.graph.saved_tensors_hooks(saved.pack, lambda t: t):
                    logits = way.logits(lm, batch, prompts)
                    output = module.head(logits)
                    loss = module.head.loss(logits, output, batch["label"])
                peak = max(peak, saved.total)
            else:
                logits = way.logits(lm, batch, prompts)
                output = module.head(logits)
                loss = module.head.loss(logits, output, batch["label"])
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
    if device.type == "cuda":
        torch.cuda.synchronize()
        peak = torch.cuda.max_memory_allocated()
    return time.perf_counter() - start, peak


def nonembedding_params(lm: FrozenLM) -> int:
    emb = lm.model.get_input_embeddings().weight
    head = lm.model.get_output_embeddings().weight
    skip = {emb.data_ptr(), head.data_ptr()}
    return sum(p.numel() for p in lm.model.parameters() if p.data_ptr() not in skip)


# -- main ---------------------------------------------------------------------------------------


def parse_args(argv: list[str] | None = None) -> tuple[argparse.Namespace, list[str]]:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--config", action="append", default=[], help="YAML config (repeatable)")
    p.add_argument("--model", default="target", choices=("source", "target"), help="which model section to run")
    p.add_argument("--templates", default="movie,item_first", help="comma-separated template names")
    p.add_argument("--tasks", default="prompt,adapter", help="prompt and/or adapter")
    p.add_argument("--ways", default="naive,answer-only,plain,prefix-cache", help="ways to run (plain is the reference)")
    p.add_argument("--compile", action="store_true", help="also run prefix-cache+compile")
    p.add_argument("--batches", type=int, default=4, help="training batches per pass")
    p.add_argument("--batch-size", type=int, default=None, help="rows per batch (default: prompt.batch_size)")
    p.add_argument("--repeats", type=int, default=2, help="timed passes per way (alternated)")
    p.add_argument("--prefix-cache-mb", type=float, default=1024.0, help="prefix cache budget")
    p.add_argument("--device", default=None, help="cpu or cuda (default: cuda if available)")
    p.add_argument("--precision", default=None, help="bf16-mixed or 32-true (default: bf16-mixed on GPU)")
    p.add_argument("--peak-tflops", type=float, default=None, help="peak for MFU (default: known GPUs only)")
    p.add_argument("--threads", type=int, default=None, help="torch CPU threads")
    return p.parse_known_args(argv)


def main(argv: list[str] | None = None) -> None:
    args, overrides = parse_args(argv)
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    if args.threads:
        torch.set_num_threads(args.threads)
    cfg = load_config(args.config, overrides)
    device = torch.device(args.device or ("cuda" if torch.cuda.is_available() else "cpu"))
    precision = args.precision or ("bf16-mixed" if device.type == "cuda" else "32-true")
    autocast = precision == "bf16-mixed"
    mcfg = cfg[args.model]
    batch_size = args.batch_size or int(cfg.prompt.batch_size)
    table = build_table(cfg.data, cfg.seed)
    loaded = load_backbone(mcfg.name, dtype=mcfg.dtype, cache_dir=cfg.cache_dir, trust_remote_code=mcfg.trust_remote_code,
                           device=device.type)
    peak_tflops = args.peak_tflops
    if peak_tflops is None and device.type == "cuda":
        name = torch.cuda.get_device_name(device)
        peak_tflops = next((v for k, v in GPU_PEAK_TFLOPS.items() if k in name), None)
    n_params = None
    print(describe_machine(dtype_name(loaded.model.dtype)))
    print(f"# model {mcfg.name} ({loaded.model.dtype}, {device}, {precision}), {torch.get_num_threads()} threads, "
          f"batch {batch_size} x {args.batches} batches, {args.repeats} repeats")
    names = [w for w in args.ways.split(",") if w] + (["prefix-cache+compile"] if args.compile else [])
    all_ways = {
        "naive": Way("naive", naive_logits, "global"),
        "answer-only": Way("answer-only", plain, "global"),
        "plain": Way("plain", plain, "bucketed"),
        "prefix-cache": Way("prefix-cache", cached, "bucketed", cache=True),
        "prefix-cache+compile": Way("prefix-cache+compile", cached, "bucketed", cache=True, compiled=True),
    }
    ways = [all_ways[n] for n in names]
    for template_name in [t for t in args.templates.split(",") if t]:
        template = get_template(template_name)
        lm = FrozenLM(loaded.model, loaded.tokenizer, template.answers, name=loaded.name).to(device)
        cfg.data.template = template_name
        dm = build_datamodule(table, loaded.tokenizer, cfg, batch_size)
        dm.setup("fit")
        bucketed = []
        for batch in dm.train_dataloader():
            bucketed.append(batch)
            if len(bucketed) == args.batches:
                break
        widest = int(max(dm.dataset("train").lengths))
        pad_id = dm.collate.pad_id
        sets = {"bucketed": [to_device(b, device) for b in bucketed],
                "global": [to_device(pad_to(b, widest, pad_id), device) for b in bucketed]}
        samples = sum(len(b["user"]) for b in bucketed)
        tokens = sum(int(b["attention_mask"].sum()) for b in bucketed)
        prefix = sum(int(b["slot_pos"].sum()) for b in bucketed)
        n_params = n_params or nonembedding_params(lm)
        print(f"\n## template {template_name}: {samples} rows, {tokens / samples:.1f} tokens/row, "
              f"{prefix / samples:.1f} before the slot ({100 * prefix / tokens:.0f} %), "
              f"{len({tuple(r[:s].tolist()) for b in bucketed for r, s in zip(b['input_ids'], b['slot_pos'])})} distinct prefixes")
        for task in [t for t in args.tasks.split(",") if t]:
            n_users = table.n_users
            head = build_head(cfg.data.task)
            if task == "prompt":
                prompts = init_prompts(n_users, cfg.prompt.length, lm.hidden_size, seed=cfg.seed)
                module = PromptTuning(lm, head, cfg.data.task, prompts, lr=cfg.prompt.lr)
            else:
                source = init_prompts(n_users, cfg.prompt.length, lm.hidden_size, seed=cfg.seed)
                adapter = build_adapter(cfg.adapter.kind, lm.hidden_size, lm.hidden_size, hidden=cfg.adapter.hidden,
                                        dropout=cfg.adapter.dropout)
                module = Migration(lm, head, cfg.data.task, source, adapter, lr=cfg.adapter.lr)
            module.to(device).train()
            params = [p for p in module.parameters() if p.requires_grad]
            fused = device.type == "cuda"
            optimizer = torch.optim.AdamW(params, lr=1e-4, fused=True) if fused else torch.optim.AdamW(params, lr=1e-4)
            param_ptrs = {p.untyped_storage().data_ptr() for p in module.parameters()}
            tallies = {w.name: Tally() for w in ways}
            cold: dict[str, float] = {}
            # untimed warm-up of every way (allocator, kernels; fills the prefix cache: its cost is printed)
            for way in ways:
                if way.cache:
                    lm.enable_prefix_cache(args.prefix_cache_mb)
                    if lm.prefix_cache is None:
                        raise SystemExit(f"prefix cache unavailable: {lm.prefix_cache_reason}")
                secs, _ = run_steps(module, optimizer, lm, way, sets[way.batches], device, autocast, False, param_ptrs)
                if way.cache:
                    cold[way.name] = secs
                    if not way.compiled:
                        lm.prefix_cache.stats.hits = lm.prefix_cache.stats.misses = 0
            for r in range(args.repeats):
                order = ways[r % len(ways):] + ways[: r % len(ways)]
                for way in order:
                    secs, peak = run_steps(module, optimizer, lm, way, sets[way.batches], device, autocast,
                                           measure_memory=(r == 0), params=param_ptrs)
                    t = tallies[way.name]
                    t.seconds.append(secs)
                    t.samples += samples
                    t.tokens += tokens
                    t.run_tokens += sum(int(b["attention_mask"].numel()) for b in sets[way.batches]) if not way.cache \
                        else sum(int((b["answer_pos"] - b["slot_pos"] + 1).sum()) for b in bucketed)
                    cache_bytes = lm.prefix_cache.bytes if (way.cache and lm.prefix_cache is not None) else 0
                    t.peak_bytes = max(t.peak_bytes, peak + cache_bytes)
            print_table(template_name, task, tallies, cold, n_params, peak_tflops, device)
            if lm.prefix_cache is not None:
                print(f"   cache: {lm.prefix_cache!r}")
            lm.disable_prefix_cache()


def print_table(template: str, task: str, tallies: dict[str, Tally], cold: dict[str, float], n_params: int,
                peak_tflops: float | None, device: torch.device) -> None:
    ref = tallies.get("plain")
    base = tallies.get("naive")
    mem = "peak MB" if device.type == "cuda" else "saved-act+cache MB"
    cols = ["way", "samples/s", "tokens/s", mem, "x plain", "x naive", "x plain per repeat"]
    if peak_tflops:
        cols.append("MFU %")
    print(f"\n### {task} training, template {template}")
    print("| " + " | ".join(cols) + " |")
    print("|" + "---|" * len(cols))
    for name, t in tallies.items():
        total = sum(t.seconds)
        sps = t.samples / total
        row = [name, f"{sps:.2f}", f"{t.tokens / total:.0f}", f"{t.peak_bytes / 2**20:.0f}",
               f"{sps / (ref.samples / sum(ref.seconds)):.2f}" if ref else "-",
               f"{sps / (base.samples / sum(base.seconds)):.2f}" if base else "-",
               ", ".join(f"{a / b:.2f}" for a, b in zip(ref.seconds, t.seconds)) if ref else "-"]
        if peak_tflops:
            flops = 4.0 * n_params * t.run_tokens  # forward + input-gradient backward matmuls
            row.append(f"{100 * flops / total / (peak_tflops * 1e12):.1f}")
        print("| " + " | ".join(row) + " |")
    for name, secs in cold.items():
        t = tallies[name]
        warm = statistics.mean(t.seconds)
        print(f"   {name}: cold first pass (computes every prefix) {secs:.2f} s vs warm {warm:.2f} s")


if __name__ == "__main__":
    main()
