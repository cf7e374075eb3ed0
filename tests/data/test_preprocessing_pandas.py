"""The pandas behaviours ``data.preprocessing=paper`` emulates without pandas, checked against pandas itself:
``read_csv``'s default quoting and NaN strings on MIND's news.tsv, ``DataFrame.sample(random_state=...)``,
``nlargest(keep="first")`` at the Amazon "latest 85" cut, how a Yelp number prints from its column, and the
whole Amazon script (``build_dataset/build_dataset_amazon.py``, Kimagure7/Dont-Start-Over 30964e2) step by step."""

from __future__ import annotations

import json

import numpy as np
import pytest

pd = pytest.importorskip("pandas")

from puma_lightning.data.raw.common import BadLines, FileRecord, open_lines  # noqa: E402
from puma_lightning.data.raw.mind import PANDAS_NA, sample_positions, pandas_tsv_records  # noqa: E402
from puma_lightning.data.raw.yelp import column_text  # noqa: E402
from tests.data.test_mind_paper import make_paper_fixture  # noqa: E402
from tests.data.test_preprocessing_paper import amazon_cfg, make_amazon  # noqa: E402
from tests.data.test_raw_amazon import write  # noqa: E402


def test_news_titles_parse_as_pandas_reads_them(tmp_path):
    raw = make_paper_fixture(tmp_path / "raw")
    extra = tmp_path / "extra.tsv"
    write(extra, ["N90\tc\ts\t\"Hail Mary\" pass\ta\tu\t[]\t[]", "N91\tc\ts\t\"\"\ta\tu\t[]\t[]",
                  "N92\tc\ts\tsay \"\"hi\"\" now\ta\tu\t[]\t[]", "N93\tc\ts\tnull\ta\tu\t[]\t[]"])
    for path in (raw / "train" / "news.tsv", raw / "dev" / "news.tsv", extra):
        frame = pd.read_csv(path, sep="\t", header=None)
        want = {row[0]: (None if pd.isna(row[3]) else row[3]) for row in frame.itertuples(index=False)}
        bad = BadLines(0.0)
        got = {f[0]: (f[3] if f[3] not in PANDAS_NA else None)
               for _, f in pandas_tsv_records(open_lines(path, FileRecord.stat(path), bad), bad)}
        assert got == want


@pytest.mark.parametrize("n,k", [(5, 2), (61, 30), (200, 57), (33, 0)])
def test_sample_positions_are_pandas_sample(n, k):
    frame = pd.DataFrame({"row": np.arange(n)})
    assert sample_positions(n, k, 42).tolist() == frame.sample(k, random_state=42)["row"].tolist()


def test_latest_85_ties_are_nlargest_keep_first(tmp_path):
    from omegaconf import OmegaConf

    from puma_lightning.config import DataConfig
    from puma_lightning.data.prepared import load_prepared

    raw = make_amazon(tmp_path / "raw")
    cfg = OmegaConf.structured(DataConfig(name="amazon-movies", raw_dir=str(raw), processed_dir=str(tmp_path / "p"),
                                          preprocessing="paper", min_item_ratings=0, min_user_ratings=0,
                                          max_rows_per_user=85, max_bad_fraction=0.05, split_by="paper"))
    table = load_prepared(cfg, 0)
    ids = table.item_id_list()
    got = sorted((table.user_ids[u], ids[i], float(y), int(t)) for u, i, y, t in
                 zip(table.user, table.item, table.label, table.timestamp))
    reviews = []
    for line in (raw / "Movies_and_TV.jsonl").read_text().splitlines():
        try:
            obj = json.loads(line)
        except ValueError:
            continue
        if obj["parent_asin"] in set(ids):
            reviews.append(obj)
    frame = pd.DataFrame(reviews)
    parts = [g.nlargest(85, "timestamp") if len(g) > 85 else g for _, g in frame.groupby("user_id")]
    latest = pd.concat(parts)
    want = sorted(zip(latest["user_id"], latest["parent_asin"], latest["rating"].astype(float), latest["timestamp"]))
    assert got == [(u, i, float(y), int(t)) for u, i, y, t in want]


@pytest.mark.parametrize("values", [[10, 3, 7], [10, None, 7], [4.5, 3, 5], [4.0, 3.5, None], [1, 2.0]])
def test_yelp_numbers_print_as_their_pandas_column(values):
    frame = pd.DataFrame([{"v": v} if v is not None else {} for v in values])
    text = column_text(values)
    for k, v in enumerate(values):
        assert text(v) == f"{frame.iloc[k]['v']}"


