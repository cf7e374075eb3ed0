"""Amazon Reviews 2023 (Movies_and_TV) reader, filters and an end-to-end run on a fixture."""

from __future__ import annotations

import gzip
import json
from pathlib import Path

import numpy as np
import pytest
from omegaconf import OmegaConf

from puma_lightning.config import DataConfig
from puma_lightning.data.prepare import apply_filters, prepare_params
from puma_lightning.data.prepared import load_prepared
from puma_lightning.data.raw.amazon import read_amazon_csv, read_amazon_reviews
from puma_lightning.errors import PumaError

T0 = 1_600_000_000_000  # ms


def write(path: Path, lines: list[str], gz: bool = False) -> Path:
    data = ("\n".join(lines) + "\n").encode("utf-8")
    path.write_bytes(gzip.compress(data) if gz else data)
    return path


def review(user: str, asin: str, rating, ts: int, **extra) -> str:
    return json.dumps({"rating": rating, "title": "t", "text": "a\nb", "images": [], "asin": asin + "x",
                       "parent_asin": asin, "user_id": user, "timestamp": ts, "helpful_vote": 0,
                       "verified_purchase": True, **extra})


META = [
    json.dumps({"parent_asin": "A1", "title": "Movie One", "price": 9.99, "main_category": "Movies & TV"}),
    json.dumps({"parent_asin": "A2", "title": "  Movie\nTwo  ", "price": "$12.50", "details": {"Format": "DVD"}}),
    json.dumps({"parent_asin": "A3", "title": None, "price": None}),
    json.dumps({"parent_asin": "A4", "title": "", "price": "—"}),
    '{"parent_asin": "A9", "title": "broken',
    json.dumps({"parent_asin": "A5", "title": "Movie Five", "price": None, "categories": []}),
]
REVIEWS = [
    review("u1", "A1", 5.0, T0 + 1000),
    review("u1", "A2", 4.0, T0 + 2000),
    review("u1", "A5", 3.0, T0 + 3000),
    review("u1", "A3", 2.0, T0 + 4000),      # untitled item
    review("u1", "NOMETA", 1.0, T0 + 5000),  # no meta line
    review("u2", "A1", 1.0, 1588687728923),
    review("u2", "A2", 2.0, 1588687729923),
    review("u2", "A5", 3.0, 1588687730923),
    "{this is not json",
    review("u3", "A1", 4.0, T0),
    review("u3", "A2", 5.0, T0 + 1),
    review("u4", "A1", 0.0, T0),              # rating outside 1-5
    review("u4", "A1", 6.0, T0),              # rating outside 1-5
    json.dumps({"rating": 3.0, "parent_asin": "A1", "timestamp": T0}),  # no user_id
    review("u4", "A1", 3.0, T0 + 7),
]


@pytest.fixture
def raw(tmp_path):
    write(tmp_path / "meta_Movies_and_TV.jsonl.gz", META, gz=True)
    write(tmp_path / "Movies_and_TV.jsonl", REVIEWS)
    return tmp_path


def params(**kw):
    return prepare_params(OmegaConf.structured(DataConfig(name="amazon-movies", **kw)))


def test_read_counts_and_quirks(raw):
    data = read_amazon_reviews(raw, max_bad_fraction=0.3)
    assert data.item_ids == ["A1", "A2", "A5"]
    assert data.item_texts == ["Movie One", "Movie Two", "Movie Five"]
    assert data.user_ids == ["u1", "u2", "u3", "u4"]
    assert len(data) == 9
    steps = {s["step"]: s for s in data.steps}
    assert steps["meta"] == {"step": "meta", "meta_lines": 5, "meta_ids": 5, "meta_titled": 3, "meta_untitled": 2,
                             "meta_repeated_ids": 0, "meta_repeats_keep": "first"}
    assert steps["read"]["rows"] == 11
    assert steps["drop_untitled_items"]["dropped_rows"] == 2
    u2 = data.arrays["user"] == 1
    assert data.arrays["timestamp"][u2].tolist() == [1588687728, 1588687729, 1588687730]  # ms -> s
    assert data.arrays["label"][u2].tolist() == [1.0, 2.0, 3.0]
    assert data.bad["per_file"] == {"meta_Movies_and_TV.jsonl.gz": {"lines": 6, "bad": 1},
                                    "Movies_and_TV.jsonl": {"lines": 15, "bad": 4}}
    assert data.bad["examples"][0].startswith("meta_Movies_and_TV.jsonl.gz:5: ")
    assert data.bad["examples"][1].startswith("Movies_and_TV.jsonl:9: ")
    assert "outside 1-5" in data.bad["examples"][2]
    assert {f.path.rsplit("/", 1)[1]: len(f.sha256) for f in data.files} == {"meta_Movies_and_TV.jsonl.gz": 64,
                                                                             "Movies_and_TV.jsonl": 64}


