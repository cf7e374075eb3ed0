"""MIND with ``data.preprocessing=paper``: the published chain (build_dataset_mind.ipynb) step by step.

The fixture is built in the real raw format (train/ and dev/ folders of tab-separated behaviors.tsv and
news.tsv, no header), with users meant to fall at every step of the chain. The expected counts come from
``published_chain`` below: our own plain-Python reading of the published notebook (pandas-free), written
independently of ``puma_lightning.data.raw.mind.read_mind_paper`` and compared with its manifest counts.
"""

from __future__ import annotations

import json
import random
import re
from pathlib import Path

import numpy as np
import pytest
from omegaconf import OmegaConf

from puma_lightning.config import DataConfig
from puma_lightning.data.prepare import prepare_dataset
from puma_lightning.data.prepared import load_prepared
from puma_lightning.data.raw.common import RawFileError
from puma_lightning.data.raw.mind import PaperChain, read_mind, read_mind_paper
from puma_lightning.errors import PumaError
from tests.data.test_raw_amazon import write

NA = {"", "#N/A", "#N/A N/A", "#NA", "-1.#IND", "-1.#QNAN", "-NaN", "-nan", "1.#IND", "1.#QNAN", "<NA>", "N/A", "NA",
      "NULL", "NaN", "None", "n/a", "nan", "null"}
LONG = ("A rather long headline about the economy, the weather, the elections and the sports results, padded out to "
        "about 140 characters")


def news_line(nid: str, title: str) -> str:
    return "\t".join([nid, "news", "newsworld", title, "An abstract.", "https://x/" + nid, '[{"Label": "X"}]', "[]"])


def title_of(i: int) -> str:
    if i == 7:
        return "None"  # pandas reads NaN: the published notebook keeps such a candidate row with a null title
    if i % 9 == 3:
        return f'"Quoted" start {i}'  # pandas strips the leading quoted part: 'Quoted start 3'
    if i % 9 == 5:
        return f'"A ""double"" quote" {i}'  # -> 'A "double" quote 5'
    if i % 2 == 0:
        return f"{LONG} #{i}"
    return f"Short headline {i}"


def make_paper_fixture(folder: Path, dev_news: bool = True, seed: int = 5) -> Path:
    """~40 users in train/ and dev/: some in one split only, some with short histories, few rows or clicks,
    many rows (the caps, with clicks above and below half the cap, negatives running out), long titles
    (the 512-character filter), few dev rows, an unresolvable and a NaN-titled impressed news."""
    rng = np.random.default_rng(seed)
    n_news = 48
    safe = [i for i in range(n_news) if i != 7]  # histories avoid the NaN title (the notebook would stop on it)
    train_news = [news_line(f"N{i}", title_of(i)) for i in range(40)]
    dev_only = [news_line(f"N{i}", title_of(i)) for i in range(36, n_news)]  # 36..39 in both files, first wins
    dev_only[0] = news_line("N36", "A different title for N36 in dev")
    for split in ("train", "dev"):
        (folder / split).mkdir(parents=True, exist_ok=True)
    write(folder / "train" / "news.tsv", train_news + ([] if dev_news else dev_only[4:]))
    if dev_news:
        write(folder / "dev" / "news.tsv", dev_only)
    lines = {"train": [], "dev": []}
    imp = 0
    for u in range(42):
        kind = u % 7
        in_train, in_dev = u != 40, u != 41
        hist_len = {0: 12, 1: 3, 2: 9, 3: 20, 4: 8, 5: 30, 6: 10}[kind]
        n_imp = {"train": {0: 6, 1: 5, 2: 2, 3: 14, 4: 8, 5: 20, 6: 4}[kind], "dev": {0: 3, 1: 2, 2: 1, 3: 6, 4: 1, 5: 8, 6: 5}[kind]}
        click = {0: 0.2, 1: 0.3, 2: 0.05, 3: 0.7, 4: 0.25, 5: 0.15, 6: 0.9}[kind]
        for split in ("train", "dev"):
            if (split == "train" and not in_train) or (split == "dev" and not in_dev):
                continue
            day0 = 9 if split == "train" else 14
            for k in range(n_imp[split]):
                h = rng.choice(safe, size=min(hist_len + (k % 3), len(safe)), replace=False)
                if u % 5 == 1 and split == "dev":
                    h = h[:4]  # short dev histories only: falls at the history step
                cands = rng.choice(n_news, size=int(rng.integers(4, 9)), replace=False)
                toks = [f"N{c}-{int(rng.random() < click)}" for c in cands]
                if u == 3 and split == "dev" and k == 0:
                    toks.append("N999-0")  # resolves nowhere
                imp += 1
                hour = (k % 12) + 1
                lines[split].append(f"{imp}\tU{u}\t11/{day0 + k % 4:02d}/2019 {hour}:{k % 60:02d}:00 {'AM' if k % 2 else 'PM'}"
                                    f"\t{' '.join(f'N{i}' for i in h)}\t{' '.join(toks)}")
    lines["train"].insert(3, "garbage line without tabs")
    for split in ("train", "dev"):
        write(folder / split / "behaviors.tsv", lines[split])
    return folder


