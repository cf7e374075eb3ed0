"""Nothing is deleted that we did not write: folders replaced atomically only when they are ours."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from puma_lightning.cli.main import main
from puma_lightning.io.atomic import NotOursError, atomic_dir
from puma_lightning.io.bank import PromptBank

ROOT = Path(__file__).resolve().parents[2]


def test_atomic_dir_refuses_a_folder_without_its_marker_before_any_work(tmp_path):
    target = tmp_path / "mine"
    target.mkdir()
    (target / "thesis.tex").write_text("years of work")
    ran = []
    with pytest.raises(NotOursError, match="did not write"):
        with atomic_dir(target, "bank", "prompt bank") as tmp:
            ran.append(tmp)
    assert not ran and (target / "thesis.tex").read_text() == "years of work"
    assert [p.name for p in tmp_path.iterdir()] == ["mine"]  # no temporary folder left behind


def test_atomic_dir_refuses_a_regular_file_and_leaves_no_old_copy(tmp_path):
    target = tmp_path / "notes"
    target.write_text("keep me")
    with pytest.raises(NotOursError, match="not a folder"):
        with atomic_dir(target, "bank"):
            pass
    assert target.read_text() == "keep me" and sorted(p.name for p in tmp_path.iterdir()) == ["notes"]


def test_atomic_dir_replaces_its_own_kind_and_keeps_a_user_dot_old(tmp_path):
    target = tmp_path / "bank"
    user_old = tmp_path / ".bank.old"  # a name the old code used and deleted
    user_old.mkdir()
    (user_old / "x").write_text("user's")
    for version in ("1", "2"):
        with atomic_dir(target, "bank") as tmp:
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
    from tests.data.test_prepare import config
    from tests.data.test_raw_amazon import make_fixture

    from puma_lightning.data.prepare import prepare_dataset

    make_fixture(tmp_path / "raw")
    mine = tmp_path / "p"  # the config's data.processed_dir
    mine.mkdir()
    (mine / "results_2025.csv").write_text("precious")
    with pytest.raises(NotOursError, match="did not write"):
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


# -- issue 35: ownership that a stray file cannot fake, outputs that never replace inputs ------------------------------

SMOKE = str(ROOT / "configs" / "smoke.yaml")


def checksums(folder: Path) -> dict[str, str]:
    """sha256 of every file under ``folder`` (relative path -> digest): the user's files before and after."""
    import hashlib

    return {str(p.relative_to(folder)): hashlib.sha256(p.read_bytes()).hexdigest() for p in sorted(folder.rglob("*")) if p.is_file()}


def one_line_error(capsys) -> str:
    err = capsys.readouterr().err.strip()
    assert err.startswith("error:") and "\n" not in err and "Traceback" not in err, err
    return err


def _source_and_adapter(tmp_path: Path) -> tuple[Path, Path]:
    from safetensors.torch import save_file

    from puma_lightning.models.adapters import build_adapter

    torch.manual_seed(0)
    PromptBank(torch.randn(5, 1, 8), [f"u{i}" for i in range(5)], "src", "fp-src").save(tmp_path / "src")
    adapter = build_adapter("compact", 8, 6, hidden=16, dropout=0.0)
    save_file({f"adapter.{k}": v.contiguous() for k, v in adapter.state_dict().items()}, str(tmp_path / "a.safetensors"),
              metadata={"kind": "compact", "source_dim": "8", "target_dim": "6", "hidden": "16", "dropout": "0.0",
                        "output_scale": "1.0", "source_fingerprint": "fp-src", "target_model": "tgt", "target_fingerprint": "fp-t"})
    return tmp_path / "src", tmp_path / "a.safetensors"


def _migrate(tmp_path: Path, out: Path, *extra: str) -> int:
    src, adapter = _source_and_adapter(tmp_path)
    return main(["migrate", "--config", SMOKE, f"bank={src}", f"adapter_path={adapter}", f"out={out}",
                 f"run_dir={tmp_path / 'run'}", "trainer.enable_progress_bar=false", *extra])


@pytest.mark.parametrize("marker", ["{}", "not json at all", '{"format": "puma_lightning.processed/1", "files": []}',
                                    '{"format": "someone.else/1", "files": ["notes.md"]}'])
def test_a_stray_manifest_or_a_foreign_record_does_not_make_a_folder_ours(tmp_path, capsys, marker):
    d = tmp_path / "d"
    d.mkdir()
    (d / "manifest.json").write_text("{}")
    (d / ".puma_lightning.json").write_text(marker)
    (d / "notes.md").write_text("keep")
    before = checksums(d)
    assert _migrate(tmp_path, d) == 2
    err = one_line_error(capsys)
    assert str(d) in err and "refusing to replace" in err
    assert checksums(d) == before


