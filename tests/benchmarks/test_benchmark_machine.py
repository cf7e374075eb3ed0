"""The benchmarks without a test of their own print the machine beside their figures (tiny, seconds-long runs)."""

from __future__ import annotations

from pathlib import Path

from benchmark_loader import load_benchmark, machine_line

ROOT = Path(__file__).resolve().parents[2]


def test_kmeans_backends_names_the_machine(capsys):
    assert load_benchmark("kmeans_backends").main(["--scale", "0.0002", "--k", "4", "--iters", "2"]) == 0
    printed = capsys.readouterr().out
    line = machine_line(printed)
    assert "dtype" not in line  # no model
    assert printed.index(line) < printed.index("| data (N x D) |")


def test_prepare_stream_names_the_machine(tmp_path, capsys):
    load_benchmark("prepare_stream").main(["--lines", "2000", "--no-tracemalloc", "--workdir", str(tmp_path)])
    printed = capsys.readouterr().out
    assert "dtype" not in machine_line(printed) and "lines/s" in printed


def test_throughput_names_the_machine_and_dtype(capsys):
    load_benchmark("throughput").main(["--config", str(ROOT / "configs" / "smoke.yaml"), "--templates", "movie",
                                       "--tasks", "prompt", "--ways", "plain", "--batches", "1", "--repeats", "1",
                                       "--batch-size", "4", "--device", "cpu", "data.n_users=8", "data.rows_per_user=4"])
    printed = capsys.readouterr().out
    assert "; dtype float32;" in machine_line(printed)  # tiny model: float32 whatever the CPU
    assert "| plain |" in printed