def test_paper_titles_and_times_follow_the_published_script(tmp_path):
    """``paper``: a title blank after ``str.strip()`` is dropped, others are kept verbatim (a non-string one as its
    ``str``); a negative timestamp is kept as it is. ``clean`` counts a negative timestamp as malformed."""
    from puma_lightning.data.raw.amazon import PUBLISHED_SCRIPT

    titles = {"W1": " ", "W2": "\t\r\n", "W3": "\u3000\u2003", "W4": "\xa0", "K1": " Kept ", "K2": "\u200b", "K3": 1984,
              "K4": "x"}
    write(tmp_path / "meta_Movies_and_TV.jsonl", [json.dumps({"parent_asin": a, "title": t}) for a, t in titles.items()])
    write(tmp_path / "Movies_and_TV.jsonl", [review("u1", a, 4.0, T0 + k) for k, a in enumerate(titles)]
          + [review("u2", "K4", 3.0, -1), review("u2", "K4", 2.0, -T0), review("u2", "K1", 1.0, 0)])
    paper = read_amazon_reviews(tmp_path, preprocessing="paper")
    # what the script's ``ItemTitle.str.strip() != ''`` keeps (a non-string gives NaN there, which is not '')
    kept = [a for a, t in titles.items() if not (isinstance(t, str) and t.strip() == "")]
    assert paper.item_ids == kept == ["K1", "K2", "K3", "K4"]
    assert paper.item_texts == [" Kept ", "\u200b", "1984", "x"]
    assert paper.steps[0]["meta_untitled"] == 4 and paper.steps[2]["dropped_rows"] == 4
    u2 = paper.arrays["user"] == 1
    assert paper.arrays["timestamp"][u2].tolist() == [-1, -T0, 0] and paper.bad["per_file"]["Movies_and_TV.jsonl"]["bad"] == 0
    assert paper.rules["follows"] == PUBLISHED_SCRIPT
    clean = read_amazon_reviews(tmp_path, bad_lines_allowed=2)
    assert clean.item_ids == ["K1", "K4"] and clean.item_texts == ["Kept", "x"]
    assert clean.bad["per_file"]["Movies_and_TV.jsonl"]["bad"] == 2 and "negative timestamp" in clean.bad["examples"][0]
    assert "follows" not in clean.rules


@pytest.mark.parametrize("mode", ["paper", "clean"])
def test_timestamps_beyond_int64_are_bad_lines_not_tracebacks(tmp_path, mode):
    write(tmp_path / "meta_Movies_and_TV.jsonl", [json.dumps({"parent_asin": "A1", "title": "One"})])
    lines = [review("u1", "A1", 4.0, T0)] + ['{"user_id": "u1", "parent_asin": "A1", "rating": 4.0, "timestamp": %s}' % v
                                            for v in ("Infinity", "-Infinity", "NaN", "1e30", str(2**63), '"1e400"')]
    write(tmp_path / "Movies_and_TV.jsonl", lines)
    data = read_amazon_reviews(tmp_path, preprocessing=mode, bad_lines_allowed=6)
    assert len(data) == 1 and data.bad["per_file"]["Movies_and_TV.jsonl"]["bad"] == 6
    assert all("timestamp" in e for e in data.bad["examples"])


def test_paper_rating_beyond_float32_is_a_bad_line_not_an_inf_label(tmp_path):
    write(tmp_path / "meta_Movies_and_TV.jsonl", [json.dumps({"parent_asin": "A1", "title": "One"})])
    write(tmp_path / "Movies_and_TV.jsonl", [review("u1", "A1", r, T0) for r in (4.0, 0.0, -2.5, 1e39, -1e39, 3e38)])
    data = read_amazon_reviews(tmp_path, preprocessing="paper", bad_lines_allowed=2)
    assert data.arrays["label"].tolist() == pytest.approx([4.0, 0.0, -2.5, 3e38], rel=1e-6)
    assert np.isfinite(data.arrays["label"]).all() and data.bad["per_file"]["Movies_and_TV.jsonl"]["bad"] == 2