def test_migrate_over_a_folder_with_only_a_manifest_json_keeps_the_users_files(tmp_path, capsys):
    d = tmp_path / "d"  # the case: mkdir d; echo '{}' > d/manifest.json; echo keep > d/notes.md
    d.mkdir()
    (d / "manifest.json").write_text("{}\n")
    (d / "notes.md").write_text("keep\n")
    before = checksums(d)
    assert _migrate(tmp_path, d) == 2
    assert "did not write" in one_line_error(capsys)
    assert checksums(d) == before


def test_our_own_bank_is_replaced_but_a_file_the_user_added_to_it_stops_the_command(tmp_path, capsys):
    out = tmp_path / "migrated"
    assert _migrate(tmp_path, out) == 0  # new: written
    assert _migrate(tmp_path, out) == 0  # ours and untouched: replaced
    capsys.readouterr()
    (out / "notes.md").write_text("my notes on this bank")
    before = checksums(out)
    assert _migrate(tmp_path, out) == 2
    err = one_line_error(capsys)
    assert "notes.md" in err and "we did not write" in err  # the refusal names the foreign file
    assert checksums(out) == before  # ...and everything is kept, the bank and the user's file alike
    (out / "notes.md").unlink()
    assert _migrate(tmp_path, out) == 0  # once it is ours alone again, it is replaced


def test_migrate_out_equal_to_the_input_bank_is_refused(tmp_path, capsys):
    src, _ = _source_and_adapter(tmp_path)
    before = checksums(src)
    assert _migrate(tmp_path, src) == 2
    err = one_line_error(capsys)
    assert f"out={src}" in err and "input bank" in err
    assert checksums(src) == before


def test_prepare_over_a_folder_with_a_stray_manifest_keeps_the_users_arrays(tmp_path, capsys):
    from tests.data.test_prepare import config
    from tests.data.test_raw_amazon import make_fixture

    from puma_lightning.data.prepare import prepare_dataset

    make_fixture(tmp_path / "raw")
    mine = tmp_path / "p"
    mine.mkdir()
    (mine / "manifest.json").write_text('{"format": 1, "dataset": "amazon"}')
    np_bytes = b"\x93NUMPY user's own array"
    (mine / "user.npy").write_bytes(np_bytes)
    before = checksums(mine)
    with pytest.raises(NotOursError, match="did not write"):
        prepare_dataset(config(tmp_path).data)
    assert checksums(mine) == before


def test_prepare_replaces_its_own_processed_folder_only_while_it_holds_nothing_else(tmp_path):
    from tests.data.test_prepare import config
    from tests.data.test_raw_amazon import make_fixture

    from puma_lightning.data.prepare import prepare_dataset

    make_fixture(tmp_path / "raw")
    dcfg = config(tmp_path).data
    path = prepare_dataset(dcfg)
    prepare_dataset(dcfg, force=True)  # ours: replaced
    (Path(path) / "README.txt").write_text("my notes")
    before = checksums(Path(path))
    with pytest.raises(NotOursError, match="README.txt"):
        prepare_dataset(dcfg, force=True)
    assert checksums(Path(path)) == before


def test_run_dir_that_is_a_users_folder_is_refused_and_its_config_yaml_kept(tmp_path, capsys):
    d = tmp_path / "mine"
    d.mkdir()
    (d / "config.yaml").write_text("my: own config\n")
    before = checksums(d)
    assert main(["prepare", "--config", SMOKE, f"run_dir={d}"]) == 2
    err = one_line_error(capsys)
    assert f"run_dir {d}" in err and "not a puma_lightning run directory" in err
    assert checksums(d) == before


def test_a_run_dir_we_made_is_ours_to_write_again(tmp_path, capsys):
    from tests.data.test_raw_amazon import make_fixture

    make_fixture(tmp_path / "raw")
    d = tmp_path / "run"
    args = ["prepare", "--config", SMOKE, f"run_dir={d}", "data.name=amazon-movies", f"data.raw_dir={tmp_path / 'raw'}",
            f"data.processed_dir={tmp_path / 'p'}", "data.template=movie_tv"]
    assert main(args) == 0
    first = (d / "config.yaml").read_text()
    assert main([*args, "seed=3"]) == 0
    assert (d / "config.yaml").read_text() != first and "seed: 3" in (d / "config.yaml").read_text()


@pytest.mark.parametrize("command", ["prepare", "select", "fit"])
def test_run_dir_naming_a_file_is_one_line(tmp_path, capsys, command):
    f = tmp_path / "run.txt"
    f.write_text("a file")
    assert main([command, "--config", SMOKE, f"run_dir={f}"]) == 2
    err = one_line_error(capsys)
    assert str(f) in err and "expected a folder" in err
    assert f.read_text() == "a file" and sorted(p.name for p in tmp_path.iterdir()) == ["run.txt"]


