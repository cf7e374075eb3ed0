"""``data.template`` as an inline mapping: checked when the config loads, answers checked on each model's tokenizer."""

from __future__ import annotations

from pathlib import Path

import pytest

from puma_lightning.cli.config_loader import ConfigError, checked_template, load_config
from puma_lightning.cli.main import main
from puma_lightning.data.templates import RATING_ANSWERS, inline_template, resolve_template, template_label

ROOT = Path(__file__).resolve().parents[2]


def errors(stderr: str) -> list[str]:
    """The ``error:`` lines of a command's stderr (its log lines aside); a traceback fails the test."""
    assert "Traceback" not in stderr, stderr
    return [line for line in stderr.splitlines() if line.startswith("error:")]
SMOKE = str(ROOT / "configs" / "smoke.yaml")
TEXT = "Rate the film {item}. The user: {user}.\n#Answer:"


def _config(tmp_path: Path, body: str, *overrides: str):
    path = tmp_path / "template.yaml"
    path.write_text(body, encoding="utf-8")
    return load_config([SMOKE, path], [f"run_dir={tmp_path / 'run'}", *overrides])


def test_an_inline_template_splits_at_its_one_slot_and_defaults_the_task_answers(tmp_path):
    cfg = _config(tmp_path, 'data:\n  template:\n    text: "Rate the film {item}. The user: {user}.\\n#Answer:"\n')
    template = checked_template(cfg)
    assert (template.before, template.after) == ("Rate the film {item}. The user: ", ".\n#Answer:")
    assert template.answers == RATING_ANSWERS
    assert template.render("Heat (1995)") == ("Rate the film Heat (1995). The user: ", ".\n#Answer:")
    click = resolve_template({"text": TEXT}, "click")
    assert click.answers == ("Yes",)


def test_the_label_names_an_inline_template_by_its_content(tmp_path):
    one, other = {"text": TEXT, "name": "mine"}, {"text": TEXT.replace("film", "movie"), "name": "mine"}
    assert template_label(one, "rating").startswith("mine-")
    assert template_label(one, "rating") != template_label(other, "rating")
    assert template_label("movie", "rating") == "movie"


@pytest.mark.parametrize("spec, message", [
    ({"text": "Rate {item}.\n#Answer:"}, "0 {user} slot markers"),
    ({"text": "{user} rates {item}, {user}.\n#Answer:"}, "2 {user} slot markers"),
    ({"text": "The user {user} rates it.\n#Answer:"}, "no {item}"),
    ({"text": "Rate {item} for {user}"}, "end with the answer cue"),
    ({"text": "Rate {item} for {user}.\n#Answer: "}, "no trailing whitespace"),
    ({"text": "Rate {item} for {user} {who}.\n#Answer:"}, "{who}"),
    ({"text": TEXT, "answers": ["1", "2"]}, "reads 5 distinct answer"),
    ({"text": TEXT, "answers": ["1", "1", "2", "3", "4"]}, "reads 5 distinct answer"),
    ({"text": TEXT, "extra": 1}, "unknown key"),
    ({"text": {"Rate {item} {user}.#Answer": None}}, "quote it"),
])
def test_a_bad_inline_template_is_one_line_naming_the_key(spec, message):
    with pytest.raises(Exception) as info:
        inline_template(spec, "rating")
    assert message in str(info.value) and "data.template" in str(info.value)
    assert "\n" not in str(info.value).replace("\\n", "")


def test_the_config_refuses_a_template_of_the_other_task(tmp_path):
    with pytest.raises(ConfigError, match="data.task=click reads 1 answer"):
        load_config([SMOKE], [f"run_dir={tmp_path}", "data.task=click", "data.template=movie"])
    with pytest.raises(ConfigError, match="slot markers"):
        _config(tmp_path, 'data:\n  template:\n    text: "Rate {item}.\\n#Answer:"\n')


def test_auto_picks_the_generic_template_of_the_task_where_the_dataset_has_either(tmp_path):
    cfg = load_config([SMOKE], [f"run_dir={tmp_path}", "data.task=click", "data.template=auto"])
    assert cfg.data.template == "item_click"  # synthetic's own ("movie") reads ratings


def test_an_answer_that_is_not_one_token_names_the_model_and_its_pieces(tmp_path, capsys):
    body = 'data:\n  task: click\n  template:\n    text: "Would the user {user} click {item}?\\n#Answer:"\n    answers: ["Absolutely-yes"]\n'
    path = tmp_path / "t.yaml"
    path.write_text(body, encoding="utf-8")
    code = main(["fit", "--config", SMOKE, "--config", str(path), f"run_dir={tmp_path / 'run'}", "trainer.num_threads=1"])
    err = errors(capsys.readouterr().err)
    assert code == 2 and len(err) == 1, err
    assert "'Absolutely-yes'" in err[0] and "tiny-llama" in err[0] and "not a single token" in err[0]
    assert "pieces" in err[0]
    assert not (tmp_path / "run" / "source" / "stage.json").exists()


def test_fit_checks_the_target_tokenizer_before_the_source_model_trains(tmp_path, capsys, monkeypatch):
    """An answer one token on the source's tokenizer but not on the target's stops fit before any stage runs."""
    from puma_lightning.models import loading

    real = loading.load_tokenizer

    def target_splits_yes(name, *args, **kwargs):
        tokenizer = real(name, *args, **kwargs)
        if name == "tiny-gemma3":  # a target whose vocabulary lacks "Yes" (forms it would be read from included)
            vocab = {k: v for k, v in tokenizer.get_vocab().items() if k.lstrip("▁Ġ") != "Yes"}
            tokenizer.get_vocab = lambda: vocab
            encode = tokenizer.__call__
            tokenizer.__class__ = type("SplittingTokenizer", (type(tokenizer),), {
                "__call__": lambda self, text, **kw: {"input_ids": [1, 2]} if text == "Yes" else encode(text, **kw)})
        return tokenizer

    monkeypatch.setattr(loading, "load_tokenizer", target_splits_yes)
    code = main(["fit", "--config", SMOKE, f"run_dir={tmp_path / 'run'}", "trainer.num_threads=1", "data.task=click",
                 "data.template=item_click"])
    err = errors(capsys.readouterr().err)
    assert code == 2 and len(err) == 1 and "'Yes'" in err[0] and "tiny-gemma3" in err[0] and "(target)" in err[0], err
    assert not (tmp_path / "run" / "source").exists()  # nothing trained
