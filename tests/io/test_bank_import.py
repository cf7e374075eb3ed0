"""``bank import``: banks from prompts trained elsewhere (tensor + ids, or PEFT adapters), and ``export-peft --all``."""

from __future__ import annotations

import hashlib
import json
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from safetensors.torch import load_file, save_file

from puma_lightning.cli.main import main
from puma_lightning.errors import PumaError
from puma_lightning.io.bank import PromptBank, read_manifest
from puma_lightning.io.bank_import import import_peft_bank, import_tensor_bank, read_prompt_tensor, read_user_ids
from puma_lightning.io.ownership import file_sha256

D = 8  # the width the io-level tests pretend their model has


def _snapshot(folder: Path) -> dict[str, str]:
    return {str(p.relative_to(folder)): hashlib.sha256(p.read_bytes()).hexdigest() for p in sorted(folder.rglob("*")) if p.is_file()}


def _import(tmp_path, prompts, users, **kw):
    return import_tensor_bank(prompts, users, "my-model", "fp0", D, tmp_path / "out", **kw)


@pytest.fixture
def inputs(tmp_path):
    """A [3, 2, D] float32 tensor as .npy and three ids (one with leading zeros) in a text file."""
    src = tmp_path / "in"
    src.mkdir()
    prompts = torch.randn(3, 2, D)
    np.save(src / "p.npy", prompts.numpy())
    (src / "u.txt").write_text("007\nb\nc\n")
    return src, prompts


# -- what goes in ---------------------------------------------------------------------------------------------------

def test_npy_and_text_ids_give_exactly_that_bank_with_its_lineage(tmp_path, inputs):
    src, prompts = inputs
    bank = _import(tmp_path, src / "p.npy", src / "u.txt")
    loaded = PromptBank.load(tmp_path / "out")
    assert torch.equal(loaded.prompts, prompts) and loaded.user_ids == ["007", "b", "c"] == bank.user_ids
    assert (loaded.model_name, loaded.model_fingerprint, loaded.head_state) == ("my-model", "fp0", None)
    manifest = read_manifest(tmp_path / "out")
    lineage = manifest["info"]["lineage"]
    assert manifest["info"]["made_by"] == lineage["made_by"] == "import:tensor"
    assert lineage["model"] == {"name": "my-model", "fingerprint": "fp0", "hidden_size": D}
    assert lineage["imported"]["prompts"]["path"] == str((src / "p.npy").resolve())
    assert lineage["imported"]["prompts"]["sha256"] == file_sha256(src / "p.npy")
    assert lineage["imported"]["users"] == {"path": str((src / "u.txt").resolve()), "sha256": file_sha256(src / "u.txt"),
                                            "column": None}


@pytest.mark.parametrize("kind", ["npy-2d", "pt", "pt-dict", "safetensors", "safetensors-key", "pt-key"])
def test_tensor_file_kinds_and_2d(tmp_path, kind):
    prompts = torch.randn(3, 2, D)
    file = tmp_path / {"npy-2d": "p.npy", "pt": "p.pt", "pt-dict": "p.pth", "pt-key": "p.pt"}.get(kind, "p.safetensors")
    key = None
    if kind == "npy-2d":
        prompts = prompts[:, :1]
        np.save(file, prompts[:, 0].numpy())
    elif kind == "pt":
        torch.save(prompts, file)
    elif kind == "pt-dict":
        torch.save({"prompts": prompts, "note": "no tensor"}, file)
    elif kind == "pt-key":
        torch.save({"prompts": prompts, "other": torch.zeros(3)}, file)
        key = "prompts"
    elif kind == "safetensors":
        save_file({"anything": prompts}, str(file))
    else:
        save_file({"x": prompts, "other": torch.zeros(2)}, str(file))
        key = "x"
    assert torch.equal(read_prompt_tensor(file, key), prompts)
    (tmp_path / "u.txt").write_text("a\nb\nc\n")
    _import(tmp_path, file, tmp_path / "u.txt", key=key)
    assert torch.equal(PromptBank.load(tmp_path / "out").prompts, prompts)


def test_ids_from_text_with_bom_crlf_and_trailing_spaces(tmp_path):
    (tmp_path / "u.txt").write_bytes(b"\xef\xbb\xbf007 \r\nb\t\r\nc")
    assert read_user_ids(tmp_path / "u.txt") == ["007", "b", "c"]
    (tmp_path / "ids.list").write_text("x\ny\n")  # any extension without a column: one id per line
    assert read_user_ids(tmp_path / "ids.list") == ["x", "y"]


