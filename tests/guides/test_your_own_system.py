"""docs/your_own_system.md, run as written: its files, its config and every command, end to end on the tiny models;
then one bad input of each kind the page lists, each refused in one line with nothing written."""

from __future__ import annotations

import csv
import json
import re
import shlex
from pathlib import Path

import pytest

from puma_lightning.cli.main import main
from puma_lightning.io.bank import PromptBank

ROOT = Path(__file__).resolve().parents[2]


def errors(stderr: str) -> list[str]:
    """The ``error:`` lines of a command's stderr (its log lines aside); a traceback fails the test."""
    assert "Traceback" not in stderr, stderr
    return [line for line in stderr.splitlines() if line.startswith("error:")]
GUIDE = ROOT / "docs" / "your_own_system.md"
FENCE = re.compile(r"```(\w+)([^\n]*)\n(.*?)```", re.S)

pytestmark = pytest.mark.slow


def guide_blocks() -> list[tuple[str, str | None, str]]:
    """``(language, file name or None, body)`` of each fenced block of the guide, in page order."""
    out = []
    for lang, info, body in FENCE.findall(GUIDE.read_text(encoding="utf-8")):
        title = re.search(r'title="([^"]+)"', info)
        out.append((lang, title.group(1) if title else None, body))
    return out


def guide_commands() -> list[list[str]]:
    """The ``python -m puma_lightning ...`` lines of the guide's bash blocks, as argument lists after the module."""
    commands = []
    for lang, _, body in guide_blocks():
        if lang != "bash":
            continue
        for line in body.splitlines():
            if line.strip() and not line.lstrip().startswith("#"):
                words = shlex.split(line)
                assert words[:3] == ["python", "-m", "puma_lightning"], line
                commands.append(words[3:])
    return commands


def run(args: list[str], capsys) -> tuple[int, list[str]]:
    code = main(args)
    return code, errors(capsys.readouterr().err)


@pytest.fixture(scope="module")
def guide_done(tmp_path_factory):
    """A folder where the guide's files were written and its commands run, in order."""
    folder = tmp_path_factory.mktemp("guide")
    mp = pytest.MonkeyPatch()
    mp.chdir(folder)
    mp.setenv("PUMA_CACHE", str(folder / "cache"))
    blocks = guide_blocks()
    for lang, name, body in blocks:
        if name:
            Path(name).write_text(body, encoding="utf-8")
    for lang, name, body in blocks:
        if lang == "python":
            exec(compile(body, str(GUIDE), "exec"), {})
    outcomes = []
    for args in guide_commands():
        code = main([*args, "trainer.num_threads=1"] if args[0] != "bank" else args)
        outcomes.append((args, code))
    yield folder, outcomes
    mp.undo()


def test_every_command_of_the_guide_runs(guide_done):
    folder, outcomes = guide_done
    assert [a[0] for a, _ in outcomes] == ["prepare", "bank", "fit", "migrate", "predict"]
    assert all(code == 0 for _, code in outcomes), outcomes


def test_the_guide_imports_the_users_prompts_and_serves_them_migrated(guide_done):
    folder, _ = guide_done
    users = (folder / "users.txt").read_text(encoding="utf-8").split()
    old = PromptBank.load(folder / "banks" / "old")
    assert old.user_ids == users and old.head_state is None and old.info["lineage"]["made_by"] == "import:tensor"
    results = json.loads((folder / "runs" / "my_system" / "results.json").read_text())
    assert results["methods"]["source"]["imported"]["head"] == "fitted on the frozen imported prompts"
    assert {"source", "puma", "full_retrain"} <= set(results["methods"])
    assert "placebo" in results["methods"]["puma"]
    new = PromptBank.load(folder / "banks" / "new")
    assert new.user_ids == users and new.hidden_size == 48  # tiny-gemma3's width
    with open(folder / "predictions.csv", newline="", encoding="utf-8") as fh:
        rows = list(csv.DictReader(fh))
    assert [(r["user"], r["item"]) for r in rows] == [("user-00", "m003"), ("user-07", "m009")]
    assert all(1.0 <= float(r["prediction"]) <= 5.0 for r in rows)
    stage = json.loads((folder / "runs" / "my_system" / "source" / "stage.json").read_text())
    assert stage["imported"]["path"] == str((folder / "banks" / "old").resolve())


def _bad(folder: Path, capsys, args: list[str], message: str, must_not_exist: Path | None = None) -> None:
    before = {p: p.read_bytes() for p in folder.glob("*.*") if p.is_file()}
    code, err = run(args, capsys)
    assert code == 2 and len(err) == 1 and err[0].startswith("error: "), (args, err)
    assert message in err[0], (message, err[0])
    assert {p: p.read_bytes() for p in before} == before  # the user's files are untouched
    if must_not_exist is not None:
        assert not must_not_exist.exists()


def test_one_bad_input_of_each_kind_is_one_line(guide_done, capsys, monkeypatch):
    folder, _ = guide_done
    monkeypatch.chdir(folder)
    monkeypatch.setenv("PUMA_CACHE", str(folder / "cache"))
    cfg = ["--config", "my_system.yaml"]
    fresh = "data.processed_dir=processed/bad"
    # a file that is not the format its name says: Parquet bytes under a .csv name
    Path("parquet_really.csv").write_bytes(Path("interactions.parquet").read_bytes())
    _bad(folder, capsys, ["prepare", *cfg, "data.interactions=parquet_really.csv", fresh], "Parquet",
         folder / "processed" / "bad")
    # a missing column
    _bad(folder, capsys, ["prepare", *cfg, "data.columns.label=rating", fresh], "data.columns.label",
         folder / "processed" / "bad")
    # an empty file
    Path("empty.csv").write_bytes(b"")
    _bad(folder, capsys, ["prepare", *cfg, "data.items=empty.csv", fresh], "empty", folder / "processed" / "bad")
    # duplicate (user, item) rows
    Path("twice.csv").write_text("uid,movie_id,stars,ts\nu1,m001,4,10\nu1,m001,5,20\n", encoding="utf-8")
    _bad(folder, capsys, ["prepare", *cfg, "data.interactions=twice.csv", fresh], "keep_latest", folder / "processed" / "bad")
    # labels out of range for the task (every row: past any bad-line limit)
    Path("clicks.csv").write_text("uid,movie_id,stars,ts\n" + "".join(f"u{k},m001,7,{k}\n" for k in range(30)),
                                  encoding="utf-8")
    _bad(folder, capsys, ["prepare", *cfg, "data.interactions=clicks.csv", fresh], "outside 1-5",
         folder / "processed" / "bad")
    # a template slot marker missing, then present twice
    _bad(folder, capsys, ["fit", *cfg, 'data.template.text="Rate {item}.#Answer:"'], "0 {user} slot markers")
    _bad(folder, capsys, ["fit", *cfg, 'data.template.text="{user} rates {item} for {user}.#Answer:"'], "2 {user} slot markers")
    _bad(folder, capsys, ["fit", *cfg, "data.template.text=Rate {item} for {user}.#Answer:"], "quote it")
    # prompts of another width than the named model's
    _bad(folder, capsys, ["bank", "import", "--prompts", "prompts.npy", "--users", "users.txt", "--model", "tiny-gemma3",
                          "--out", "banks/wrong"], "48", folder / "banks" / "wrong")
