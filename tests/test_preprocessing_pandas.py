"""The pandas behaviours ``data.preprocessing=paper`` emulates without pandas, checked against pandas itself:
``read_csv``'s default quoting and NaN strings on MIND's news.tsv, ``DataFrame.sample(random_state=...)``,
``nlargest(keep="first")`` at the Amazon "latest 85" cut, and how a Yelp number prints from its column."""

from __future__ import annotations

import json

import numpy as np
import pytest

pd = pytest.importorskip("pandas")

from puma_lightning.data.raw.common import BadLines, FileRecord, open_lines  # noqa: E402
from puma_lightning.data.raw.mind import PANDAS_NA, sample_positions, pandas_tsv_records  # noqa: E402
from puma_lightning.data.raw.yelp import column_text  # noqa: E402
from test_mind_paper import make_paper_fixture  # noqa: E402
from test_preprocessing_paper import make_amazon  # noqa: E402
from test_raw_amazon import write  # noqa: E402


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