def test_ids_from_csv_tsv_and_parquet_columns(tmp_path):
    import pyarrow as pa  # the [test] extra installs it
    import pyarrow.parquet as pq

    (tmp_path / "u.csv").write_text("n,user\n1,007\n2,\"a,b\"\n3,c\n")
    assert read_user_ids(tmp_path / "u.csv", "user") == ["007", "a,b", "c"]
    (tmp_path / "u.tsv").write_text("user\tn\n007\t1\nb\t2\n")
    assert read_user_ids(tmp_path / "u.tsv", "user") == ["007", "b"]
    pq.write_table(pa.table({"uid": ["007", "b", "c"], "n": [1, 2, 3]}), str(tmp_path / "u.parquet"))
    assert read_user_ids(tmp_path / "u.parquet", "uid") == ["007", "b", "c"]
    assert read_user_ids(tmp_path / "u.parquet", "n") == ["1", "2", "3"]
    np.save(tmp_path / "p.npy", np.random.randn(3, D).astype("float32"))
    _import(tmp_path, tmp_path / "p.npy", tmp_path / "u.parquet", column="uid")
    lineage = read_manifest(tmp_path / "out")["info"]["lineage"]
    assert PromptBank.load(tmp_path / "out").user_ids == ["007", "b", "c"] and lineage["imported"]["users"]["column"] == "uid"


def test_parquet_without_pyarrow_says_how_to_install_it(tmp_path, monkeypatch):
    (tmp_path / "u.parquet").write_bytes(b"PAR1")
    monkeypatch.setitem(sys.modules, "pyarrow", None)
    monkeypatch.setitem(sys.modules, "pyarrow.parquet", None)
    with pytest.raises(PumaError, match=r'pip install "puma_lightning\[parquet\]"'):
        read_user_ids(tmp_path / "u.parquet", "uid")


# -- what is refused ------------------------------------------------------------------------------------------------

def _npy(src, array):
    np.save(src / "p.npy", np.asarray(array))


REFUSALS = {
    "npy is text": (lambda s: (s / "p.npy").write_text("1 2 3"), {}, "not a readable .npy"),
    "safetensors is text": (lambda s: (s / "p.safetensors").write_text("hello"), {"prompts": "p.safetensors"},
                            "not a readable safetensors"),
    "pt is text": (lambda s: (s / "p.pt").write_text("hello"), {"prompts": "p.pt"}, "weights_only"),
    "unknown extension": (lambda s: (s / "p.bin").write_text("x"), {"prompts": "p.bin"}, "unknown prompts file type"),
    "1-D": (lambda s: _npy(s, np.zeros(3, "float32")), {}, "1-D tensor"),
    "4-D": (lambda s: _npy(s, np.zeros((3, 1, 1, D), "float32")), {}, "4-D tensor"),
    "integers": (lambda s: _npy(s, np.zeros((3, D), "int64")), {}, "floating point, got int64"),
    "empty": (lambda s: _npy(s, np.zeros((0, 2, D), "float32")), {}, "empty"),
    "width": (lambda s: _npy(s, np.zeros((3, 2, 6), "float32")), {}, "width d=6 but model my-model has hidden size 8"),
    "nan": (lambda s: _npy(s, np.array([[0.0] * D, [np.nan] * D, [np.inf] + [0.0] * (D - 1)], "float32")), {},
            "2 of 3 prompt rows hold NaN or inf (first: user 'b')"),
    "count": (lambda s: (s / "u.txt").write_text("007\nb\n"), {}, "has 3 prompt rows but"),
    "duplicate": (lambda s: (s / "u.txt").write_text("a\nb\na\n"), {}, "duplicate user id 'a' (line 1 and line 3)"),
    "blank line": (lambda s: (s / "u.txt").write_text("a\n\nc\n"), {}, "u.txt:2: blank line"),
    "ids missing": (lambda s: None, {"users": "nope.txt"}, "user ids file not found"),
    "column missing": (lambda s: (s / "u.csv").write_text("user,x\na,1\nb,2\nc,3\n"), {"users": "u.csv", "column": "uid"},
                       "no column 'uid' (columns: user, x)"),
    "column needed": (lambda s: (s / "u.csv").write_text("user\na\nb\nc\n"), {"users": "u.csv"}, "needs --users-column"),
    "empty csv id": (lambda s: (s / "u.csv").write_text("user\na\n\"\"\nc\n"), {"users": "u.csv", "column": "user"},
                     "u.csv:3: empty user id"),
    "two tensors": (lambda s: save_file({"a": torch.zeros(3, D), "b": torch.zeros(3, D)}, str(s / "p.safetensors")),
                    {"prompts": "p.safetensors"}, "expected exactly one tensor, found 2"),
    "no such key": (lambda s: save_file({"a": torch.zeros(3, D)}, str(s / "p.safetensors")),
                    {"prompts": "p.safetensors", "key": "b"}, "no tensor 'b' (tensors: a)"),
    "out is an input": (lambda s: None, {"out": "p.npy"}, "refusing to write an output over an input"),
    "out holds an input": (lambda s: None, {"out": "."}, "holds the input"),
}


