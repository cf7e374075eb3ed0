"""``dtype: auto``: explicit dtypes win, tiny models are fp32, GPUs use bf16 where supported, and on a
CPU bf16 is chosen only where a measured micro-benchmark shows it faster (cached per machine)."""

from __future__ import annotations

import json
import platform
import subprocess
import sys

import pytest
import torch

import puma_lightning.models.dtype_choice as dc
from puma_lightning.models.loading import load_backbone


@pytest.fixture(autouse=True)
def _fresh_process():
    """Each test starts as a new process would: nothing measured yet."""
    dc.forget_process_measurements()
    yield
    dc.forget_process_measurements()


def _fixed_speedup(monkeypatch, speedup: float) -> list[tuple[int, int]]:
    calls: list[tuple[int, int]] = []

    def fake(hidden: int, intermediate: int, rows: int = dc.BENCH_ROWS, repeats: int = 3) -> dict[str, float]:
        calls.append((hidden, intermediate))
        return {"fp32_s": speedup, "bf16_s": 1.0, "bf16_speedup": speedup}

    monkeypatch.setattr(dc, "measure_bf16_speedup", fake)
    return calls


def _never_measure(monkeypatch) -> None:
    def boom(*a, **k):
        raise AssertionError("measured although the answer was known")

    monkeypatch.setattr(dc, "measure_bf16_speedup", boom)


@pytest.mark.parametrize("requested,expected", [("float32", torch.float32), ("bfloat16", torch.bfloat16)])
def test_explicit_dtype_always_wins(monkeypatch, tmp_path, requested, expected):
    _never_measure(monkeypatch)
    for device in ("cpu", "cuda"):
        for tiny in (True, False):
            choice = dc.choose_dtype(requested, tiny=tiny, device=device, hidden=576, intermediate=1536, cache_dir=tmp_path)
            assert choice.dtype == expected and "configured" in choice.reason


def test_bad_dtype_is_an_error(tmp_path):
    with pytest.raises(ValueError, match="float16"):
        dc.choose_dtype("float16", tiny=False, device="cpu", hidden=8, intermediate=8, cache_dir=tmp_path)
    with pytest.raises(ValueError, match="float16"):
        load_backbone("tiny-llama", dtype="float16")


def test_tiny_models_are_fp32(monkeypatch, tmp_path):
    _never_measure(monkeypatch)
    assert dc.choose_dtype("auto", tiny=True, device="cpu", hidden=32, intermediate=64, cache_dir=tmp_path).dtype == torch.float32
    b = load_backbone("tiny-llama", cache_dir=tmp_path)
    assert b.model.dtype == torch.float32 and b.dtype_choice.dtype == torch.float32


@pytest.mark.parametrize("speedup,expected", [(0.02, torch.float32), (1.1, torch.float32), (1.2, torch.bfloat16),
                                              (3.0, torch.bfloat16)])
def test_cpu_auto_follows_the_measured_ratio(monkeypatch, tmp_path, speedup, expected):
    _fixed_speedup(monkeypatch, speedup)
    choice = dc.choose_dtype("auto", tiny=False, device="cpu", hidden=576, intermediate=1536, cache_dir=tmp_path)
    assert choice.dtype == expected
    assert choice.bf16_speedup == pytest.approx(speedup)
    assert f"{speedup:.3g}x" in choice.reason and "measured now" in choice.reason


def test_one_measurement_a_process_merged_per_machine_and_shape(monkeypatch, tmp_path):
    calls = _fixed_speedup(monkeypatch, 0.05)
    first = dc.choose_dtype("auto", tiny=False, device="cpu", hidden=576, intermediate=1536, cache_dir=tmp_path)
    again = dc.choose_dtype("auto", tiny=False, device="cpu", hidden=576, intermediate=1536, cache_dir=tmp_path)
    assert calls == [(576, 1536)] and first.dtype == again.dtype == torch.float32  # once a process
    record = next(iter(json.loads((tmp_path / dc.CACHE_FILE).read_text()).values()))
    assert record["bf16_speedup"] == pytest.approx(0.05) and record["capability"] and record["torch"] == torch.__version__
    assert record["measurements"] == 1
    dc.forget_process_measurements()  # the next process measures again and merges
    later = dc.choose_dtype("auto", tiny=False, device="cpu", hidden=576, intermediate=1536, cache_dir=tmp_path)
    assert "earlier measurements" in later.reason
    assert next(iter(json.loads((tmp_path / dc.CACHE_FILE).read_text()).values()))["measurements"] == 2
    dc.choose_dtype("auto", tiny=False, device="cpu", hidden=640, intermediate=2048, cache_dir=tmp_path)  # other shape
    threads = torch.get_num_threads()
    monkeypatch.setattr(torch, "get_num_threads", lambda: threads + 1)  # another thread count: its own record
    dc.choose_dtype("auto", tiny=False, device="cpu", hidden=576, intermediate=1536, cache_dir=tmp_path)
    monkeypatch.setenv("ONEDNN_MAX_CPU_ISA", "AVX2")  # an ISA cap changes speed: its own record
    dc.choose_dtype("auto", tiny=False, device="cpu", hidden=576, intermediate=1536, cache_dir=tmp_path)
    assert len(calls) == 5 and len(json.loads((tmp_path / dc.CACHE_FILE).read_text())) == 4


def _measures(monkeypatch, fp32_s: float, bf16_s: float) -> None:
    monkeypatch.setattr(dc, "measure_bf16_speedup", lambda *a, **k: {
        "fp32_s": fp32_s, "bf16_s": bf16_s, "bf16_speedup": fp32_s / bf16_s})


