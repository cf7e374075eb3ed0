"""Nothing is deleted that we did not write: folders replaced atomically only when they are ours."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from puma_lightning.cli.main import main
from puma_lightning.io.atomic import NotOursError, atomic_dir
from puma_lightning.io.bank import PromptBank

ROOT = Path(__file__).resolve().parents[1]


def test_atomic_dir_refuses_a_folder_without_its_marker_before_any_work(tmp_path):
    target = tmp_path / "mine"
    target.mkdir()
    (target / "thesis.tex").write_text("years of work")
    ran = []
    with pytest.raises(NotOursError, match="no manifest.json"):
        with atomic_dir(target, "manifest.json", "prompt bank") as tmp:
            ran.append(tmp)
    assert not ran and (target / "thesis.tex").read_text() == "years of work"
    assert [p.name for p in tmp_path.iterdir()] == ["mine"]  # no temporary folder left behind


def test_atomic_dir_refuses_a_regular_file_and_leaves_no_old_copy(tmp_path):
    target = tmp_path / "notes"
    target.write_text("keep me")
    with pytest.raises(NotOursError, match="not a folder"):
        with atomic_dir(target, "manifest.json"):
            pass
    assert target.read_text() == "keep me" and sorted(p.name for p in tmp_path.iterdir()) == ["notes"]


def test_atomic_dir_replaces_its_own_kind_and_keeps_a_user_dot_old(tmp_path):
    target = tmp_path / "bank"
    user_old = tmp_path / ".bank.old"  # a name the old code used and deleted
    user_old.mkdir()
    (user_old / "x").write_text("user's")
    for version in ("1", "2"):
        with atomic_dir(target, "manifest.json") as tmp:
            (tmp / "manifest.json").write_text(version)
    assert (target / "manifest.json").read_text() == "2" and (user_old / "x").read_text() == "user's"
    assert sorted(p.name for p in tmp_path.iterdir()) == [".bank.old", "bank"]


def test_saving_a_bank_over_a_foreign_folder_is_refused(tmp_path):
    foreign = tmp_path / "photos"
    foreign.mkdir()
    (foreign / "a.jpg").write_bytes(b"\xff\xd8")
    bank = PromptBank(torch.zeros(2, 1, 4), ["u1", "u2"], "m", "fp")
    with pytest.raises(NotOursError):
        bank.save(foreign)
    assert (foreign / "a.jpg").read_bytes() == b"\xff\xd8"
    bank.save(tmp_path / "empty_ok")  # absent: written
    (tmp_path / "empty").mkdir()
    bank.save(tmp_path / "empty")  # empty folder: ours to fill
    bank.save(tmp_path / "empty")  # a bank: replaced
    assert PromptBank.load(tmp_path / "empty").user_ids == ["u1", "u2"]


def test_prepare_into_an_existing_foreign_folder_deletes_nothing(tmp_path):
    from test_prepare import config
    from test_raw_amazon import make_fixture

    from puma_lightning.data.prepare import prepare_dataset

    make_fixture(tmp_path / "raw")
    mine = tmp_path / "p"  # the config's data.processed_dir
    mine.mkdir()
    (mine / "results_2025.csv").write_text("precious")
    with pytest.raises(NotOursError, match="not a processed dataset"):
        prepare_dataset(config(tmp_path).data)
    assert (mine / "results_2025.csv").read_text() == "precious" and sorted(p.name for p in tmp_path.iterdir()) == ["p", "raw"]
    (mine / "results_2025.csv").unlink()
    mine.rmdir()
    mine.write_text("a file where the folder would go")
    with pytest.raises(NotOursError, match="not a folder"):
        prepare_dataset(config(tmp_path).data)
    assert mine.read_text() == "a file where the folder would go"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["p", "raw"]  # no .p.old left behind


def test_the_cli_says_it_in_one_line(tmp_path, capsys):
    out = tmp_path / "peft"
    out.mkdir()
    (out / "keep.txt").write_text("x")
    bank = PromptBank(torch.zeros(1, 1, 4), ["u1"], "m", "fp")
    bank.save(tmp_path / "bank")
    assert main(["bank", "export-peft", str(tmp_path / "bank"), "--user", "u1", "--out", str(out)]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("error:") and "refusing to replace" in err and "\n" not in err
    assert (out / "keep.txt").read_text() == "x"