# -- our own reading of the published notebook --------------------------------------------------------
def pandas_title(field: str):
    """A title field as pandas' default quoting reads it (single-line quoted fields only, as in the fixture)."""
    m = re.fullmatch(r'"((?:[^"]|"")*)"(.*)', field)
    value = m.group(1).replace('""', '"') + m.group(2) if m else field
    return None if field in NA or (m and value in NA) else value


def published_chain(folder: Path, chain: PaperChain = PaperChain()) -> dict:
    titles = {}
    for split in ("train", "dev"):
        path = folder / split / "news.tsv"
        if not path.is_file():
            continue
        for line in path.read_text().splitlines():
            cols = line.split("\t")
            titles.setdefault(cols[0], pandas_title(cols[3]))  # concat(train, dev).drop_duplicates(keep="first")
    imps = {}
    for split in ("train", "dev"):
        imps[split] = []
        for line in (folder / split / "behaviors.tsv").read_text().splitlines():
            cols = line.split("\t")
            if len(cols) != 5:
                continue  # a malformed line (the notebook would stop)
            toks = [t.split("-") for t in cols[4].split()]
            imps[split].append((cols[1], cols[3].split(), [(p[0], int(p[1])) for p in toks if len(p) == 2]))
    out = {"read": (len(imps["train"]), len(imps["dev"]))}
    common = {u for u, _, _ in imps["train"]} & {u for u, _, _ in imps["dev"]}
    out["common"] = (len(common), sum(u in common for u, _, _ in imps["train"]), sum(u in common for u, _, _ in imps["dev"]))

    def rows(split, users):
        return [(u, h, nid, y) for u, h, toks in imps[split] if u in users for nid, y in toks]

    out["explode"] = (len(common), len(rows("train", common)), len(rows("dev", common)))
    long_hist = [{u for u, h, _ in imps[s] if len(h) >= chain.min_history} for s in ("train", "dev")]
    users = common & long_hist[0] & long_hist[1]
    out["history"] = (len(users), len(rows("train", users)), len(rows("dev", users)))
    train_rows = rows("train", users)
    total = {u: sum(r[0] == u for r in train_rows) for u in users}
    clicks = {u: sum(r[0] == u and r[3] == 1 for r in train_rows) for u in users}
    users = {u for u in users if total[u] >= chain.min_train_rows and clicks[u] >= chain.min_train_clicks}
    out["activity"] = (len(users), len(rows("train", users)), len(rows("dev", users)))

    def cap(split, limit):
        result = []
        for u in sorted(users):  # groupby("User ID")
            mine = [r for r in rows(split, {u})]
            if len(mine) <= limit:
                result += mine
                continue
            pos, neg = [r for r in mine if r[3] == 1], [r for r in mine if r[3] == 0]
            n_pos = min(len(pos), int(limit * 0.5))
            n_neg = limit - n_pos
            if len(pos) > n_pos:  # DataFrame.sample(n, random_state=42): RandomState(42).permutation(len)[:n]
                pos = [pos[i] for i in np.random.RandomState(chain.seed).permutation(len(pos))[:n_pos]]
            if len(neg) > n_neg:
                neg = [neg[i] for i in np.random.RandomState(chain.seed).permutation(len(neg))[:n_neg]]
            result += pos + neg
        return result

    final = {"train": cap("train", chain.train_cap), "dev": cap("dev", chain.valid_cap)}
    out["cap"] = (len(final["train"]), len(final["dev"]))
    rng = random.Random(chain.seed)
    for split in ("train", "dev"):
        kept = []
        for u, h, nid, y in final[split]:
            hist_titles = [titles[i] for i in h if i in titles]
            if len(hist_titles) > chain.history_titles:
                hist_titles = rng.sample(hist_titles, chain.history_titles)
            if len(" ".join(hist_titles)) <= chain.max_history_chars:
                kept.append((u, h, nid, y))
        final[split] = kept
    out["chars"] = (len(final["train"]), len(final["dev"]))
    dev_count = {}
    for r in final["dev"]:
        dev_count[r[0]] = dev_count.get(r[0], 0) + 1
    keep = {u for u, c in dev_count.items() if c >= chain.min_valid_rows}
    final = {s: [r for r in final[s] if r[0] in keep] for s in final}
    out["valid_rows"] = (len({r[0] for r in final["train"]}), len(final["train"]), len(final["dev"]))
    unique = list(dict.fromkeys(r[0] for r in final["train"]))
    sampled = set(random.Random(chain.seed).sample(unique, chain.max_users)) if len(unique) > chain.max_users else set(unique)
    final = {s: [r for r in final[s] if r[0] in sampled] for s in final}
    out["users"] = (len(sampled), len(final["train"]), len(final["dev"]))
    out["untitled_rows"] = sum(titles.get(r[2]) is None for s in final for r in final[s])
    out["final"] = final
    return out


