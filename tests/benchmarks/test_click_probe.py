"""``benchmarks/click_probe.py`` runs on a tiny model and prints the click references, the logistic bases and the
per-user terms over them; a rating config is one clear refusal."""

import importlib.util
import re
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
PERSONAL, CLICK = (str(ROOT / "configs" / f"{n}.yaml") for n in ("personal", "personal_click"))


def _probe():
    spec = importlib.util.spec_from_file_location("benchmark_click_probe", ROOT / "benchmarks" / "click_probe.py")
    probe = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(probe)
    return probe


def test_probe_prints_the_bases_and_the_terms_over_them(capsys):
    assert _probe().main(["--config", PERSONAL, "--config", CLICK, "--iterations", "3", "--steps", "10",
                          "source.name=tiny-llama", "data.n_users=60", "trainer.num_threads=1"]) == 0
    out = capsys.readouterr().out
    assert out.startswith("machine: ")
    rows = {m.group(1): [float(m.group(k)) for k in range(2, 6)] for m in
            re.finditer(r"^\| ([^|]+?) \| ([0-9.]+) \| ([0-9.]+) \| ([0-9.]+) \| ([0-9.]+) \|", out, re.M)}
    assert set(rows) >= {"popularity", "item_logodds", "user_item_logodds", "per-user match term over user_item_logodds",
                         "shared taste prior over user_item_logodds"}, out
    assert all(0.0 <= v <= 1.0 for r in rows.values() for v in r)
    # the per-user term is a fit over the base, not the base itself: its validation uAUC moves
    assert rows["per-user match term over user_item_logodds"][1] != rows["user_item_logodds"][1]


def test_a_rating_config_is_refused_in_one_line():
    with pytest.raises(SystemExit, match="data.task is 'rating'; this probe reads click tables"):
        _probe().main(["--config", PERSONAL, "source.name=tiny-llama", "data.n_users=20", "trainer.num_threads=1"])
