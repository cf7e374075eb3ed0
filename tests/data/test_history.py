"""``data.rated_history``: the user's latest earlier training ratings in the template's ``{history}``."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from puma_lightning.cli.config_loader import ConfigError, load_config
from puma_lightning.data.history import rated_history
from puma_lightning.data.table import SPLIT_NAMES, InteractionTable
from puma_lightning.data.templates import NO_HISTORY, TEMPLATES

SMOKE = str(Path(__file__).resolve().parents[2] / "configs" / "smoke.yaml")


def _table() -> InteractionTable:
    # user 0: rows at t = 5, 1, 3, 9 (train, train, train, test); user 1: one valid row then one train row
    return InteractionTable(
        user=np.array([0, 0, 0, 0, 1, 1]), item=np.array([0, 1, 2, 3, 0, 1]),
        label=np.array([4, 2, 5, 1, 3, 4], dtype=np.float32), timestamp=np.array([5, 1, 3, 9, 1, 2]),
        split=np.array([0, 0, 0, 2, 1, 0], dtype=np.int8), user_ids=["a", "b"],
        item_texts=["Alpha (1990), a Drama film", "Beta (1991)", "Gamma (1992), a Comedy film", "Delta (1993)"],
        task="rating", meta={})


def test_history_is_the_latest_earlier_training_rows_newest_last():
    texts = rated_history(_table(), k=2)
    assert texts[1] == NO_HISTORY  # user 0's first row in time
    assert texts[2] == "Beta (1991): 2"
    assert texts[0] == "Beta (1991): 2; Gamma (1992): 5"
    assert texts[3] == "Gamma (1992): 5; Alpha (1990): 4"  # the test row: k latest training rows, genres cut
    # a valid row's label is never shown: user 1's train row comes after a valid row only
    assert texts[4] == NO_HISTORY and texts[5] == NO_HISTORY


def test_no_label_of_a_non_training_row_reaches_any_history():
    table = _table()
    texts = rated_history(table, k=10)
    hidden = [i for i in range(len(table)) if table.split[i] != SPLIT_NAMES["train"]]
    for i in hidden:
        title = table.item_texts[table.item[i]].split(",")[0]
        assert not any(f"{title}: {table.label[i]:g}" in t for j, t in enumerate(texts) if table.user[j] == table.user[i])


def test_history_template_and_validation():
    assert TEMPLATES["item_first_history"].uses_history
    with pytest.raises(ConfigError, match="has no"):
        load_config([SMOKE], ["data.rated_history=3"])  # smoke's template 'movie' has no {history}
    with pytest.raises(ConfigError, match="rated_history"):
        load_config([SMOKE], ["data.rated_history=-1", "data.template=item_first_history"])
    cfg = load_config([SMOKE], ["data.rated_history=3", "data.template=item_first_history"])
    from puma_lightning.pipeline.builders import build_table

    table = build_table(cfg.data, cfg.seed)
    assert table.row_text is not None and len(table.row_text) == len(table)
    assert table.meta["rated_history"] == 3
    assert all(t == NO_HISTORY or t.count("; ") <= 2 for t in table.row_text)
