"""Bad input, tried: a seeded mutation fuzzer over valid raw files (Amazon, Yelp, MIND fixtures)
and config files. Every case must end in success or in the CLI's one-line ``error:`` (exit 2)
naming the file or key — never a traceback — and a failed ``prepare`` leaves no partial output.
Also: NaN in a prompt stops training with a one-line error naming the step and the users."""

from __future__ import annotations

import json
import random
import shutil
from pathlib import Path

import pytest

from puma_lightning.cli.main import main
from tests.data.test_raw_amazon import make_fixture as amazon_fixture
from tests.data.test_raw_mind import make_fixture as mind_fixture
from tests.data.test_raw_yelp import make_fixture as yelp_fixture

ROOT = Path(__file__).resolve().parents[2]
SEED = 1234
CASES_PER_DATASET = 40
CONFIG_CASES = 80
COUNTS: dict[str, int] = {}

WEIRD = ['NaN', 'Infinity', '-Infinity', '1e309', '-1e309', '99999999999999999999999999', '"5"', 'null', '[]', '{}',
         'true', '""', '"\\u0000"', '-1', '0']


@pytest.fixture(autouse=True)
def fresh_log_handler():
    """The CLI binds its log handler to the stderr of the first call; capsys swaps stderr per call."""
    import logging

    yield
    logging.getLogger("puma_lightning").handlers.clear()


def _reset_log() -> None:
    import logging

    logging.getLogger("puma_lightning").handlers.clear()


def mutate_line(line: str, rng: random.Random) -> bytes:
    """One random corruption of a text line."""
    op = rng.randrange(8)
    data = line.encode("utf-8")
    if op == 0 and data:  # truncation
        return data[: rng.randrange(len(data))]
    if op == 1:  # non-UTF-8 bytes
        pos = rng.randrange(len(data) + 1)
        return data[:pos] + bytes([rng.choice([0xFF, 0xC3, 0x80, 0xFE, 0x00])]) + data[pos:]
    if op == 2:  # a JSON value or TSV field replaced by a weird one
        try:
            obj = json.loads(line)
            if isinstance(obj, dict) and obj:
                key = rng.choice(sorted(obj))
                obj[key] = json.loads(rng.choice(WEIRD).replace("NaN", "NaN"))
                return json.dumps(obj).encode()
        except ValueError:
            pass
        parts = line.split("\t")
        parts[rng.randrange(len(parts))] = rng.choice(WEIRD)
        return "\t".join(parts).encode()
    if op == 3:  # a key dropped
        try:
            obj = json.loads(line)
            if isinstance(obj, dict) and obj:
                obj.pop(rng.choice(sorted(obj)))
                return json.dumps(obj).encode()
        except ValueError:
            pass
        return "\t".join(line.split("\t")[:-1]).encode()
    if op == 4:  # huge line
        return data * rng.randint(2, 50)
    if op == 5:  # numbers replaced with NaN/inf/huge
        out = []
        for tok in line.split(" "):
            out.append(rng.choice(["NaN", "Infinity", "1e400", "-0"]) if tok.rstrip(",}").replace(".", "").isdigit() else tok)
        return " ".join(out).encode()
    if op == 6:  # empty line or whitespace
        return rng.choice([b"", b"   ", b"\t\t"])
    return bytes(rng.randrange(256) for _ in range(rng.randint(1, 40)))  # random garbage


def mutate_file(path: Path, rng: random.Random) -> None:
    """Corrupt a raw text file (gzip files are replaced by a mutated plain/garbled version)."""
    import gzip

    raw = path.read_bytes()
    if raw[:2] == b"\x1f\x8b":
        if rng.random() < 0.3:
            path.write_bytes(raw[: rng.randrange(len(raw))])  # truncated gzip
            return
        try:
            raw = gzip.decompress(raw)
        except (EOFError, OSError):  # already truncated by an earlier mutation
            pass
    if rng.random() < 0.08:
        path.write_bytes(b"")  # empty file
        return
    lines = raw.split(b"\n")
    for _ in range(rng.randint(1, 4)):
        i = rng.randrange(len(lines))
        lines[i] = mutate_line(lines[i].decode("utf-8", "replace"), rng)
    path.write_bytes(b"\n".join(lines))


