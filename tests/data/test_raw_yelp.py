"""Yelp reader (JSON Lines with Python-literal attributes), filters and an end-to-end run."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from omegaconf import OmegaConf

from puma_lightning.config import DataConfig
from puma_lightning.data.prepare import apply_filters, prepare_params
from puma_lightning.data.raw.yelp import parse_date, read_yelp
from puma_lightning.errors import PumaError
from tests.data.test_raw_amazon import run_fit, write

CATS = ", ".join(f"Cat{i}" for i in range(12))


def business(bid: str, name, stars=4.5, count=10, categories=CATS) -> str:
    return json.dumps({"business_id": bid, "name": name, "address": "1 Main St", "city": "X", "stars": stars,
                       "review_count": count, "is_open": 1, "categories": categories,
                       "attributes": {"WiFi": "u'free'", "BusinessParking": "{'garage': False, 'street': True}",
                                      "RestaurantsTakeOut": "True"}, "hours": None})


def review(user: str, bid: str, stars, date: str) -> str:
    return json.dumps({"review_id": "r", "user_id": user, "business_id": bid, "stars": stars, "useful": 0,
                       "funny": 0, "cool": 0, "text": "Great!\nWould go again.\n\n", "date": date})


@pytest.fixture
def raw(tmp_path):
    write(tmp_path / "yelp_academic_dataset_business.json", [
        business("b1", "Joe's Diner"), business("b2", "Cafe  Two", 3.0, 5, None), business("b3", None),
        business("b4", "Shop", 5.0, 1, "Books"), "{oops"])
    write(tmp_path / "yelp_academic_dataset_review.json", [
        review("u1", "b1", 5.0, "2018-07-07 22:09:11"), review("u1", "b2", 4.0, "2018-07-08 00:00:00"),
        review("u1", "b3", 3.0, "2018-07-09 00:00:00"), review("u1", "b9", 3.0, "2018-07-09 00:00:00"),
        review("u2", "b1", 1.0, "2019-01-01 12:00:00"), review("u2", "b4", 2.0, "2019-01-02 12:00:00"),
        review("u3", "b1", 2.0, "2019-01-02 12:00:00"),
        review("u3", "b1", 7.0, "2019-01-02 12:00:00"), review("u3", "b1", 2.0, "2019-13-02 12:00:00")])
    return tmp_path


def test_read_counts_and_texts(raw):
    data = read_yelp(raw, max_bad_fraction=0.25)
    assert data.item_ids == ["b1", "b2", "b4"] and data.user_ids == ["u1", "u2", "u3"]
    assert data.item_texts[0] == ("Joe's Diner, which is a business with 4.5 stars rating based on 10 reviews. "
                                  "It is categorized as Cat0, Cat1, Cat2, Cat3, Cat4, Cat5, Cat6, Cat7, Cat8, Cat9.")
    assert data.item_texts[1] == "Cafe Two, which is a business with 3.0 stars rating based on 5 reviews."
    assert len(data) == 5
    assert data.arrays["timestamp"][0] == 1531001351  # 2018-07-07 22:09:11 UTC
    assert data.arrays["label"].tolist() == [5.0, 4.0, 1.0, 2.0, 2.0]
    steps = {s["step"]: s for s in data.steps}
    assert steps["businesses"] == {"step": "businesses", "business_lines": 4, "business_ids": 4, "kept": 3, "dropped_ids": 1,
                                   "rule": "name", "invalid_name": 1, "repeated_ids": 0, "repeats_keep": "first"}
    assert steps["read"]["rows"] == 7 and steps["drop_unknown_businesses"]["dropped_rows"] == 2
    assert data.bad["per_file"]["yelp_academic_dataset_review.json"] == {"lines": 9, "bad": 2}
    assert data.bad["examples"][1] == "yelp_academic_dataset_review.json:8: ValueError: rating 7.0 outside 1-5"
    out = apply_filters(data, prepare_params(OmegaConf.structured(DataConfig(name="yelp", min_user_ratings=2,
                                                                             max_rows_per_user=1))))
    assert [(s["step"], s["rows"]) for s in out.steps[3:]] == [("drop_exact_duplicates", 5), ("users_with_>=2", 4), ("latest_1_per_user", 2), ("final", 2)]
    assert out.item_ids == ["b2", "b4"]


def test_parse_date():
    assert parse_date("1970-01-02 00:00:01") == 86401
    for bad in ("2018-07-07", "2018-02-30 00:00:00", 20180707, None):
        with pytest.raises(ValueError):
            parse_date(bad)


def test_bad_fraction_and_missing(raw, tmp_path):
    with pytest.raises(PumaError, match="business.json: 1 of 5 lines are malformed"):
        read_yelp(raw)
    with pytest.raises(PumaError, match="review.json: 2 of 9 lines are malformed"):
        read_yelp(raw, max_bad_fraction=0.2)
    empty = tmp_path / "empty"
    empty.mkdir()
    with pytest.raises(PumaError, match="yelp_academic_dataset_business.json"):
        read_yelp(empty)


def make_fixture(folder: Path, n_users: int = 24, per_user: int = 10, n_items: int = 12) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(1)
    write(folder / "yelp_academic_dataset_business.json",
          [business(f"b{i}", f"Place {i}", 3.5, 20 + i, "Food, Bars") for i in range(n_items)])
    lines = []
    for u in range(n_users):
        for k, i in enumerate(rng.choice(n_items, size=per_user, replace=False)):
            stars = float(np.clip(3 + (1 if (u * i) % 3 else -1) + round(rng.normal(0, 0.5)), 1, 5))
            lines.append(review(f"user{u}", f"b{i}", stars, f"2019-01-{k + 1:02d} 10:00:{u % 60:02d}"))
    write(folder / "yelp_academic_dataset_review.json", lines)
    return folder


def test_end_to_end_fit(tmp_path):
    raw = make_fixture(tmp_path / "raw")
    results = run_fit(tmp_path, ["data.name=yelp", f"data.raw_dir={raw}", "data.template=business",
                                 "data.min_user_ratings=5", "data.max_rows_per_user=8"])
    assert results["task"] == "rating" and results["dataset"] == "yelp" and results["num_users"] == 24
    assert np.isfinite(results["methods"]["puma"]["rmse"])
