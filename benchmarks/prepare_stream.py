"""Throughput and peak memory of ``prepare`` on a large synthetic raw file.

    python benchmarks/prepare_stream.py --format yelp --lines 2000000 [--workdir DIR] [--keep]

Writes a synthetic raw dataset in the chosen format (``yelp``, ``amazon`` or ``mind``; review/behavior
lines of realistic size, a few malformed ones), then runs :func:`prepare_dataset` on it and reports
lines/s, MB/s and peak memory: ``tracemalloc`` peak of Python allocations during prepare, and the
process's peak RSS (``resource.getrusage``) beside the raw file size and the kept arrays' size, under a ``machine: ...`` line naming the machine.
"""

from __future__ import annotations

import argparse
import json
import resource
import shutil
import tempfile
import time
import tracemalloc
from pathlib import Path

import numpy as np
from omegaconf import OmegaConf

from puma_lightning.config import DataConfig
from puma_lightning.data.prepare import prepare_dataset
from puma_lightning.machine import describe_machine

TEXT = "Great place, friendly staff and the food was excellent. " * 8


def write_yelp(folder: Path, lines: int, rng: np.random.Generator) -> Path:
    n_items, n_users = max(lines // 50, 10), max(lines // 30, 10)
    with open(folder / "yelp_academic_dataset_business.json", "w") as fh:
        for i in range(n_items):
            fh.write(json.dumps({"business_id": f"b{i:08d}", "name": f"Place {i}", "stars": 4.0, "review_count": 12,
                                 "categories": "Food, Bars", "attributes": {"WiFi": "u'free'"}}) + "\n")
    users, items, stars = rng.integers(0, n_users, lines), rng.integers(0, n_items, lines), rng.integers(1, 6, lines)
    path = folder / "yelp_academic_dataset_review.json"
    with open(path, "w") as fh:
        for k in range(lines):
            if k % 10_000 == 7:
                fh.write("{not json\n")
                continue
            fh.write(json.dumps({"review_id": f"r{k}", "user_id": f"user{users[k]:010d}", "business_id": f"b{items[k]:08d}",
                                 "stars": float(stars[k]), "useful": 0, "funny": 0, "cool": 0, "text": TEXT,
                                 "date": f"2019-{1 + k % 12:02d}-{1 + k % 28:02d} 10:{k % 60:02d}:00"}) + "\n")
    return path


def write_amazon(folder: Path, lines: int, rng: np.random.Generator) -> Path:
    n_items, n_users = max(lines // 50, 10), max(lines // 30, 10)
    with open(folder / "meta_Movies_and_TV.jsonl", "w") as fh:
        for i in range(n_items):
            fh.write(json.dumps({"parent_asin": f"B{i:09d}", "title": f"Film {i}", "price": None}) + "\n")
    users, items, stars = rng.integers(0, n_users, lines), rng.integers(0, n_items, lines), rng.integers(1, 6, lines)
    path = folder / "Movies_and_TV.jsonl"
    with open(path, "w") as fh:
        for k in range(lines):
            fh.write(json.dumps({"rating": float(stars[k]), "title": "t", "text": TEXT, "images": [],
                                 "asin": f"B{items[k]:09d}", "parent_asin": f"B{items[k]:09d}",
                                 "user_id": f"A{users[k]:020d}", "timestamp": 1_500_000_000_000 + k,
                                 "helpful_vote": 0, "verified_purchase": True}) + "\n")
    return path


def write_mind(folder: Path, lines: int, rng: np.random.Generator) -> Path:
    train = folder / "train"
    train.mkdir()
    n_news, n_users = 5000, max(lines // 5, 10)
    with open(train / "news.tsv", "w") as fh:
        for i in range(n_news):
            fh.write(f"N{i}\tnews\tsub\tHeadline {i}\tabstract\turl\t[]\t[]\n")
    path = train / "behaviors.tsv"
    with open(path, "w") as fh:
        for k in range(lines):
            u = int(rng.integers(0, n_users))
            hist = " ".join(f"N{(u * 7 + j) % n_news}" for j in range(u % 20))
            imps = " ".join(f"N{int(c)}-{int(c % 5 == 0)}" for c in rng.integers(0, n_news, 10))
            fh.write(f"{k}\tU{u}\t11/{1 + k % 14}/2019 {1 + k % 12}:05:00 {'AM' if k % 2 else 'PM'}\t{hist}\t{imps}\n")
    return path


WRITERS = {"yelp": write_yelp, "amazon": write_amazon, "mind": write_mind}
NAMES = {"yelp": "yelp", "amazon": "amazon-movies", "mind": "mind"}


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--format", choices=sorted(WRITERS), default="yelp")
    ap.add_argument("--lines", type=int, default=2_000_000, help="lines of the big file (reviews / behaviors)")
    ap.add_argument("--workdir", default=None, help="where to write (default: a temporary folder)")
    ap.add_argument("--keep", action="store_true", help="keep the generated files")
    ap.add_argument("--no-tracemalloc", action="store_true", help="skip tracemalloc (it slows Python ~2x)")
    args = ap.parse_args(argv)

    work = Path(args.workdir or tempfile.mkdtemp(prefix="puma_prepare_bench_"))
    raw = work / "raw"
    raw.mkdir(parents=True, exist_ok=True)
    t0 = time.perf_counter()
    big = WRITERS[args.format](raw, args.lines, np.random.default_rng(0))
    gen_s = time.perf_counter() - t0
    size_mb = big.stat().st_size / 1e6
    dcfg = OmegaConf.structured(DataConfig(name=NAMES[args.format], task="click" if args.format == "mind" else "rating",
                                           raw_dir=str(raw), processed_dir=str(work / "processed")))
    rss_before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    if not args.no_tracemalloc:
        tracemalloc.start()
    t0 = time.perf_counter()
    path = prepare_dataset(dcfg, 0)
    seconds = time.perf_counter() - t0
    peak_py = tracemalloc.get_traced_memory()[1] / 1e6 if not args.no_tracemalloc else float("nan")
    tracemalloc.stop()
    rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    manifest = json.loads((path / "manifest.json").read_text())
    kept_mb = sum(p.stat().st_size for p in path.iterdir()) / 1e6
    print(describe_machine(None))
    print(f"format={args.format} lines={args.lines:,} file={size_mb:,.1f} MB (generated in {gen_s:.1f} s)")
    print(f"prepare: {seconds:.1f} s, {args.lines / seconds:,.0f} lines/s, {size_mb / seconds:.1f} MB/s"
          + (" (under tracemalloc)" if not args.no_tracemalloc else ""))
    print(f"kept: {manifest['counts']['rows']:,} rows, {manifest['counts']['users']:,} users, "
          f"{manifest['counts']['items']:,} items; processed folder {kept_mb:.1f} MB")
    print(f"memory: tracemalloc peak {peak_py:,.1f} MB; peak RSS {rss:,.1f} MB (before prepare {rss_before:,.1f} MB)")
    bad = manifest["bad_lines"]["per_file"]
    print("bad lines: " + ", ".join(f"{k}: {v['bad']} of {v['lines']:,}" for k, v in bad.items()))
    if not args.keep and args.workdir is None:
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