def check_outcome(code: int, err: str, out_dir: Path, origins: list[str]) -> None:
    """Success, or one line ``error: ...`` naming something, and then no partial processed output."""
    if code == 0:
        manifests = list(out_dir.rglob("manifest.json"))
        assert manifests, "prepare succeeded but wrote no manifest"
        for m in manifests:
            json.loads(m.read_text())
        return
    assert code == 2, (code, err)
    lines = [ln for ln in err.strip().splitlines() if ln.startswith("error:")]
    assert len(lines) == 1 and "Traceback" not in err, err
    assert any(o in lines[0] for o in origins), lines[0]
    if out_dir.exists():  # a failed prepare leaves nothing behind but temporary-free folders
        assert not list(out_dir.rglob("manifest.json")), "partial output after an error"


@pytest.mark.parametrize("name,builder", [("amazon-movies", amazon_fixture), ("yelp", yelp_fixture), ("mind", mind_fixture)])
def test_fuzz_raw_files(name, builder, tmp_path, capsys):
    rng = random.Random(f"{SEED}-{name}")
    pristine = builder(tmp_path / "pristine")
    files = sorted(p for p in pristine.rglob("*") if p.is_file())
    cases = 0
    failures: list[str] = []
    for case in range(CASES_PER_DATASET):
        raw = tmp_path / f"raw{case}"
        shutil.copytree(pristine, raw)
        for _ in range(rng.randint(1, 2)):
            mutate_file(raw / rng.choice(files).relative_to(pristine), rng)
        out_dir = tmp_path / f"processed{case}"
        capsys.readouterr()
        _reset_log()
        try:
            code = main(["prepare", f"run_dir={tmp_path / 'run'}", f"data.name={name}", f"data.raw_dir={raw}",
                     f"data.processed_dir={out_dir}", "data.task=" + ("click" if name == "mind" else "rating"),
                     "data.template=" + {"amazon-movies": "movie", "yelp": "business", "mind": "news"}.get(name, "movie"),
                     f"data.max_bad_fraction={rng.choice([0.0, 0.3, 1.0])}"])
            err = capsys.readouterr().err
            origins = [p.name for p in files] + [str(raw), "data.", "raw", "interactions"]
            check_outcome(code, err, out_dir, origins)
        except Exception as exc:  # an unhandled error or a bad outcome: collect, report all at the end
            failures.append(f"case {case}: {type(exc).__name__}: {str(exc).splitlines()[0] if str(exc) else ''}"[:300])
        cases += 1
        shutil.rmtree(raw)
    COUNTS[name] = cases
    assert cases == CASES_PER_DATASET
    assert not failures, f"{len(failures)} of {cases} cases failed:\n" + "\n".join(failures)


def mutate_config(text: str, rng: random.Random) -> bytes:
    lines = text.splitlines()
    op = rng.randrange(7)
    if op == 0:
        return text.encode()[: rng.randrange(len(text))]
    if op == 1:
        return b""
    if op == 2:
        data = text.encode()
        pos = rng.randrange(len(data))
        return data[:pos] + b"\xff\xfe\xc3" + data[pos:]
    value_lines = [i for i, ln in enumerate(lines) if ":" in ln and not ln.rstrip().endswith(":") and not ln.lstrip().startswith("#")]
    i = rng.choice(value_lines)
    key, _ = lines[i].split(":", 1)
    if op == 3:  # unknown key
        lines.insert(i, f"{key.split(key.strip())[0]}no_such_key_{rng.randrange(100)}: 1")
    elif op == 4:  # wrong type / NaN / inf / huge
        lines[i] = f"{key}: {rng.choice(['.nan', '.inf', '-.inf', '1e999', '123456789012345678901234567890', 'abc', '[1, 2]', '{a: 1}', 'null', 'true', '-5', '0'])}"
    elif op == 5:  # broken indentation
        lines[i] = "   " + lines[i]
    else:  # a whole section replaced by a scalar
        lines[i] = f"{key}: {{{{"
    return ("\n".join(lines) + "\n").encode()


def test_fuzz_configs(tmp_path, capsys):
    rng = random.Random(f"{SEED}-config")
    base = (ROOT / "configs" / "smoke.yaml").read_text()
    (tmp_path / "paper.yaml").write_text((ROOT / "configs" / "paper.yaml").read_text())  # smoke's base, beside it
    for case in range(CONFIG_CASES):
        path = tmp_path / f"c{case}.yaml"
        path.write_bytes(mutate_config(base, rng))
        capsys.readouterr()
        _reset_log()
        code = main(["fit", "--config", str(path), f"run_dir={tmp_path / 'run'}", "--print-config"])
        captured = capsys.readouterr()
        if code != 0:
            assert code == 2
            lines = captured.err.strip().splitlines()
            assert len(lines) == 1 and lines[0].startswith("error:"), captured.err
            assert str(path) in lines[0] or "'" in lines[0], lines[0]
    COUNTS["config"] = CONFIG_CASES