def test_gzip_detected_by_magic_not_extension(raw):
    # gzip bytes under the plain name and plain bytes under the .gz name both read the same
    (raw / "Movies_and_TV.jsonl").unlink()
    write(raw / "Movies_and_TV.jsonl", REVIEWS, gz=True)
    (raw / "meta_Movies_and_TV.jsonl.gz").unlink()
    write(raw / "meta_Movies_and_TV.jsonl.gz", META)
    assert len(read_amazon_reviews(raw, max_bad_fraction=0.3)) == 9


def test_filters_exact_counts(raw):
    data = read_amazon_reviews(raw, max_bad_fraction=0.3)
    out = apply_filters(data, params(min_item_ratings=2, min_user_ratings=2, max_rows_per_user=2))
    steps = [(s["step"], s["rows"], s["users"], s["items"]) for s in out.steps if "rows" in s and "users" in s][1:]
    assert steps == [("drop_exact_duplicates", 9, 4, 3), ("items_with_>=2", 9, 4, 3), ("users_with_>=2", 8, 3, 3), ("latest_2_per_user", 6, 3, 3),
                     ("final", 6, 3, 3)]
    assert out.user_ids == ["u1", "u2", "u3"]
    u1 = out.arrays["user"] == 0
    assert sorted(out.arrays["item"][u1].tolist()) == [1, 2]  # A2, A5: u1's two latest
    out3 = apply_filters(data, params(min_item_ratings=3, min_user_ratings=2))
    assert out3.item_ids == ["A1", "A2"] and len(out3) == 6


def test_kcore_iterates_until_stable():
    from puma_lightning.data.raw.common import RawData

    pairs = [("a", "X"), ("a", "Y"), ("b", "X"), ("b", "Y"), ("c", "Y"), ("c", "Z"), ("d", "Z")]
    users, items = ["a", "b", "c", "d"], ["X", "Y", "Z"]
    arrays = {"user": np.array([users.index(u) for u, _ in pairs]), "item": np.array([items.index(i) for _, i in pairs]),
              "label": np.full(7, 3.0, np.float32), "timestamp": np.arange(7)}
    data = RawData("amazon-movies", "rating", users, items, items, arrays)
    one_pass = apply_filters(data, params(min_item_ratings=2, min_user_ratings=2))
    assert len(one_pass) == 6 and one_pass.user_ids == ["a", "b", "c"]
    kc = apply_filters(data, params(min_item_ratings=2, min_user_ratings=2, kcore=True))
    assert len(kc) == 4 and kc.user_ids == ["a", "b"] and kc.item_ids == ["X", "Y"]
    assert [s["round"] for s in kc.steps if "round" in s] == [1, 1, 2, 2, 3, 3]


def test_too_many_bad_lines_is_one_line_error(raw, tmp_path):
    with pytest.raises(PumaError, match=r"Movies_and_TV.jsonl: 4 of 15 lines are malformed .*nothing was written") as err:
        read_amazon_reviews(raw, max_bad_fraction=0.2)
    assert "\n" not in str(err.value)
    # 4 bad lines: more than 1 %, and more than an allowance of 3 (the default allowance, 10, tolerates them)
    cfg = OmegaConf.structured(DataConfig(name="amazon-movies", raw_dir=str(raw), processed_dir=str(tmp_path / "p"),
                                          bad_lines_allowed=3))
    with pytest.raises(PumaError):
        load_prepared(cfg, 0)
    assert not (tmp_path / "p").exists()
    assert [p.name for p in tmp_path.iterdir() if p.name.startswith(".p")] == []


def test_missing_files_named(tmp_path):
    with pytest.raises(PumaError, match="meta_Movies_and_TV.jsonl, meta_Movies_and_TV.jsonl.gz"):
        read_amazon_reviews(tmp_path)
    with pytest.raises(PumaError, match="set data.raw_dir"):
        read_amazon_reviews(None)
    with pytest.raises(PumaError, match="not a folder"):
        read_amazon_reviews(tmp_path / "nope")