# -- tests --------------------------------------------------------------------------------------------
def steps_by_name(data) -> dict:
    return {s["step"]: s for s in data.steps}


@pytest.mark.parametrize("max_users", [50_000, 7])
def test_paper_chain_counts_match_the_published_notebook(tmp_path, max_users):
    raw = make_paper_fixture(tmp_path / "raw")
    chain = PaperChain(max_users=max_users)
    expected = published_chain(raw, chain)
    data = read_mind_paper(raw, max_bad_fraction=0.05, chain=chain)
    st = steps_by_name(data)
    assert (st["read"]["train_impressions"], st["read"]["valid_impressions"]) == expected["read"]
    u = st["users_in_train_and_valid"]
    assert (u["users"], u["train_impressions"], u["valid_impressions"]) == expected["common"]
    for name, key in (("one_row_per_impressed_news", "explode"), ("history_>=7_in_both_splits", "history"),
                      ("train_rows_>=20_and_clicks_>=4", "activity"), ("valid_rows_>=10", "valid_rows"),
                      (f"sample_at_most_{max_users}_users", "users")):
        assert (st[name]["users"], st[name]["train_rows"], st[name]["valid_rows"]) == expected[key], name
    for name, key in (("cap_60_train_20_valid_at_most_half_clicks", "cap"), ("history_chars_<=512", "chars")):
        assert (st[name]["train_rows"], st[name]["valid_rows"]) == expected[key], name
    last = st["drop_untitled_candidates"]
    assert last["dropped_rows"] == expected["untitled_rows"] > 0
    # the rows themselves: every published row but the untitled ones, in the published order, split by origin
    rows = [(data.user_ids[u], data.item_ids[i], int(y)) for u, i, y in zip(data.arrays["user"], data.arrays["item"],
                                                                            data.arrays["label"])]
    want = [(u, nid, y) for s in ("train", "dev") for u, _, nid, y in expected["final"][s] if nid not in ("N7", "N999")]
    assert rows == want
    n_train = int((data.arrays["origin"] == 0).sum())
    assert n_train == last["train_rows"] and len(rows) - n_train == last["valid_rows"]


def test_the_fixture_reaches_every_step(tmp_path):
    """The fixture is not trivial: something falls at every step, and the caps bite both ways."""
    expected = published_chain(make_paper_fixture(tmp_path / "raw"))
    seq = [expected[k][0] for k in ("common", "history", "activity", "valid_rows")]
    assert seq == sorted(seq, reverse=True) and len(set(seq)) == 4, seq
    assert expected["explode"][1] > expected["history"][1] > expected["activity"][1]
    assert expected["cap"][0] < expected["activity"][1] and expected["cap"][1] < expected["activity"][2]
    assert expected["chars"][0] < expected["cap"][0]
    # pinned: the numbers this fixture gives, also obtained by running the notebook's own pandas cells on it
    # (a change here means the fixture or the reading of the notebook changed)
    assert expected["common"] == (40, 330, 143) and expected["explode"] == (40, 1960, 855)
    assert expected["history"] == (28, 1452, 652) and expected["activity"] == (23, 1391, 618)
    assert expected["cap"] == (1030, 343) and expected["chars"] == (938, 314)
    assert expected["valid_rows"] == (17, 704, 271) == expected["users"] and expected["untitled_rows"] == 24