def test_nan_in_a_prompt_bank_stops_training_with_one_line(tmp_path, capsys, monkeypatch):
    """A NaN injected into the prompts (as from a corrupted bank) ends the run with step and users."""
    import torch

    import puma_lightning.pipeline.stages.prompts as prompt_stage  # where the source stage draws its start

    real = prompt_stage.initial_prompts

    def poisoned(*args, **kwargs):
        prompts, scale = real(*args, **kwargs)
        with torch.no_grad():
            prompts[3].fill_(float("nan"))
        return prompts, scale

    monkeypatch.setattr(prompt_stage, "initial_prompts", poisoned)
    code = main(["pretrain", "--config", str(ROOT / "configs" / "smoke.yaml"), f"run_dir={tmp_path}", "model=source",
                 "data.n_users=8", "data.rows_per_user=8", "prompt.epochs=1", "trainer.num_threads=1"])
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 2
    assert len([ln for ln in err if ln.startswith("error:")]) == 1
    line = [ln for ln in err if ln.startswith("error:")][0]
    assert "non-finite training loss" in line and "step" in line and "users [" in line and "3" in line
    assert not (tmp_path / "source" / "stage.json").exists() and not (tmp_path / "source" / "bank").exists()


@pytest.mark.parametrize("command,override,key", [("fit", "data.max_users=-5", "data.max_users"),
                                                  ("fit", "data.max_users=0", "data.max_users"),
                                                  ("predict", "top_k=0", "top_k"), ("migrate", "rows_per_shard=0", "rows_per_shard")])
def test_bad_values_are_one_line_errors_before_anything_is_written(command, override, key, tmp_path, capsys):
    code = main([command, "--config", str(ROOT / "configs" / "smoke.yaml"), f"run_dir={tmp_path / 'run'}", override])
    lines = capsys.readouterr().err.strip().splitlines()
    assert code == 2 and len(lines) == 1 and lines[0].startswith("error:") and f"'{key}'" in lines[0], lines
    assert not (tmp_path / "run").exists()


def test_a_failed_command_leaves_the_run_directory_as_it_was(tmp_path, capsys):
    args = ["predict", "--config", str(ROOT / "configs" / "smoke.yaml"), f"bank={tmp_path / 'no-bank'}",
            f"pairs={tmp_path / 'no-pairs.csv'}", f"out={tmp_path / 'out.csv'}"]
    assert main([*args, f"run_dir={tmp_path / 'new' / 'run'}"]) == 2  # fails after the run directory was made
    assert "pairs file not found" in capsys.readouterr().err
    assert not (tmp_path / "new").exists()  # the folders made for it are gone again
    run = tmp_path / "old"
    run.mkdir()
    (run / "config.yaml").write_text("mine: 1\n")
    (run / "notes.txt").write_text("kept")
    assert main([*args, f"run_dir={run}"]) == 2
    assert (run / "config.yaml").read_text() == "mine: 1\n"  # the earlier config, not the failed command's
    assert sorted(p.name for p in run.iterdir()) == ["config.yaml", "notes.txt"]
    assert not (tmp_path / "out.csv").exists()


def test_report_case_count():
    """Prints how many fuzz cases ran (see the report)."""
    total = sum(COUNTS.values())
    print(f"fuzz cases: {total} {COUNTS}")
    assert total == 0 or total >= 3 * CASES_PER_DATASET


@pytest.mark.parametrize("override,expected", [("data.preprocessing=tidy", "'data.preprocessing'"),
                                               ("data.split_by=random", "'data.split_by'"),
                                               ("data.split_by=paper", "always splits chronologically")])
def test_data_choices_are_checked_when_the_config_loads(override, expected, tmp_path, capsys):
    code = main(["fit", "--config", str(ROOT / "configs" / "smoke.yaml"), f"run_dir={tmp_path / 'run'}", override])
    lines = capsys.readouterr().err.strip().splitlines()
    assert code == 2 and len(lines) == 1 and expected in lines[0], lines
    assert not (tmp_path / "run").exists()