def test_benchmark_csv(tmp_path):
    write(tmp_path / "meta_Movies_and_TV.jsonl", META)
    head = "user_id,parent_asin,rating,timestamp,history"
    write(tmp_path / "Movies_and_TV.train.csv", [head, f"u1,A1,5.0,{T0},", f"u1,A2,4.0,{T0 + 1000},A1",
                                                 "u1,A5,bad,1,A1 A2", f"u2,A1,3.0,{T0},"])
    write(tmp_path / "Movies_and_TV.valid.csv", [head, f"u1,A5,2.0,{T0 + 5000},A1 A2", f"u2,A3,2.0,{T0},A1"])
    write(tmp_path / "Movies_and_TV.test.csv", [head, f"u1,A1,1.0,{T0 + 9000},A1 A2 A5,extra",
                                                f"u2,A2,4.0,{T0 + 9000},A1", f"u3,A2,4.0,{T0},"])
    data = read_amazon_csv(tmp_path, max_bad_fraction=0.5)
    assert len(data) == 6 and data.arrays["origin"].tolist() == [0, 0, 0, 1, 2, 2]
    assert data.bad["per_file"]["Movies_and_TV.train.csv"] == {"lines": 4, "bad": 1}
    assert data.bad["per_file"]["Movies_and_TV.test.csv"] == {"lines": 3, "bad": 1}
    assert data.steps[2]["dropped_rows"] == 1  # u2's A3 has no usable title
    assert data.arrays["timestamp"].tolist()[:2] == [T0 // 1000, T0 // 1000 + 1]


def make_fixture(folder: Path, n_users: int = 24, per_user: int = 10, n_items: int = 14, seed: int = 0) -> Path:
    """A few dozen users with a taste pattern, plus quirks: gzip meta, untitled and unknown items, one bad line."""
    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    meta = [json.dumps({"parent_asin": f"B{i:03d}", "title": f"Film number {i} ({1980 + i})",
                        "price": [9.99, "$5", None][i % 3]}) for i in range(n_items)]
    meta.append(json.dumps({"parent_asin": "BNULL", "title": None}))
    write(folder / "meta_Movies_and_TV.jsonl.gz", meta, gz=True)
    lines = []
    for u in range(n_users):
        for k, i in enumerate(rng.choice(n_items, size=per_user, replace=False)):
            rating = float(np.clip(round(3 + (1 if (u + i) % 2 else -1) + rng.normal(0, 0.5)), 1, 5))
            lines.append(review(f"USER{u}", f"B{i:03d}", rating, T0 + 86_400_000 * k + u))
        lines.append(review(f"USER{u}", "BNULL", 3.0, T0))
    lines.insert(5, "garbage")
    write(folder / "Movies_and_TV.jsonl", lines)
    return folder


def run_fit(tmp_path: Path, overrides: list[str]) -> dict:
    """The smoke pipeline with tiny models on a fixture dataset; returns results.json."""
    from puma_lightning.cli.config_loader import load_config
    from puma_lightning.pipeline.experiment import Experiment

    repo = Path(__file__).resolve().parents[2]
    cfg = load_config([repo / "configs" / "smoke.yaml"], [
        f"run_dir={tmp_path / 'run'}", f"data.processed_dir={tmp_path / 'processed'}", "prompt.epochs=1",
        "adapter.epochs=1", "baselines.full_retrain=false", "baselines.random_init=false",
        "trainer.enable_progress_bar=false", "selection.budget=8", "selection.n_clusters=2",
        "selection.min_per_cluster=2", *overrides])
    Experiment(cfg).fit()
    return json.loads((tmp_path / "run" / "results.json").read_text())


def test_end_to_end_fit(tmp_path):
    raw = make_fixture(tmp_path / "raw")
    results = run_fit(tmp_path, ["data.name=amazon-movies", f"data.raw_dir={raw}", "data.template=movie_tv",
                                 "data.min_user_ratings=5"])
    assert results["task"] == "rating" and results["dataset"] == "amazon-movies"
    assert results["num_users"] == 24
    for method in ("source", "puma"):
        assert np.isfinite(results["methods"][method]["rmse"]) and np.isfinite(results["methods"][method]["mae"])
