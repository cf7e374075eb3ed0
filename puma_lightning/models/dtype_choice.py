"""What ``dtype: auto`` means on the machine it runs on: bf16 only where it is fast there.

- Tiny test models: float32.
- GPU: bfloat16 where the device supports it (``torch.cuda.is_bf16_supported()``), else float32.
- CPU: a short micro-benchmark of the model's own matrix-product shapes (tokens x hidden times
  hidden x intermediate, forward and the input-gradient product of the backward) in float32 and in
  bfloat16. bf16 is chosen only when it is at least :data:`BF16_MIN_SPEEDUP` times faster. CPUs
  without native bf16 (AVX2 only) run it tens of times slower than fp32; CPUs with AVX-512 BF16 or
  AMX run it faster; capability flags alone do not tell (oneDNN may be capped by the environment),
  so it is measured. Each process measures once per shape (a few hundredths of a second) and merges
  the result into ``<cache>/machine/dtype_choice.json``, per machine key (CPU model, ISA capability,
  threads, torch version, ISA caps) and shape, keeping each dtype's *fastest* time seen. A machine
  under load slows both dtypes by chance and can make bf16 look slower than it is; the fastest
  times are the ones taken nearest to a quiet machine, so one quiet run corrects a noisy cached
  figure, and the ratio of the fastest times only moves towards the machine's real ratio.

An explicit ``float32`` / ``bfloat16`` always wins.
"""

from __future__ import annotations

import hashlib
import json
import logging
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import torch

from puma_lightning.machine import machine_key

log = logging.getLogger(__name__)

DTYPES: dict[str, torch.dtype] = {"float32": torch.float32, "bfloat16": torch.bfloat16}

BF16_MIN_SPEEDUP = 1.2
"""bf16 is chosen on a CPU only if its matrix products run at least this many times faster than fp32
(bf16 costs some precision, so a tie goes to fp32)."""

BENCH_ROWS = 128
"""Token rows of the micro-benchmark's products (a batch of 32 rows x a few tokens)."""

CACHE_FILE = Path("machine") / "dtype_choice.json"


@dataclass(frozen=True)
class DtypeChoice:
    """The compute dtype picked for a backbone, and why."""

    dtype: torch.dtype
    reason: str
    """Human-readable: what decided it (explicit, tiny model, GPU support, or the measured ratio)."""
    bf16_speedup: float | None = None
    """fp32 time / bf16 time of the micro-benchmark (> 1: bf16 faster); None when nothing was measured."""


def _timed(fn: Callable[[], object]) -> float:
    start = time.perf_counter()
    fn()
    return time.perf_counter() - start


def measure_bf16_speedup(hidden: int, intermediate: int, rows: int = BENCH_ROWS, repeats: int = 3) -> dict[str, float]:
    """Best-of-``repeats`` seconds of the two products of one MLP layer in fp32 and bf16, and their ratio.

    Products: ``x[rows, hidden] @ W[hidden, intermediate]`` (forward) and ``g[rows, intermediate] @
    W^T`` (gradient to the input, what backpropagation to the prompts runs). The dtypes alternate so
    that machine noise hits both; a bf16 already 4x slower on its first timed run is not timed again.
    """
    gen = torch.Generator().manual_seed(0)
    tensors = {}
    for name, dt in DTYPES.items():
        x = torch.randn(rows, hidden, generator=gen).to(dt)
        w = torch.randn(hidden, intermediate, generator=gen).to(dt)
        g = torch.randn(rows, intermediate, generator=gen).to(dt)
        tensors[name] = (x, w, g)

    def run(name: str) -> None:
        x, w, g = tensors[name]
        torch.mm(x, w)
        torch.mm(g, w.t())

    for name in DTYPES:  # warm-up: kernel selection and JIT, first-touch of the operands
        run(name)
    best = {name: _timed(lambda n=name: run(n)) for name in DTYPES}
    if best["bfloat16"] < 4 * best["float32"]:  # a clear loser is not timed again (it can take seconds)
        for _ in range(repeats - 1):
            for name in DTYPES:
                best[name] = min(best[name], _timed(lambda n=name: run(n)))
    return {"fp32_s": best["float32"], "bf16_s": best["bfloat16"], "bf16_speedup": best["float32"] / best["bfloat16"]}


def _cache_key(hidden: int, intermediate: int) -> str:
    key = {**machine_key(), "hidden": hidden, "intermediate": intermediate, "rows": BENCH_ROWS}
    return hashlib.sha256(json.dumps(key, sort_keys=True).encode()).hexdigest()[:16]