def test_no_test_rows_stops_before_any_training(tmp_path, capsys):
    code = main(["fit", "--config", str(ROOT / "configs" / "smoke.yaml"), f"run_dir={tmp_path / 'run'}", "data.test_ratio=0"])
    lines = capsys.readouterr().err.strip().splitlines()
    assert code == 2 and lines[-1].startswith("error:") and "no test rows" in lines[-1], lines
    assert not (tmp_path / "run").exists()  # nothing trained, nothing written


def _issue35_case(name: str, tmp: Path) -> tuple[list[str], str]:
    """Set up one of issue 35's bad inputs under ``tmp``; returns the CLI call and what its one line must name."""
    from tests.io.test_no_data_loss import _source_and_adapter

    smoke = str(ROOT / "configs" / "smoke.yaml")
    src, adapter = _source_and_adapter(tmp)
    pairs = tmp / "p.csv"
    pairs.write_bytes(b"user,item\nu1,i1\n")
    predict = ["predict", "--config", smoke, f"run_dir={tmp / 'run'}", f"bank={src}", f"pairs={pairs}"]
    migrate = ["migrate", "--config", smoke, f"run_dir={tmp / 'run'}", f"bank={src}", f"adapter_path={adapter}"]
    if name == "stray_manifest":  # 1
        (tmp / "d").mkdir()
        (tmp / "d" / "manifest.json").write_text("{}\n")
        (tmp / "d" / "notes.md").write_text("keep\n")
        return [*migrate, f"out={tmp / 'd'}"], str(tmp / "d")
    if name == "users_run_dir":  # 2
        (tmp / "mine").mkdir()
        (tmp / "mine" / "config.yaml").write_text("mine: 1\n")
        return ["prepare", "--config", smoke, f"run_dir={tmp / 'mine'}"], str(tmp / "mine")
    if name == "out_is_pairs":  # 3
        return [*predict, f"out={pairs}"], str(pairs)
    if name == "out_is_a_users_file":  # 3
        (tmp / "o.csv").write_text("mine\n")
        return [*predict, f"out={tmp / 'o.csv'}"], str(tmp / "o.csv")
    if name == "pairs_not_utf8":  # 4
        pairs.write_bytes(b"user,item\n\xff,i1\n")
        return [*predict, f"out={tmp / 'new.csv'}"], f"{pairs}:2"
    if name == "out_is_a_folder":  # 5
        (tmp / "f").mkdir()
        return [*predict, f"out={tmp / 'f'}"], str(tmp / "f")
    if name == "run_dir_is_a_file":  # 6
        (tmp / "r.txt").write_text("x")
        return ["fit", "--config", smoke, f"run_dir={tmp / 'r.txt'}"], str(tmp / "r.txt")
    if name == "run_dir_unwritable":  # 7
        return ["prepare", "--config", smoke, "run_dir=/proc/puma_fuzz/run"], "/proc/puma_fuzz/run"
    if name == "bank_duplicate_ids":  # 8
        manifest = json.loads((src / "manifest.json").read_text())
        (src / "manifest.json").write_text(json.dumps({**manifest, "user_ids": ["u0"] * len(manifest["user_ids"])}))
        return [*migrate, f"out={tmp / 'm'}"], str(src)
    raise AssertionError(name)


@pytest.mark.parametrize("name", ["stray_manifest", "users_run_dir", "out_is_pairs", "out_is_a_users_file", "pairs_not_utf8",
                                  "out_is_a_folder", "run_dir_is_a_file", "run_dir_unwritable", "bank_duplicate_ids"])
def test_issue35_bad_outputs_are_one_line_and_change_nothing(name, tmp_path, capsys):
    from tests.io.test_no_data_loss import checksums

    args, named = _issue35_case(name, tmp_path)
    before = checksums(tmp_path)
    entries = sorted(str(p.relative_to(tmp_path)) for p in tmp_path.rglob("*"))
    code = main(args)
    err = capsys.readouterr().err.strip()
    assert code == 2 and err.startswith("error:") and "\n" not in err and "Traceback" not in err, err
    assert named in err and ".tmp" not in err, err
    assert checksums(tmp_path) == before  # every file of the user's byte for byte, and nothing new
    assert sorted(str(p.relative_to(tmp_path)) for p in tmp_path.rglob("*")) == entries  # no folder or temp file left