def test_a_figure_taken_under_load_is_corrected_by_a_quiet_one(monkeypatch, tmp_path):
    """Under load both products ran ~6x slower and bf16 looked 0.82x; the quiet run's fastest times give ~4x."""
    _measures(monkeypatch, fp32_s=0.023, bf16_s=0.028)
    assert dc.choose_dtype("auto", tiny=False, device="cpu", hidden=640, intermediate=2048,
                           cache_dir=tmp_path).dtype == torch.float32
    dc.forget_process_measurements()
    _measures(monkeypatch, fp32_s=0.0041, bf16_s=0.00098)
    quiet = dc.choose_dtype("auto", tiny=False, device="cpu", hidden=640, intermediate=2048, cache_dir=tmp_path)
    assert quiet.dtype == torch.bfloat16 and quiet.bf16_speedup == pytest.approx(0.0041 / 0.00098)


def test_a_quiet_figure_is_not_overturned_by_a_noisy_one(monkeypatch, tmp_path):
    _measures(monkeypatch, fp32_s=0.0041, bf16_s=0.00098)
    dc.choose_dtype("auto", tiny=False, device="cpu", hidden=640, intermediate=2048, cache_dir=tmp_path)
    dc.forget_process_measurements()
    _measures(monkeypatch, fp32_s=0.023, bf16_s=0.028)  # the next run measured under load
    noisy = dc.choose_dtype("auto", tiny=False, device="cpu", hidden=640, intermediate=2048, cache_dir=tmp_path)
    assert noisy.dtype == torch.bfloat16 and noisy.bf16_speedup == pytest.approx(0.0041 / 0.00098)


def test_a_cached_record_without_times_is_replaced(monkeypatch, tmp_path):
    """A record from before the times were kept (only a ratio, here a noisy 0.5x) takes no part in the merge."""
    _measures(monkeypatch, fp32_s=2.0, bf16_s=1.0)
    dc.choose_dtype("auto", tiny=False, device="cpu", hidden=8, intermediate=8, cache_dir=tmp_path)
    path = tmp_path / dc.CACHE_FILE
    path.write_text(json.dumps({key: {"bf16_speedup": 0.5} for key in json.loads(path.read_text())}))
    dc.forget_process_measurements()
    assert dc.choose_dtype("auto", tiny=False, device="cpu", hidden=8, intermediate=8, cache_dir=tmp_path).dtype == torch.bfloat16


def test_unreadable_cache_is_measured_again(monkeypatch, tmp_path):
    calls = _fixed_speedup(monkeypatch, 2.0)
    (tmp_path / dc.CACHE_FILE).parent.mkdir(parents=True)
    (tmp_path / dc.CACHE_FILE).write_text("{not json")
    assert dc.choose_dtype("auto", tiny=False, device="cpu", hidden=8, intermediate=8, cache_dir=tmp_path).dtype == torch.bfloat16
    assert len(calls) == 1 and json.loads((tmp_path / dc.CACHE_FILE).read_text())  # rewritten whole


def test_gpu_auto_uses_bf16_where_supported(monkeypatch, tmp_path):
    _never_measure(monkeypatch)
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "is_bf16_supported", lambda *a, **k: True)
    assert dc.choose_dtype("auto", tiny=False, device="cuda", hidden=8, intermediate=8, cache_dir=tmp_path).dtype == torch.bfloat16
    monkeypatch.setattr(torch.cuda, "is_bf16_supported", lambda *a, **k: False)
    assert dc.choose_dtype("auto", tiny=False, device="cuda", hidden=8, intermediate=8, cache_dir=tmp_path).dtype == torch.float32


def test_local_folder_auto_measures_the_checkpoints_own_shape(monkeypatch, tmp_path):
    b = load_backbone("tiny-qwen2")
    b.model.save_pretrained(tmp_path / "ckpt")
    b.tokenizer.save_pretrained(tmp_path / "ckpt")
    calls = _fixed_speedup(monkeypatch, 0.5)
    loaded = load_backbone(str(tmp_path / "ckpt"), cache_dir=tmp_path / "cache")
    cfg = b.model.config
    assert calls == [(cfg.hidden_size, cfg.intermediate_size)]
    assert loaded.model.dtype == torch.float32 and loaded.dtype_choice.bf16_speedup == pytest.approx(0.5)


@pytest.mark.skipif(platform.machine().lower() not in ("x86_64", "amd64"), reason="oneDNN ISA caps are x86 names")
def test_cpu_without_native_bf16_gets_fp32(tmp_path):
    """On an x86 CPU capped to AVX2 (no native bf16 kernels, as on many AMD EPYC and laptop CPUs) the
    real measurement finds bf16 far slower and ``auto`` picks fp32: the measurement, not a flag, decides."""
    code = (
        "import torch, puma_lightning.models.dtype_choice as dc;"
        "c = dc.choose_dtype('auto', tiny=False, device='cpu', hidden=576, intermediate=1536, cache_dir=None);"
        "print(c.dtype, c.bf16_speedup)"
    )
    env = {"ONEDNN_MAX_CPU_ISA": "AVX2", "ATEN_CPU_CAPABILITY": "avx2", "PATH": "/usr/bin:/bin"}
    out = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    dtype, speedup = out.stdout.split()
    assert dtype == "torch.float32" and float(speedup) < 0.5, out.stdout
