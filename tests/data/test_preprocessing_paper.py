"""``data.preprocessing: paper | clean`` for Amazon (both readers) and Yelp, the published split
(``data.split_by=paper``), empty splits for ratios of 0, and unusable raw files named in one line.

The fixtures are small raw files in the real formats, with the quirks the published code treats in its
own way (Amazon: the script ``build_dataset/build_dataset_amazon.py`` at Kimagure7/Dont-Start-Over 30964e2,
which replaced the first commit's notebook; Yelp: build_dataset_yelp.ipynb). The expected counts come from
``published_amazon`` / ``published_yelp`` below: our own plain-Python reading of that code (pandas-free),
written independently of the readers, compared with the manifest's counts. tests/data/test_preprocessing_pandas.py
runs the Amazon script's own pandas steps on the same fixture.
"""

from __future__ import annotations

import gzip
import json
from pathlib import Path

import numpy as np
import pytest
from omegaconf import OmegaConf

from puma_lightning.config import DataConfig
from puma_lightning.data.prepare import prepare_dataset
from puma_lightning.data.prepared import load_prepared
from puma_lightning.data.raw.amazon import PUBLISHED_SCRIPT, read_amazon_csv, read_amazon_reviews
from puma_lightning.data.raw.common import RawFileError
from puma_lightning.data.raw.yelp import read_yelp
from puma_lightning.data.splits import chronological_split, paper_split
from puma_lightning.data.table import InteractionTable
from puma_lightning.errors import PumaError
from tests.data.test_raw_amazon import write

T0 = 1_600_000_000_000  # ms


# -- Amazon -------------------------------------------------------------------------------------------
def amazon_meta() -> list[str]:
    meta = [json.dumps({"parent_asin": f"I{i}", "title": f"Film {i}", "price": None}) for i in range(40)]
    meta += [
        json.dumps({"parent_asin": "I40", "title": "Forty"}), json.dumps({"parent_asin": "I40", "title": None}),  # paper: last (null)
        json.dumps({"parent_asin": "I41", "title": None}), json.dumps({"parent_asin": "I41", "title": "Forty-one"}),  # paper: last
        json.dumps({"parent_asin": "I42", "title": "   "}),  # blank after str.strip(): the script drops it
        json.dumps({"parent_asin": "I43", "title": ""}),  # dropped by both
        json.dumps({"parent_asin": "I44", "price": 3.0}),  # no title key: NaN, dropped by both
        json.dumps({"parent_asin": "I45", "title": "First 45"}), json.dumps({"parent_asin": "I45", "title": "Last 45"}),
        '{"parent_asin": "I46", "title": "broken',
        json.dumps({"parent_asin": "I39", "title": " \t "}),  # paper: the last line of I39, blank after strip
    ]
    # common items with titles blank after str.strip() (dropped), a padded one (kept verbatim) and a
    # zero-width space (not whitespace to str.strip(): kept)
    for i, title in ((5, "\t \n"), (7, "\u3000"), (11, "\xa0 "), (8, "  Film 8  "), (9, "\u200b")):
        meta[i] = json.dumps({"parent_asin": f"I{i}", "title": title})
    return meta