def jsonl_frame(path) -> "pd.DataFrame":
    """A JSON Lines file (plain or gzip) as the script loads it, less the lines that do not parse (on which
    the script would stop; our reader counts them as malformed)."""
    import gzip

    data = path.read_bytes()
    records = []
    for line in (gzip.decompress(data) if data[:2] == b"\x1f\x8b" else data).splitlines():
        try:
            records.append(json.loads(line))
        except ValueError:
            continue
    return pd.DataFrame(records)


def amazon_script_steps(raw) -> dict:
    """The published Amazon script's pandas operations, in its order, on our fixture: the rows after each step
    (both forms of its "85 latest" cut: ``nlargest`` per group, and a (user, -time) sort then ``head``)."""
    meta = jsonl_frame(raw / "meta_Movies_and_TV.jsonl.gz")
    reviews = jsonl_frame(raw / "Movies_and_TV.jsonl")
    titles = meta.set_index("parent_asin")["title"].to_dict()  # a repeated id: its last line
    frame = reviews[["user_id", "parent_asin", "rating", "timestamp"]].copy()
    frame["ItemTitle"] = frame["parent_asin"].map(titles)
    frame = frame.dropna(subset=["ItemTitle"])
    frame = frame[frame["ItemTitle"].str.strip() != ""]
    out = {"titled": frame}
    per_item = frame["parent_asin"].value_counts()
    frame = frame[frame["parent_asin"].isin(per_item[per_item >= 10].index)]
    out["items"] = frame
    per_user = frame["user_id"].value_counts()
    frame = frame[frame["user_id"].isin(per_user[per_user >= 20].index)]
    out["users"] = frame
    out["latest_nlargest"] = pd.concat([g.nlargest(85, "timestamp") if len(g) > 85 else g
                                        for _, g in frame.groupby("user_id")])
    out["latest"] = (frame.sort_values(["user_id", "timestamp"], ascending=[True, False])
                     .groupby("user_id", as_index=False).head(85))
    n = out["latest"].groupby("user_id").size()
    train = int(sum(int(k * (1 - 0.2)) for k in n))
    out["split"] = {"train": train, "valid": int(n.sum()) - train, "test": 0}
    out["titles"] = titles
    return out


def row_set(frame) -> list[tuple]:
    return sorted(zip(frame["user_id"], frame["parent_asin"], frame["rating"].astype(float),
                      frame["timestamp"].astype(int)))


def test_amazon_paper_is_the_published_script(tmp_path):
    """Counts after every step, the rows, the split sizes and the titles of ``paper`` equal the script's own pandas
    steps on a fixture with titles blank after ``str.strip()``, negative timestamps and ties at the 85 cut."""
    from puma_lightning.data.prepare import prepare_dataset
    from puma_lightning.data.prepared import load_prepared

    raw = make_amazon(tmp_path / "raw")
    want = amazon_script_steps(raw)
    # the fixture exercises what changed: blank-after-strip titles, negative timestamps, a tie split at the cut
    blank = [t for t in want["titles"].values() if isinstance(t, str) and t and not t.strip()]
    assert len(blank) >= 4 and (want["latest"]["timestamp"] < 0).sum() > 20
    assert row_set(want["latest"]) == row_set(want["latest_nlargest"])  # both forms of the cut agree
    dropped = want["users"].drop(want["latest"].index)
    kept_min = want["latest"].groupby("user_id")["timestamp"].min()
    assert any(((dropped["user_id"] == u) & (dropped["timestamp"] == t)).any() and t < 0 for u, t in kept_min.items())

    cfg = amazon_cfg(raw, tmp_path)
    manifest = json.loads((prepare_dataset(cfg) / "manifest.json").read_text())
    st = {s["step"]: s for s in manifest["steps"]}
    for step, key in (("drop_untitled_items", "titled"), ("items_with_>=10", "items"), ("users_with_>=20", "users"),
                      ("latest_85_per_user", "latest")):
        frame = want[key]
        assert (st[step]["rows"], st[step]["users"], st[step]["items"]) == (
            len(frame), frame["user_id"].nunique(), frame["parent_asin"].nunique()), step
    assert manifest["final"]["rows_per_split"] == want["split"]
    table = load_prepared(cfg, seed=0)
    ids = table.item_id_list()
    got = sorted((table.user_ids[u], ids[i], float(y), int(t)) for u, i, y, t in
                 zip(table.user, table.item, table.label, table.timestamp))
    assert got == row_set(want["latest"])
    assert dict(zip(ids, table.item_texts)) == {i: want["titles"][i] for i in ids}