@pytest.mark.parametrize("case", list(REFUSALS))
def test_each_bad_input_is_refused_in_one_line_and_nothing_is_written(tmp_path, inputs, case):
    src, _ = inputs
    make, args, message = REFUSALS[case]
    make(src)
    before = _snapshot(src)
    out = src / args["out"] if "out" in args else tmp_path / "out"
    with pytest.raises(PumaError) as err:
        import_tensor_bank(src / args.get("prompts", "p.npy"), src / args.get("users", "u.txt"), "my-model", "fp0", D, out,
                           column=args.get("column"), key=args.get("key"))
    assert message in str(err.value) and "\n" not in str(err.value)
    assert _snapshot(src) == before
    assert not (tmp_path / "out").exists() and sorted(p.name for p in tmp_path.iterdir()) == ["in"]


def test_an_out_folder_we_did_not_write_is_left_alone(tmp_path, inputs):
    src, _ = inputs
    (tmp_path / "out").mkdir()
    (tmp_path / "out" / "mine.txt").write_text("keep")
    with pytest.raises(PumaError, match="did not write"):
        _import(tmp_path, src / "p.npy", src / "u.txt")
    assert [p.name for p in (tmp_path / "out").iterdir()] == ["mine.txt"]


def test_a_failure_while_writing_leaves_no_half_bank(tmp_path, inputs, monkeypatch):
    import puma_lightning.io.bank as bank_module

    src, _ = inputs
    monkeypatch.setattr(bank_module, "write_shard", lambda *a, **k: (_ for _ in ()).throw(OSError("disk full")))
    with pytest.raises(OSError, match="disk full"):
        _import(tmp_path, src / "p.npy", src / "u.txt")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["in"]  # no out, no temporary folder


# -- PEFT adapters --------------------------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def tiny_llama() -> tuple[int, str]:
    from puma_lightning.models.loading import model_identity

    return model_identity("tiny-llama")


def test_model_identity_matches_the_loaded_backbone(tmp_path, tiny_llama):
    from puma_lightning.models.loading import load_backbone, model_identity
    from puma_lightning.models.tiny import build_tiny_model

    lm = load_backbone("tiny-llama")
    assert tiny_llama == (lm.hidden_size, lm.fingerprint) == (32, lm.fingerprint)
    model, tok = build_tiny_model("tiny-gemma3")
    model.save_pretrained(tmp_path / "m")
    tok.save_pretrained(tmp_path / "m")
    folder = load_backbone(str(tmp_path / "m"), dtype="float32")
    assert model_identity(str(tmp_path / "m")) == (48, folder.fingerprint)  # loaded in bf16 there, same fingerprint
    with pytest.raises(PumaError, match="cannot load model 'no-such-org/no-such-model' locally"):
        model_identity("no-such-org/no-such-model")


def _odd_bank(tmp_path, fingerprint: str) -> PromptBank:
    ids = ["z", "a/b", "x y", "Ünï", "..", "007", "7", "CON", "a\\b", "", "dup", "Dup"][::-1]
    ids[2] = "e" * 200  # a long id
    bank = PromptBank(torch.randn(len(ids), 3, 32), ids, "tiny-llama", fingerprint, {"made_by": "test"})
    bank.save(tmp_path / "bank")
    return bank