def _read_cache(path: Path) -> dict:
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
        return data if isinstance(data, dict) else {}
    except (OSError, ValueError):
        return {}


MEASURED_THIS_PROCESS: dict[str, tuple[float, bool]] = {}
"""Shape key -> (ratio, came from the cache): one process measures a shape once, so every stage of a run gets the
same choice."""


def forget_process_measurements() -> None:
    """Measure again in this process (tests, or a benchmark that changed the thread count's meaning)."""
    MEASURED_THIS_PROCESS.clear()


def merge_measurements(cached: dict | None, measured: dict[str, float]) -> dict[str, float | int]:
    """``cached`` and ``measured`` merged: each dtype's fastest seconds, their ratio, and how many measurements."""
    if not (isinstance(cached, dict) and all(isinstance(cached.get(k), (int, float)) and cached[k] > 0
                                             for k in ("fp32_s", "bf16_s"))):
        return {**measured, "measurements": 1}
    fp32_s = min(float(cached["fp32_s"]), measured["fp32_s"])
    bf16_s = min(float(cached["bf16_s"]), measured["bf16_s"])
    count = cached.get("measurements")
    return {"fp32_s": fp32_s, "bf16_s": bf16_s, "bf16_speedup": fp32_s / bf16_s,
            "measurements": (count if isinstance(count, int) else 1) + 1}


def cpu_bf16_speedup(hidden: int, intermediate: int, cache_dir: Path | None) -> tuple[float, bool]:
    """The fp32/bf16 speed ratio on this machine for these shapes, from the fastest times measured so far, and
    whether earlier measurements (the cache) took part."""
    key = _cache_key(hidden, intermediate)
    if key in MEASURED_THIS_PROCESS:
        return MEASURED_THIS_PROCESS[key]
    measured = measure_bf16_speedup(hidden, intermediate)
    path = cache_dir / CACHE_FILE if cache_dir is not None else None
    if path is None:
        MEASURED_THIS_PROCESS[key] = (measured["bf16_speedup"], False)
        return MEASURED_THIS_PROCESS[key]
    from puma_lightning.io.atomic import atomic_write_text

    data = _read_cache(path)
    cached = data.get(key)
    merged = merge_measurements(cached, measured)
    data[key] = {**merged, **machine_key(), "hidden": hidden, "intermediate": intermediate,
                 "measured_at": time.strftime("%Y-%m-%dT%H:%M:%S")}
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        atomic_write_text(path, json.dumps(data, indent=1, sort_keys=True))
    except OSError as err:  # a read-only cache only costs the merge
        log.warning("could not cache the dtype measurement in %s: %s", path, err)
    MEASURED_THIS_PROCESS[key] = (float(merged["bf16_speedup"]), merged["measurements"] > 1)
    return MEASURED_THIS_PROCESS[key]


def choose_dtype(requested: str, *, tiny: bool, device: str, hidden: int, intermediate: int,
                 cache_dir: Path | None) -> DtypeChoice:
    """The compute dtype for a backbone: ``requested`` if explicit, else the rule in this module's docstring."""
    if requested != "auto":
        if requested not in DTYPES:
            raise ValueError(f"dtype must be one of 'auto', {', '.join(map(repr, DTYPES))}; got {requested!r}")
        return DtypeChoice(DTYPES[requested], f"{requested} as configured")
    if tiny:
        return DtypeChoice(torch.float32, "tiny test model")
    if device.startswith("cuda"):
        if torch.cuda.is_available() and torch.cuda.is_bf16_supported():
            return DtypeChoice(torch.bfloat16, "the GPU supports bf16")
        return DtypeChoice(torch.float32, "the GPU does not support bf16")
    speedup, cached = cpu_bf16_speedup(hidden, intermediate, cache_dir)
    where = "fastest of this and earlier measurements" if cached else "measured now"
    verdict = "at least" if speedup >= BF16_MIN_SPEEDUP else "below"
    reason = (f"bf16 matmul {speedup:.3g}x the speed of fp32 on this CPU ({where}, {hidden}x{intermediate}, "
              f"{verdict} the {BF16_MIN_SPEEDUP}x needed for bf16)")
    dtype = torch.bfloat16 if speedup >= BF16_MIN_SPEEDUP else torch.float32
    return DtypeChoice(dtype, reason, speedup)