def test_run_dir_that_cannot_be_made_is_one_line_naming_it(tmp_path, capsys):
    assert main(["prepare", "--config", SMOKE, "run_dir=/proc/puma_run"]) == 2
    err = one_line_error(capsys)
    assert "/proc/puma_run" in err and ".tmp" not in err


def test_a_bank_with_duplicate_ids_or_a_count_mismatch_names_its_path(tmp_path):
    import json

    from puma_lightning.io.bank import BankError

    bank = tmp_path / "bank"
    PromptBank(torch.zeros(3, 1, 4), ["a", "b", "c"], "m", "fp").save(bank)
    manifest = json.loads((bank / "manifest.json").read_text())
    for ids, expected in ((["a", "b", "a"], "unique; repeated: ['a']"), (["a", "b"], "3 prompt rows but 2 user ids")):
        (bank / "manifest.json").write_text(json.dumps({**manifest, "user_ids": ids}))
        with pytest.raises(BankError) as err:
            PromptBank.load(bank)
        assert str(err.value).startswith(f"{bank}:") and expected in str(err.value)
    (bank / "manifest.json").write_text(json.dumps({**manifest, "user_ids": ["a", "b", "a"]}))
    with pytest.raises(BankError, match=f"^{bank}: user ids in a bank must be unique"):
        PromptBank.open(bank)


def _pairs(tmp_path: Path, content: bytes = b"user,item\nu1,i1\n") -> Path:
    p = tmp_path / "p.csv"
    p.write_bytes(content)
    return p


def test_predict_out_equal_to_the_pairs_file_is_refused(tmp_path, capsys):
    pairs = _pairs(tmp_path)
    before = checksums(tmp_path)
    assert main(["predict", "--config", SMOKE, f"run_dir={tmp_path / 'run'}", f"bank={tmp_path / 'bank'}",
                 f"pairs={pairs}", f"out={pairs}"]) == 2
    err = one_line_error(capsys)
    assert f"out={pairs} is the input pairs={pairs}" in err
    assert checksums(tmp_path) == before  # the pairs file, and no run folder either


def test_predict_out_equal_to_a_config_file_is_refused(tmp_path, capsys):
    config = tmp_path / "mine.yaml"
    config.write_text((ROOT / "configs" / "smoke.yaml").read_text())
    (tmp_path / "paper.yaml").write_text((ROOT / "configs" / "paper.yaml").read_text())  # smoke's base, beside it
    pairs = _pairs(tmp_path)
    before = checksums(tmp_path)
    assert main(["predict", "--config", str(config), f"run_dir={tmp_path / 'run'}", f"bank={tmp_path / 'bank'}",
                 f"pairs={pairs}", f"out={config}"]) == 2
    assert f"out={config} is the input --config #1" in one_line_error(capsys)
    assert checksums(tmp_path) == before


def test_predict_will_not_replace_a_file_it_did_not_write_without_overwrite(tmp_path, capsys):
    out = tmp_path / "results.csv"
    out.write_text("a user's spreadsheet\n")
    before = checksums(tmp_path)
    assert main(["predict", "--config", SMOKE, f"run_dir={tmp_path / 'run'}", f"bank={tmp_path / 'bank'}",
                 f"pairs={_pairs(tmp_path)}", f"out={out}"]) == 2
    err = one_line_error(capsys)
    assert f"out={out} already exists" in err and "overwrite=true" in err
    assert checksums(tmp_path)["results.csv"] == before["results.csv"]


def test_predict_out_naming_a_folder_is_one_line(tmp_path, capsys):
    folder = tmp_path / "preds"
    folder.mkdir()
    (folder / "x.csv").write_text("keep")
    assert main(["predict", "--config", SMOKE, f"run_dir={tmp_path / 'run'}", f"bank={tmp_path / 'bank'}",
                 f"pairs={_pairs(tmp_path)}", f"out={folder}"]) == 2
    assert f"out={folder} is a folder" in one_line_error(capsys)
    assert (folder / "x.csv").read_text() == "keep"


def test_a_pairs_file_that_is_not_utf8_is_one_line_naming_file_and_line(tmp_path, capsys):
    pairs = _pairs(tmp_path, b"user,item\nu1,i1\nu\xe92,i2\n")
    assert main(["predict", "--config", SMOKE, f"run_dir={tmp_path / 'run'}", f"bank={tmp_path / 'bank'}",
                 f"pairs={pairs}", f"out={tmp_path / 'o.csv'}"]) == 2
    err = one_line_error(capsys)
    assert f"{pairs}:3: not UTF-8" in err
    assert not (tmp_path / "o.csv").exists()


def test_an_output_that_cannot_be_written_names_itself_not_a_temporary_file():
    from puma_lightning.errors import PumaError
    from puma_lightning.io.pair_files import write_table

    with pytest.raises(PumaError) as err:
        write_table("/proc/x.csv", ["a"], [[1]])
    assert str(err.value).startswith("cannot write /proc/x.csv:") and ".tmp" not in str(err.value)