def test_export_all_then_import_peft_gives_the_same_bank(tmp_path, capsys, tiny_llama):
    bank = _odd_bank(tmp_path, tiny_llama[1])
    assert main(["bank", "export-peft", str(tmp_path / "bank"), "--all", "--out", str(tmp_path / "peft")]) == 0
    folders = sorted(p.name for p in (tmp_path / "peft").iterdir() if p.is_dir())
    assert len(folders) == 12 and folders[0].startswith("00000-") and all(len(f) <= 70 for f in folders)
    meta = json.loads((tmp_path / "peft" / folders[3] / "adapter_config.json").read_text())
    assert meta["peft_type"] == "PROMPT_TUNING" and meta["num_virtual_tokens"] == 3 and meta["token_dim"] == 32
    assert main(["bank", "import", "--peft", str(tmp_path / "peft"), "--model", "tiny-llama", "--out", str(tmp_path / "back")]) == 0
    assert "imported 12 users' prompts (12 x 3 x 32) for model tiny-llama" in capsys.readouterr().out
    back = PromptBank.load(tmp_path / "back")
    assert back.user_ids == bank.user_ids
    assert torch.equal(back.prompts.view(torch.int32), bank.prompts.view(torch.int32))
    assert (back.model_name, back.model_fingerprint) == (bank.model_name, bank.model_fingerprint)
    lineage = back.info["lineage"]
    assert lineage["made_by"] == "import:peft" and lineage["imported"]["peft"]["path"] == str((tmp_path / "peft").resolve())
    assert [a["folder"] for a in lineage["imported"]["peft"]["adapters"]] == folders
    assert main(["bank", "info", str(tmp_path / "back")]) == 0
    assert "import:peft -> tiny-llama" in capsys.readouterr().out


def test_export_all_replaces_only_its_own_folder(tmp_path, tiny_llama):
    _odd_bank(tmp_path, tiny_llama[1])
    args = ["bank", "export-peft", str(tmp_path / "bank"), "--all", "--out", str(tmp_path / "peft")]
    assert main(args) == 0 and main(args) == 0  # our own export is replaced
    (tmp_path / "peft" / "notes.txt").write_text("mine")
    assert main(args) == 2 and (tmp_path / "peft" / "notes.txt").read_text() == "mine"


def test_export_one_user_still_works(tmp_path, tiny_llama):
    bank = _odd_bank(tmp_path, tiny_llama[1])
    assert main(["bank", "export-peft", str(tmp_path / "bank"), "--user", "x y", "--out", str(tmp_path / "one")]) == 0
    weights = tmp_path / "one" / "adapter_model.safetensors"
    assert torch.equal(load_file(str(weights))["prompt_embeddings"], bank.rows_for(["x y"])[0])
    from safetensors import safe_open

    with safe_open(str(weights), framework="pt") as fh:
        assert fh.metadata()["user_id"] == "x y"


def _adapters(tmp_path, n=3, l=2, d=D):
    folder = tmp_path / "adapters"
    for i in range(n):
        sub = folder / f"user{i}"
        sub.mkdir(parents=True)
        (sub / "adapter_config.json").write_text(json.dumps({"peft_type": "PROMPT_TUNING", "num_virtual_tokens": l, "token_dim": d}))
        save_file({"prompt_embeddings": torch.randn(l, d)}, str(sub / "adapter_model.safetensors"))
    return folder


def test_peft_ids_fall_back_to_folder_names(tmp_path):
    folder = _adapters(tmp_path)
    save_file({"prompt_embeddings": torch.ones(2, D)}, str(folder / "user1" / "adapter_model.safetensors"),
              metadata={"user_id": "007"})
    bank = import_peft_bank(folder, "my-model", "fp0", D, tmp_path / "out")
    assert bank.user_ids == ["user0", "007", "user2"] and torch.equal(PromptBank.load(tmp_path / "out").prompts[1], torch.ones(2, D))


def _config(sub, **change):
    file = sub / "adapter_config.json"
    file.write_text(json.dumps({**json.loads(file.read_text()), **change}))