def amazon_time(u: int, k: int) -> int:
    """Review ``k`` of user ``u``: ties for u10/u11; u8 wholly and u23 partly before 1970 (negative, kept
    by the script), with ties at u23's "latest 85" cut."""
    if u == 8:
        return -T0 + 1000 * (k // 2)
    if u == 23:
        return 1000 * (k // 4 - 10)
    return T0 + 1000 * (k // 2) + (k % 2) * 7 if u not in (10, 11) else T0 + 1000 * (k // 9)


def amazon_reviews(seed: int = 1) -> list[str]:
    rng = np.random.default_rng(seed)
    items = [f"I{i}" for i in range(46)] + ["NOMETA"]
    lines = []
    sizes = [5, 12, 19, 20, 21, 25, 30, 33, 40, 47, 95, 120] * 2 + [18, 22, 60, 86]
    for u, n in enumerate(sizes):
        for k in range(n):
            # items I30.. are rare (some fall under 10 ratings), I0..I19 common
            item = items[int(rng.integers(30, len(items)))] if k % 7 == 3 else items[int(rng.integers(0, 30 if u % 3 else 20))]
            rating = float(rng.integers(1, 6)) if (u * 7 + k) % 53 else 0.0  # a few 0.0 (kept by the notebook)
            ts = amazon_time(u, k)
            lines.append(json.dumps({"rating": rating, "title": "t", "text": "x", "images": [], "asin": item + "a",
                                     "parent_asin": item, "user_id": f"U{u}", "timestamp": ts, "helpful_vote": 0,
                                     "verified_purchase": True}))
            if (u + k) % 41 == 0:
                lines.append(lines[-1])  # an exact duplicate review
    lines.insert(17, "{not json")
    return lines


def make_amazon(folder: Path) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    write(folder / "meta_Movies_and_TV.jsonl.gz", amazon_meta(), gz=True)
    write(folder / "Movies_and_TV.jsonl", amazon_reviews())
    return folder


def published_amazon(folder: Path) -> dict:
    """Our reading of build_dataset/build_dataset_amazon.py (30964e2): title map with the last meta line of an id,
    drop null titles and strings blank after str.strip(), keep any timestamp (negative too), items >= 10, users >= 20
    (one pass each), each user's 85 latest (ties: first rows), 80/20 split."""
    titles = {}
    for line in gzip.decompress((folder / "meta_Movies_and_TV.jsonl.gz").read_bytes()).decode().splitlines():
        try:
            obj = json.loads(line)
        except ValueError:
            continue  # the notebook would stop
        titles[obj["parent_asin"]] = obj.get("title")
    rows = []
    for line in (folder / "Movies_and_TV.jsonl").read_text().splitlines():
        try:
            obj = json.loads(line)
        except ValueError:
            continue
        title = titles.get(obj["parent_asin"])
        if title is not None and not (isinstance(title, str) and title.strip() == ""):
            rows.append((obj["user_id"], obj["parent_asin"], obj["rating"], obj["timestamp"]))
    out = {"titled": len(rows)}
    per_item = {}
    for r in rows:
        per_item[r[1]] = per_item.get(r[1], 0) + 1
    rows = [r for r in rows if per_item[r[1]] >= 10]
    out["items"] = len(rows)
    per_user = {}
    for r in rows:
        per_user[r[0]] = per_user.get(r[0], 0) + 1
    rows = [r for r in rows if per_user[r[0]] >= 20]
    out["users"] = (len({r[0] for r in rows}), len(rows))
    latest = []
    for u in sorted({r[0] for r in rows}):
        mine = [r for r in rows if r[0] == u]
        if len(mine) > 85:  # nlargest(85, "timestamp"): largest first, ties in frame order
            mine = sorted(mine, key=lambda r: -r[3])[:85]
        latest += mine
    out["latest"] = len(latest)
    out["latest_rows"] = sorted(latest)
    train = valid = 0
    for u in {r[0] for r in latest}:
        n = sum(r[0] == u for r in latest)
        train += int(n * (1 - 0.2))
        valid += n - int(n * (1 - 0.2))
    out["split"] = {"train": train, "valid": valid, "test": 0}
    out["zero_ratings"] = sum(r[2] == 0.0 for r in latest)
    out["negative"] = sum(r[3] < 0 for r in latest)
    return out


def amazon_cfg(raw: Path, tmp_path: Path, **kw) -> DataConfig:
    base = dict(name="amazon-movies", raw_dir=str(raw), processed_dir=str(tmp_path / "p"), template="movie_tv",
                preprocessing="paper", min_item_ratings=10, min_user_ratings=20, max_rows_per_user=85, split_by="paper",
                max_bad_fraction=0.05)
    return OmegaConf.structured(DataConfig(**{**base, **kw}))


def test_amazon_paper_counts_match_the_published_script(tmp_path):
    raw = make_amazon(tmp_path / "raw")
    expected = published_amazon(raw)
    path = prepare_dataset(amazon_cfg(raw, tmp_path))
    manifest = json.loads((path / "manifest.json").read_text())
    st = {s["step"]: s for s in manifest["steps"]}
    assert manifest["preprocessing"] == "paper" and "drop_exact_duplicates" not in st
    assert st["drop_untitled_items"]["rows"] == expected["titled"]
    assert st["items_with_>=10"]["rows"] == expected["items"]
    assert (st["users_with_>=20"]["users"], st["users_with_>=20"]["rows"]) == expected["users"]
    assert st["latest_85_per_user"]["rows"] == expected["latest"]
    assert manifest["final"]["rows_per_split"] == expected["split"]
    assert manifest["final"]["rows"] == expected["latest"] and manifest["final"]["users"] == expected["users"][0]
    assert st["meta"]["meta_repeated_ids"] == 4 and st["meta"]["meta_repeats_keep"] == "last"
    assert manifest["rules"]["follows"] == PUBLISHED_SCRIPT and "Kimagure7/Dont-Start-Over" in PUBLISHED_SCRIPT
    assert "/30964e2/build_dataset/build_dataset_amazon.py" in PUBLISHED_SCRIPT
    # the rows themselves (ties at the 85 cut included: the earlier rows win, as nlargest(keep="first"))
    table = load_prepared(amazon_cfg(raw, tmp_path), seed=0)
    ids = table.item_id_list()
    got = sorted((table.user_ids[u], ids[i], float(y), int(t)) for u, i, y, t in
                 zip(table.user, table.item, table.label, table.timestamp))
    assert got == [(u, i, float(y), int(t)) for u, i, y, t in expected["latest_rows"]]
    assert expected["zero_ratings"] > 0 and (table.label == 0.0).sum() == expected["zero_ratings"]
    assert {k: int((table.split == c).sum()) for k, c in (("train", 0), ("valid", 1), ("test", 2))} == expected["split"]
    texts = dict(zip(ids, table.item_texts))
    assert texts.get("I45") in (None, "Last 45") and "I40" not in texts
    assert not {"I5", "I7", "I11", "I39", "I42"} & set(texts)  # blank after str.strip()
    assert texts["I8"] == "  Film 8  " and texts["I9"] == "\u200b"
    negative = [u for u in ("U8", "U23") if u in table.user_ids]
    assert negative == ["U8", "U23"] and (table.timestamp < 0).sum() == expected["negative"] > 0


def test_a_folder_made_by_other_published_rules_is_prepared_again(tmp_path):
    """A processed folder whose manifest does not name the script ``paper`` now follows (one made before
    ``rules.follows`` existed, under the first-commit notebook's rules) is not reused."""
    raw = make_amazon(tmp_path / "raw")
    path = prepare_dataset(amazon_cfg(raw, tmp_path))
    manifest = json.loads((path / "manifest.json").read_text())
    assert manifest["rules"]["follows"] == PUBLISHED_SCRIPT
    del manifest["rules"]["follows"]
    manifest["counts"]["rows"] = -1  # so a reuse would show
    (path / "manifest.json").write_text(json.dumps(manifest))
    with pytest.raises(PumaError, match=r"not made by the rules of https://github.com/Kimagure7/Dont-Start-Over/.*set "
                                        r"data.raw_dir") as err:
        prepare_dataset(amazon_cfg(raw, tmp_path, raw_dir=None))
    assert "\n" not in str(err.value)
    again = json.loads((prepare_dataset(amazon_cfg(raw, tmp_path)) / "manifest.json").read_text())
    assert again["rules"]["follows"] == PUBLISHED_SCRIPT and again["counts"]["rows"] == again["final"]["rows"] > 0
    # clean follows nothing published: its reuse does not look at rules.follows
    clean = prepare_dataset(amazon_cfg(raw, tmp_path / "c", preprocessing="clean", max_bad_fraction=0.15))
    assert "follows" not in json.loads((clean / "manifest.json").read_text())["rules"]
    assert prepare_dataset(amazon_cfg(raw, tmp_path / "c", preprocessing="clean", max_bad_fraction=0.15,
                                      raw_dir=None)) == clean


def test_amazon_fixture_pins(tmp_path):
    """The numbers of this fixture, also obtained by running the script's own pandas steps on it
    (tests/data/test_preprocessing_pandas.py)."""
    expected = published_amazon(make_amazon(tmp_path / "raw"))
    assert (expected["titled"], expected["items"], expected["users"], expected["latest"]) == (969, 941, (16, 779), 737)
    assert expected["split"] == {"train": 585, "valid": 152, "test": 0}


def test_amazon_clean_drops_and_counts(tmp_path):
    raw = make_amazon(tmp_path / "raw")
    data = read_amazon_reviews(raw, max_bad_fraction=0.15)
    st = {s["step"]: s for s in data.steps}
    assert st["meta"]["meta_repeats_keep"] == "first" and st["meta"]["meta_repeated_ids"] == 4
    assert "I40" in data.item_ids and "I41" not in data.item_ids and "I42" not in data.item_ids
    texts = dict(zip(data.item_ids, data.item_texts))
    assert texts.get("I45", "First 45") == "First 45" and texts["I39"] == "Film 39" and texts["I8"] == "Film 8"
    reviews = [json.loads(line) for line in amazon_reviews() if line.startswith("{\"rating\"")]
    zeros = sum(r["rating"] == 0.0 for r in reviews)
    negative = sum(r["timestamp"] < 0 and r["rating"] != 0.0 for r in reviews)
    assert negative > 20 and (data.arrays["timestamp"] >= 0).all()
    # 0.0 is outside 1..5 here, and a review before 1970 is a broken value
    assert data.bad["per_file"]["Movies_and_TV.jsonl"]["bad"] == 1 + zeros + negative
    path = prepare_dataset(amazon_cfg(raw, tmp_path, preprocessing="clean", max_bad_fraction=0.15))
    manifest = json.loads((path / "manifest.json").read_text())
    dup = next(s for s in manifest["steps"] if s["step"] == "drop_exact_duplicates")
    assert dup["dropped_rows"] > 0 and manifest["preprocessing"] == "clean"
    paper = json.loads((prepare_dataset(amazon_cfg(raw, tmp_path / "q")) / "manifest.json").read_text())
    assert paper["params"] != manifest["params"]  # the two modes never share a processed folder


def test_amazon_csv_paper_keeps_what_the_script_keeps(tmp_path):
    write(tmp_path / "meta_Movies_and_TV.jsonl", amazon_meta())
    head = "user_id,parent_asin,rating,timestamp,history"
    write(tmp_path / "Movies_and_TV.train.csv", [head, f"u1,I41,0.0,{T0},", f"u1,I41,0.0,{T0},", f"u1,I40,4.0,{T0 + 1},",
                                                 f"u1,I42,5.0,{T0 + 2},", f"u1,I8,4.0,{T0 + 3},", "u1,I8,3.0,-86400000,"])
    paper = read_amazon_csv(tmp_path, max_bad_fraction=0.5, preprocessing="paper")
    assert paper.item_ids == ["I41", "I8"] and len(paper) == 4 and paper.arrays["timestamp"].tolist() == [
        T0, T0, T0 + 3, -86400000]
    assert paper.rules["follows"] == PUBLISHED_SCRIPT
    clean = read_amazon_csv(tmp_path, max_bad_fraction=0.6)
    assert clean.item_ids == ["I40", "I8"] and len(clean) == 2 and clean.arrays["timestamp"][0] == T0 // 1000
    assert "follows" not in clean.rules and any("negative timestamp" in e for e in clean.bad["examples"])


# -- Yelp ---------------------------------------------------------------------------------------------
def biz(bid, name="Place", stars=4.0, count=10, cats="Food, Bars , Pizza"):
    obj = {"business_id": bid, "name": name, "address": "1 Main St", "city": "X", "state": "PA", "stars": stars,
           "is_open": 1, "attributes": None, "categories": cats, "hours": None}
    if count is not ...:
        obj["review_count"] = count
    return json.dumps(obj)


def yelp_businesses() -> list[str]:
    lines = [biz(f"B{i}", f"Place {i}", 3.5 + (i % 3) * 0.5, 5 + i) for i in range(20)]
    lines += [biz("B20", "  "), biz("B21", count=0), biz("B22", count=None), biz("B23", cats=None), biz("B24", cats="  "),
              biz("B25", "Early", count=0), biz("B25", "Late"), biz("B26", "One"), biz("B26", "Two", stars=2.0),
              biz("B27", "Many", cats=", ".join(f"C{k}" for k in range(12))), "{oops"]
    return lines


def yelp_reviews(seed: int = 3) -> list[str]:
    rng = np.random.default_rng(seed)
    bids = [f"B{i}" for i in range(28)] + ["BX"]
    lines = []
    for u, n in enumerate([10, 24, 25, 26, 30, 44, 75, 76, 90, 110, 31, 27, 60]):
        for k in range(n):
            day = 1 + k // 3 if u != 9 else 1 + k // 20  # user 9: many equal dates
            stars = float(rng.integers(1, 6)) if (u + k) % 37 else 0.0
            lines.append(json.dumps({"review_id": f"r{u}_{k}", "user_id": f"V{u}", "business_id": bids[int(rng.integers(0, 29))],
                                     "stars": stars, "useful": 0, "funny": 0, "cool": 0, "text": "ok\nfine",
                                     "date": f"2019-{1 + day // 28:02d}-{1 + day % 28:02d} 10:00:{k % 3:02d}"}))
            if k % 29 == 5:
                lines.append(lines[-1])
    lines.insert(9, "not json")
    return lines


def make_yelp(folder: Path) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    write(folder / "yelp_academic_dataset_business.json", yelp_businesses())
    write(folder / "yelp_academic_dataset_review.json", yelp_reviews())
    return folder


def published_yelp(folder: Path) -> dict:
    """Our reading of build_dataset_yelp.ipynb: the business rule, reviews of kept businesses, users >= 25, each
    user's 75 latest, valid = max(1, int(n * 0.2)); texts as the notebook formats them."""
    objs = []
    for line in (folder / "yelp_academic_dataset_business.json").read_text().splitlines():
        try:
            objs.append(json.loads(line))
        except ValueError:
            continue
    def ok(v):
        return v is not None and str(v).strip() != ""
    valid = [o for o in objs if ok(o.get("name")) and o.get("review_count") is not None and o["review_count"] > 0
             and ok(o.get("categories"))]
    float_counts = any(o.get("review_count") is None for o in objs)  # one null makes the pandas column float
    info = {}
    for o in valid:
        cats = ", ".join(c.strip() for c in o["categories"].split(",")[:10])
        count = float(o["review_count"]) if float_counts else o["review_count"]
        info[o["business_id"]] = f"{o['name']}, which is a business with {float(o['stars'])} stars rating based on " \
                                 f"{count} reviews." + (f" It is categorized as {cats}." if cats else "")
    reviews = []
    for line in (folder / "yelp_academic_dataset_review.json").read_text().splitlines():
        try:
            r = json.loads(line)
        except ValueError:
            continue
        if r["business_id"] in info:
            reviews.append(r)
    out = {"businesses": len(info), "reviews": len(reviews), "texts": info}
    count = {}
    for r in reviews:
        count[r["user_id"]] = count.get(r["user_id"], 0) + 1
    active = [r for r in reviews if count[r["user_id"]] >= 25]
    out["active"] = (len({r["user_id"] for r in active}), len(active))
    n_user = {u: min(c, 75) for u, c in count.items() if c >= 25}
    out["latest"] = sum(n_user.values())
    valid_rows = sum(max(1, int(n * 0.2)) for n in n_user.values())
    out["split"] = {"train": out["latest"] - valid_rows, "valid": valid_rows, "test": 0}
    return out


def yelp_cfg(raw: Path, tmp_path: Path, **kw) -> DataConfig:
    base = dict(name="yelp", raw_dir=str(raw), processed_dir=str(tmp_path / "p"), template="business", preprocessing="paper",
                min_user_ratings=25, max_rows_per_user=75, split_by="paper", max_bad_fraction=0.05)
    return OmegaConf.structured(DataConfig(**{**base, **kw}))


def test_yelp_paper_counts_and_texts_match_the_published_notebook(tmp_path):
    raw = make_yelp(tmp_path / "raw")
    expected = published_yelp(raw)
    path = prepare_dataset(yelp_cfg(raw, tmp_path))
    manifest = json.loads((path / "manifest.json").read_text())
    st = {s["step"]: s for s in manifest["steps"]}
    assert st["businesses"]["kept"] == expected["businesses"] and st["businesses"]["rule"].startswith("name, review_count")
    assert st["drop_unknown_businesses"]["rows"] == expected["reviews"]
    assert (st["users_with_>=25"]["users"], st["users_with_>=25"]["rows"]) == expected["active"]
    assert st["latest_75_per_user"]["rows"] == expected["latest"]
    assert manifest["final"]["rows_per_split"] == expected["split"]
    data = read_yelp(raw, max_bad_fraction=0.05, preprocessing="paper")
    texts = dict(zip(data.item_ids, data.item_texts))
    assert {b: texts[b] for b in texts} == {b: expected["texts"][b] for b in texts}
    assert texts["B25"].startswith("Late, ") and texts["B26"].startswith("Two, which is a business with 2.0 stars")
    assert "based on 10.0 reviews" in texts["B26"]  # B22's null review_count made the column float
    assert texts["B27"].endswith("C8, C9.") and "B21" not in texts and "B22" not in texts and "B23" not in texts


def test_yelp_fixture_pins(tmp_path):
    """The numbers of this fixture, also obtained by running the notebook's own pandas cells on it."""
    expected = published_yelp(make_yelp(tmp_path / "raw"))
    assert (expected["businesses"], expected["reviews"], expected["active"], expected["latest"]) == (23, 534, (8, 439), 423)
    assert expected["split"] == {"train": 342, "valid": 81, "test": 0}


def test_yelp_clean_keeps_named_businesses_and_drops_duplicates(tmp_path):
    raw = make_yelp(tmp_path / "raw")
    data = read_yelp(raw, max_bad_fraction=0.05)
    texts = dict(zip(data.item_ids, data.item_texts))
    assert "B21" in texts or "B21" not in data.item_ids  # kept as a business (reviewed or not)
    st = {s["step"]: s for s in data.steps}
    assert st["businesses"]["kept"] == 27 and st["businesses"]["repeats_keep"] == "first"  # all but the unnamed B20
    path = prepare_dataset(yelp_cfg(raw, tmp_path, preprocessing="clean", split_by="chronological"))
    manifest = json.loads((path / "manifest.json").read_text())
    dup = next(s for s in manifest["steps"] if s["step"] == "drop_exact_duplicates")
    assert dup["dropped_rows"] > 0
    assert sum(manifest["final"]["rows_per_split"].values()) == manifest["final"]["rows"]


# -- splits -------------------------------------------------------------------------------------------
def tiny_table(counts: list[int]) -> InteractionTable:
    user = np.repeat(np.arange(len(counts)), counts)
    n = len(user)
    ts = np.concatenate([np.arange(c)[::-1] for c in counts])  # rows stored latest first
    return InteractionTable(user, np.zeros(n, np.int64), np.ones(n, np.float32), ts.astype(np.int64),
                            np.zeros(n, np.int8), [f"u{i}" for i in range(len(counts))], ["x"], "rating")


def test_ratios_of_zero_give_empty_splits():
    table = tiny_table([3, 10, 25])
    out = chronological_split(table, valid_ratio=0.2, test_ratio=0.0)
    assert out.meta["split"]["counts"]["test"] == 0 and out.meta["split"]["counts"]["valid"] > 0
    assert chronological_split(table, valid_ratio=0.0, test_ratio=0.0).meta["split"]["counts"] == {"train": 38, "valid": 0,
                                                                                                   "test": 0}


def test_paper_split_rules():
    table = tiny_table([1, 5, 21, 24, 85])
    amazon = paper_split(table, "floor_train")
    yelp = paper_split(table, "floor_valid_min1")
    per_user = lambda t, code: np.bincount(t.user[t.split == code], minlength=t.n_users).tolist()  # noqa: E731
    assert per_user(amazon, 1) == [1, 1, 5, 5, 17] and per_user(amazon, 2) == [0] * 5
    assert per_user(yelp, 1) == [1, 1, 4, 4, 17]
    # the valid rows are each user's latest
    for t in (amazon, yelp):
        for u in range(t.n_users):
            mine = t.user == u
            if (t.split[mine] == 0).any():
                assert t.timestamp[mine][t.split[mine] == 0].max() <= t.timestamp[mine][t.split[mine] == 1].min()
    with pytest.raises(ValueError, match="origin"):
        paper_split(table, "official")


def test_empty_test_split_is_a_clear_error_where_a_test_split_is_needed():
    from puma_lightning.data.datamodule import EmptySplitError, PromptDataModule
    from puma_lightning.data.templates import get_template
    from tests.data.test_data import make_tokenizer

    table = paper_split(tiny_table([5, 6]), "floor_train")
    dm = PromptDataModule(table, make_tokenizer(False), get_template("movie"))
    assert len(dm.val_dataloader()) > 0
    with pytest.raises(EmptySplitError, match="test split is empty .*data.test_ratio > 0.*split=valid"):
        dm.test_dataloader()


# -- unusable raw files -------------------------------------------------------------------------------
@pytest.mark.parametrize("content", ["empty", "empty_gzip", "truncated_gzip", "corrupt_gzip"])
def test_empty_or_truncated_gzip_names_the_file(tmp_path, content):
    raw = make_amazon(tmp_path / "raw")
    target = raw / "Movies_and_TV.jsonl"
    full = gzip.compress(target.read_bytes())
    target.unlink()
    target = raw / "Movies_and_TV.jsonl.gz"
    target.write_bytes({"empty": b"", "empty_gzip": gzip.compress(b""), "truncated_gzip": full[: len(full) // 2],
                        "corrupt_gzip": full[:40] + b"\x00" * 200 + full[240:]}[content])
    with pytest.raises(RawFileError, match=r"^Movies_and_TV.jsonl.gz: ") as err:
        read_amazon_reviews(raw, max_bad_fraction=0.5, bad_lines_allowed=1000)
    assert "\n" not in str(err.value) and isinstance(err.value, PumaError)
    with pytest.raises(RawFileError, match="Movies_and_TV.jsonl.gz"):  # through prepare, not "no interactions left"
        prepare_dataset(amazon_cfg(raw, tmp_path, bad_lines_allowed=1000))


def test_empty_meta_file_is_named(tmp_path):
    raw = make_amazon(tmp_path / "raw")
    (raw / "meta_Movies_and_TV.jsonl.gz").write_bytes(gzip.compress(b"\n\n"))
    with pytest.raises(RawFileError, match="meta_Movies_and_TV.jsonl.gz: the gzip stream holds no lines"):
        read_amazon_reviews(raw)
