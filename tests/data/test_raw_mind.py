"""MIND reader (TSV without quoting, 12-hour times, unlabeled test lines), click samples, history
text and an end-to-end run with AUC/uAUC."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from omegaconf import OmegaConf

from puma_lightning.config import DataConfig
from puma_lightning.data.prepared import load_prepared, load_unlabeled
from puma_lightning.data.raw.mind import parse_impressions, parse_time, read_mind
from puma_lightning.errors import PumaError
from tests.data.test_raw_amazon import run_fit, write


def news(nid: str, title: str, cols: int = 8) -> str:
    return "\t".join([nid, "news", "sub", title, "abstract", "https://x", "[]", "[]"][:cols])


@pytest.fixture
def raw(tmp_path):
    train = tmp_path / "train"
    train.mkdir()
    write(train / "news.tsv", [news("N1", "First title"), news("N2", '"Quoted start title'), news("N3", ""),
                               news("N4", "Fourth"), news("N5", "Short", cols=7)])
    write(train / "behaviors.tsv", [
        "1\tU1\t11/11/2019 12:05:00 AM\tN1 N2\tN4-1 N2-0 N3-0",
        "2\tU1\t11/11/2019 12:05:00 PM\t\tN4-0 N1-1",
        "3\tU2\t11/12/2019 9:05:58 AM\tN1 N9\tN2-1 N4-0",
        "4\tU2\t11/12/2019 9:05:58 XM\tN1\tN2-1",
        "5\tU3\t11/12/2019 9:05:58 AM\t\tN12-",
        "6\tU3\t11/12/2019 9:05:58 AM\t\tN2-2",
        "7\tU3\t11/12/2019 9:05:58 AM\tN1",
    ])
    test = tmp_path / "test"
    test.mkdir()
    write(test / "news.tsv", [news("N1", "First title"), news("N6", "Sixth")])
    write(test / "behaviors.tsv", ["9\tU1\t11/15/2019 1:00:00 PM\tN1 N2\tN4 N6", "10\tU7\t11/15/2019 1:00:00 PM\t\tN6"])
    return tmp_path


def test_parsers():
    assert parse_time("11/11/2019 12:05:00 AM") == 1573430700  # 00:05 UTC
    assert parse_time("11/11/2019 12:05:00 PM") == 1573430700 + 12 * 3600
    assert parse_time("11/11/2019 1:05:00 PM") == 1573430700 + 13 * 3600
    for bad in ("11/11/2019 13:05:00 PM", "11/11/2019 0:05:00 AM", "2019-11-11 10:00:00", "11/31/2019 1:00:00 AM"):
        with pytest.raises(ValueError):
            parse_time(bad)
    assert parse_impressions("N1-1 N22-0") == (["N1", "N22"], [1, 0])
    assert parse_impressions("N1 N22") == (["N1", "N22"], None)
    for bad in ("N12-", "N12-2", "N1-1 N2", "-1", ""):
        with pytest.raises(ValueError):
            parse_impressions(bad)


def test_read_counts_and_quirks(raw):
    data = read_mind(raw, max_bad_fraction=0.6)
    assert data.task == "click"
    assert data.bad["per_file"] == {"train/news.tsv": {"lines": 5, "bad": 1}, "test/news.tsv": {"lines": 2, "bad": 0},
                                    "train/behaviors.tsv": {"lines": 7, "bad": 4},
                                    "test/behaviors.tsv": {"lines": 2, "bad": 0}}
    texts = dict(zip(data.item_ids, data.item_texts))
    assert texts["N2"] == '"Quoted start title'
    read = next(s for s in data.steps if s["step"] == "read")
    assert read["impressions"] == 5 and read["unlabeled_impressions"] == 2 and read["samples_read"] == 6
    assert read["untitled_candidates"] == 1 and read["untitled_history_news"] == 1
    assert next(s for s in data.steps if s["step"] == "news") == {"step": "news", "files": ["train/news.tsv", "test/news.tsv"],
                                                                   "pooled": True, "titled": 4, "untitled": 1}
    rows = {(data.user_ids[u], data.item_ids[i]): (float(y), int(t)) for u, i, y, t in
            zip(data.arrays["user"], data.arrays["item"], data.arrays["label"], data.arrays["timestamp"])}
    assert rows == {("U1", "N2"): (0.0, 1573430700), ("U1", "N4"): (1.0, 1573473900), ("U1", "N1"): (1.0, 1573473900),
                    ("U2", "N2"): (1.0, 1573549558), ("U2", "N4"): (0.0, 1573549558)}
    assert data.arrays["origin"].tolist() == [0] * 5
    assert len(data.extra["unlabeled_user"]) == 3
    assert data.extra["unlabeled_impression"].tolist() == [9, 9, 10]
    examples = data.bad["examples"]
    assert examples[0].startswith("train/news.tsv:5: ValueError: 7 columns")
    assert examples[1:] == ["train/behaviors.tsv:4: ValueError: bad time '11/12/2019 9:05:58 XM'",
                            "train/behaviors.tsv:5: ValueError: bad impression token 'N12-'",
                            "train/behaviors.tsv:6: ValueError: bad impression token 'N2-2'",
                            "train/behaviors.tsv:7: ValueError: 4 columns, expected 5"]


def test_too_many_bad_and_missing(raw, tmp_path):
    with pytest.raises(PumaError, match="train/news.tsv: 1 of 5 lines are malformed"):
        read_mind(raw)
    with pytest.raises(PumaError, match="train/behaviors.tsv: 4 of 7 lines"):
        read_mind(raw, max_bad_fraction=0.5)
    empty = tmp_path / "empty"
    empty.mkdir()
    with pytest.raises(PumaError, match="behaviors.tsv and news.tsv"):
        read_mind(empty)


def test_load_history_text_and_unlabeled(raw, tmp_path):
    cfg = OmegaConf.structured(DataConfig(name="mind", task="click", template="news_click", raw_dir=str(raw),
                                          processed_dir=str(tmp_path / "p"), max_bad_fraction=0.6, history_titles=1))
    table = load_prepared(cfg, seed=0)
    assert len(table) == 5 and table.task == "click" and table.row_text is not None
    by_row = {(table.user_ids[u], table.item_texts[i]): h for u, i, h in zip(table.user, table.item, table.row_text)}
    assert by_row[("U1", "Fourth")] == "none"  # latest impression of N4 had an empty history
    assert by_row[("U1", '"Quoted start title')] in ("First title", '"Quoted start title')  # 1 of 2 sampled
    assert by_row[("U2", "Fourth")] == "First title"  # N9 has no title
    unl = load_unlabeled(cfg, seed=0)
    assert unl is not None and len(unl) == 2 and np.isnan(unl.label).all()  # U7 is unknown: dropped
    assert unl.row_text[0] == unl.row_text[1] and unl.row_text[0] in ("First title", '"Quoted start title')
    assert unl.meta["impression"].tolist() == [9, 9]


def make_fixture(folder: Path, n_users: int = 20, n_news: int = 16, with_test: bool = True) -> Path:
    rng = np.random.default_rng(2)
    for split, days in (("train", range(1, 4)), ("dev", range(5, 7))):
        (folder / split).mkdir(parents=True, exist_ok=True)
        write(folder / split / "news.tsv", [news(f"N{i}", f"Headline number {i} about topic {i % 4}") for i in range(n_news)])
        lines, imp = [], 0
        for u in range(n_users):
            hist = " ".join(f"N{i}" for i in rng.choice(n_news, size=u % 7, replace=False))
            for d in days:
                cands = rng.choice(n_news, size=5, replace=False)
                labels = [int((c + u) % 3 == 0) for c in cands]
                labels[0], labels[1] = 1, 0
                imp += 1
                lines.append(f"{imp}\tU{u}\t11/{d:02d}/2019 {(u % 12) + 1}:30:00 {'AM' if u % 2 else 'PM'}\t{hist}\t"
                             + " ".join(f"N{c}-{y}" for c, y in zip(cands, labels)))
        write(folder / split / "behaviors.tsv", lines)
    if with_test:
        (folder / "test").mkdir(exist_ok=True)
        write(folder / "test" / "news.tsv", [news("N0", "Headline number 0 about topic 0")])
        write(folder / "test" / "behaviors.tsv", ["1\tU0\t11/09/2019 9:00:00 AM\t\tN0 N1"])
    return folder


def test_official_split(tmp_path):
    raw = make_fixture(tmp_path / "raw", with_test=False)
    cfg = OmegaConf.structured(DataConfig(name="mind", task="click", template="news_click", raw_dir=str(raw),
                                          processed_dir=str(tmp_path / "p"), split_by="official"))
    table = load_prepared(cfg, seed=0)
    dev_days = table.timestamp >= 1572912000  # 2019-11-05
    assert (table.split[dev_days] == 2).all() and not (table.split[~dev_days] == 2).any()
    assert (table.split == 1).any() and (table.split == 0).any()


def test_end_to_end_fit(tmp_path):
    raw = make_fixture(tmp_path / "raw")
    results = run_fit(tmp_path, ["data.name=mind", "data.task=click", f"data.raw_dir={raw}", "data.template=news_click",
                                 "data.history_titles=2", "data.max_item_tokens=12"])
    assert results["task"] == "click" and results["dataset"] == "mind" and results["num_users"] == 20
    for method in ("source", "puma"):
        assert 0.0 <= results["methods"][method]["auc"] <= 1.0 and 0.0 <= results["methods"][method]["uauc"] <= 1.0