def test_prepare_manifest_records_mode_every_step_and_final(tmp_path):
    raw = make_paper_fixture(tmp_path / "raw")
    cfg = OmegaConf.structured(DataConfig(name="mind", task="click", template="news_click", raw_dir=str(raw),
                                          processed_dir=str(tmp_path / "p"), preprocessing="paper", split_by="paper"))
    path = prepare_dataset(cfg)
    manifest = json.loads((path / "manifest.json").read_text())
    assert manifest["preprocessing"] == "paper" and manifest["params"]["preprocessing"] == "paper"
    expected = published_chain(raw)
    final = manifest["final"]
    n_train = sum(r[2] not in ("N7", "N999") for r in expected["final"]["train"])
    n_valid = sum(r[2] not in ("N7", "N999") for r in expected["final"]["dev"])
    assert final["rows_per_split"] == {"train": n_train, "valid": n_valid, "test": 0}
    assert final["rows"] == n_train + n_valid and final["users"] == expected["users"][0]
    names = [s["step"] for s in manifest["steps"]]
    assert names.index("users_in_train_and_valid") < names.index("history_>=7_in_both_splits") < names.index(
        "sample_at_most_50000_users") < names.index("final")
    table = load_prepared(cfg, seed=3)
    assert int((table.split == 0).sum()) == n_train and int((table.split == 1).sum()) == n_valid
    assert not (table.split == 2).any()
    # the published sampled history titles travel with the rows (at most 5, never resampled at load time)
    assert all(text.count("; ") <= 4 for text in table.row_text)
    assert load_prepared(cfg, seed=9).row_text == table.row_text


def test_dev_folder_without_news_resolves_through_the_pool(tmp_path):
    raw = make_paper_fixture(tmp_path / "raw", dev_news=False)
    assert not (raw / "dev" / "news.tsv").exists()
    data = read_mind_paper(raw, max_bad_fraction=0.05)
    assert len(data) > 0 and steps_by_name(data)["news"]["files"] == ["train/news.tsv"]
    clean = read_mind(raw, max_bad_fraction=0.05)
    assert len(clean) > 0 and steps_by_name(clean)["read"]["untitled_candidates"] > 0  # N7 ("None") and N999


def test_unresolvable_ids_beyond_the_limit_name_the_file(tmp_path):
    raw = make_paper_fixture(tmp_path / "raw")
    (raw / "dev" / "news.tsv").unlink()
    (raw / "train" / "news.tsv").write_text(news_line("N1", "Only one") + "\n")
    with pytest.raises(RawFileError, match=r"train/behaviors.tsv: \d+ of \d+ impressed news ids have no title") as err:
        read_mind(raw, max_bad_fraction=0.05)
    assert "\n" not in str(err.value)


def test_shipped_mind_config_runs_the_paper_chain_without_a_dev_news_file(tmp_path):
    from puma_lightning.cli.config_loader import load_config

    raw = make_paper_fixture(tmp_path / "raw", dev_news=False)
    repo = Path(__file__).resolve().parents[2]
    cfg = load_config([repo / "configs" / "mind.yaml"], [f"data.raw_dir={raw}", f"data.processed_dir={tmp_path / 'p'}",
                                                          "data.max_bad_fraction=0.05"])
    assert cfg.data.preprocessing == "paper"
    table = load_prepared(cfg.data, seed=0)
    assert len(table) > 0 and table.meta["prepare"]["params"]["preprocessing"] == "paper"


def test_paper_needs_train_and_dev(tmp_path):
    raw = make_paper_fixture(tmp_path / "raw")
    (raw / "dev" / "behaviors.tsv").rename(raw / "dev" / "other.tsv")
    with pytest.raises(PumaError, match="needs train/ and dev/ split folders"):
        read_mind_paper(raw)