PEFT_REFUSALS = {
    "shapes differ": (lambda f: (save_file({"prompt_embeddings": torch.zeros(3, D)}, str(f / "user2" / "adapter_model.safetensors")),
                                 _config(f / "user2", num_virtual_tokens=3)), "shape (3, 8) differs from user0's (2, 8)"),
    "config disagrees": (lambda f: _config(f / "user1", num_virtual_tokens=5), "num_virtual_tokens=5, token_dim=8"),
    "not prompt tuning": (lambda f: _config(f / "user1", peft_type="LORA"), "a LORA adapter, not PROMPT_TUNING"),
    "no config": (lambda f: (f / "user1" / "adapter_config.json").unlink(), "not a PEFT adapter folder"),
    "duplicate ids": (lambda f: save_file({"prompt_embeddings": torch.zeros(2, D)}, str(f / "user2" / "adapter_model.safetensors"),
                                          metadata={"user_id": "user0"}), "duplicate user id 'user0' (folder user0 and folder user2)"),
    "other model": (lambda f: save_file({"prompt_embeddings": torch.zeros(2, D)}, str(f / "user0" / "adapter_model.safetensors"),
                                        metadata={"model_fingerprint": "fpX"}), "fingerprint fpX, not fp0"),
    "nan": (lambda f: save_file({"prompt_embeddings": torch.full((2, D), float("nan"))}, str(f / "user2" / "adapter_model.safetensors")),
            "1 of 3 prompt rows hold NaN or inf (first: user 'user2')"),
}


@pytest.mark.parametrize("case", list(PEFT_REFUSALS))
def test_bad_peft_folders_are_refused(tmp_path, case):
    folder = _adapters(tmp_path)
    make, message = PEFT_REFUSALS[case]
    make(folder)
    before = _snapshot(folder)
    with pytest.raises(PumaError) as err:
        import_peft_bank(folder, "my-model", "fp0", D, tmp_path / "out")
    assert message in str(err.value) and "\n" not in str(err.value)
    assert _snapshot(folder) == before and not (tmp_path / "out").exists()


def test_peft_width_must_match_the_model(tmp_path):
    with pytest.raises(PumaError, match="width d=8 but model my-model has hidden size 16"):
        import_peft_bank(_adapters(tmp_path), "my-model", "fp0", 16, tmp_path / "out")


# -- the command line -----------------------------------------------------------------------------------------------

def test_cli_imports_with_a_tiny_model(tmp_path, capsys, tiny_llama):
    np.save(tmp_path / "p.npy", np.random.randn(3, 32).astype("float32"))
    (tmp_path / "u.txt").write_text("007\nb\nc\n")
    assert main(["bank", "import", "--prompts", str(tmp_path / "p.npy"), "--users", str(tmp_path / "u.txt"),
                 "--model", "tiny-llama", "--out", str(tmp_path / "out")]) == 0
    out = capsys.readouterr().out.strip()
    assert out.count("\n") == 0 and "imported 3 users' prompts (3 x 1 x 32) for model tiny-llama" in out
    bank = PromptBank.load(tmp_path / "out")
    assert (bank.model_name, bank.model_fingerprint, bank.user_ids) == ("tiny-llama", tiny_llama[1], ["007", "b", "c"])
    assert main(["bank", "info", str(tmp_path / "out")]) == 0
    info = capsys.readouterr().out
    assert f"imported     prompts {(tmp_path / 'p.npy').resolve()}" in info and "import:tensor -> tiny-llama" in info


@pytest.mark.parametrize("extra, message", [
    (["--model", "tiny-gemma3"], "width d=32 but model tiny-gemma3 has hidden size 48"),
    (["--model", "tiny-llama", "--users-column", "nope"], "no column 'nope'"),
    (["--model", "tiny-llama", "--peft", "x"], "not allowed with argument"),
])
def test_cli_bad_input_is_one_error_line(tmp_path, capsys, extra, message):
    np.save(tmp_path / "p.npy", np.random.randn(3, 32).astype("float32"))
    (tmp_path / "u.txt").write_text("007\nb\nc\n")
    argv = ["bank", "import", "--prompts", str(tmp_path / "p.npy"), "--users", str(tmp_path / "u.txt"), "--out", str(tmp_path / "out")]
    if "--peft" in extra:  # argparse's own refusal: usage and one error line, exit 2
        with pytest.raises(SystemExit) as stop:
            main(argv + extra)
        assert stop.value.code == 2 and message in capsys.readouterr().err
        return
    assert main(argv + extra) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: ") and err.count("\n") == 1 and message in err
    assert not (tmp_path / "out").exists()


def test_cli_option_mixups_are_refused(tmp_path, capsys):
    (tmp_path / "a").mkdir()
    assert main(["bank", "import", "--peft", str(tmp_path / "a"), "--users", "u.txt", "--model", "tiny-llama", "--out", "o"]) == 2
    assert "go with --prompts, not --peft" in capsys.readouterr().err
    assert main(["bank", "import", "--prompts", "p.npy", "--model", "tiny-llama", "--out", "o"]) == 2
    assert "--prompts needs --users" in capsys.readouterr().err
