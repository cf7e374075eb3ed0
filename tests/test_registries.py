"""The dataset registry: every choice list derives from it, duplicates are refused, and the example of
docs/custom_dataset.md registers a dataset that ``fit`` runs on."""

from __future__ import annotations

import json
import re
from pathlib import Path

import numpy as np
import pytest

from puma_lightning.cli.config_loader import ConfigError, load_config
from puma_lightning.cli.main import main
from puma_lightning.data.datasets import dataset_names, raw_dataset_names
from puma_lightning.data.registry import DATASETS, Dataset, RawFormat, register_dataset

ROOT = Path(__file__).resolve().parents[1]
SMOKE = str(ROOT / "configs" / "smoke.yaml")


def test_builtin_datasets_and_their_kinds():
    assert dataset_names()[:6] == ("synthetic", "movielens-100k", "amazon-movies", "amazon-movies-csv", "yelp", "mind")
    assert set(raw_dataset_names()) == {"amazon-movies", "amazon-movies-csv", "yelp", "mind", "interactions"}
    assert DATASETS["mind"].task == "click" and DATASETS["synthetic"].task is None


def test_registry_refuses_duplicates_and_half_defined_datasets():
    with pytest.raises(ValueError, match="already registered"):
        register_dataset(Dataset("yelp", "rating", "again", "business", build=lambda d, s: None))
    with pytest.raises(ValueError, match="exactly one of"):
        register_dataset(Dataset("both", "rating", "x", "movie", build=lambda d, s: None, raw=RawFormat(list, list)))
    with pytest.raises(ValueError, match="exactly one of"):
        register_dataset(Dataset("neither", "rating", "x", "movie"))
    assert "both" not in DATASETS and "neither" not in DATASETS


def test_auto_template_is_the_datasets_own():
    cfg = load_config([SMOKE], ["data.template=auto"])
    assert cfg.data.template == DATASETS["synthetic"].template == "movie"
    from puma_lightning.data.templates import TEMPLATES

    assert all(d.template in TEMPLATES for d in DATASETS.values())


def test_unknown_dataset_lists_the_registered_ones():
    with pytest.raises(ConfigError, match="data.name.*synthetic.*mind"):
        load_config([SMOKE], ["data.name=netflix"])


def test_a_module_that_cannot_be_imported_is_one_line(tmp_path):
    with pytest.raises(ConfigError, match="data.module.*no_such_module_here"):
        load_config([SMOKE], ["data.module=no_such_module_here"])


def _write_files(folder: Path) -> None:
    folder.mkdir()
    rng = np.random.default_rng(0)
    (folder / "items.csv").write_text("item,text\n" + "".join(f"i{k},Film number {k}\n" for k in range(30)), encoding="utf-8")
    lines = ["user,item,rating,timestamp"]
    for u in range(12):
        for t, k in enumerate(rng.choice(30, size=8, replace=False)):
            lines.append(f"u{u},i{k},{int(rng.integers(1, 6))},{1000 * u + t}")
    (folder / "ratings.csv").write_text("\n".join(lines) + "\n", encoding="utf-8")


@pytest.mark.slow
def test_custom_dataset_example_from_docs(tmp_path, monkeypatch):
    text = (ROOT / "docs" / "custom_dataset.md").read_text(encoding="utf-8")
    code = re.findall(r"```python\n(.*?)```", text, re.S)[0]
    yaml = re.findall(r"```yaml\n(.*?)```", text, re.S)[0]
    (tmp_path / "my_datasets.py").write_text(code, encoding="utf-8")
    _write_files(tmp_path / "files")
    (tmp_path / "my_data.yaml").write_text(yaml.replace("path/to/my/files", str(tmp_path / "files")), encoding="utf-8")
    monkeypatch.syspath_prepend(str(tmp_path))
    try:
        run = tmp_path / "run"
        assert main(["fit", "--config", SMOKE, "--config", str(tmp_path / "my_data.yaml"), f"run_dir={run}", "prompt.epochs=1",
                     "adapter.epochs=1", "selection.budget=4", "trainer.num_threads=1", "data.valid_ratio=0.125",
                     "data.test_ratio=0.125"]) == 0
        results = json.loads((run / "results.json").read_text())
        assert results["dataset"] == "my-ratings" and results["num_users"] == 12 and results["num_test_rows"] == 12
        assert "my-ratings" in dataset_names()
    finally:
        DATASETS.pop("my-ratings", None)


def test_every_closed_form_adapter_start_is_a_config_choice_and_back():
    from puma_lightning.cli.config_loader import choices
    from puma_lightning.pipeline.levers.adapter_init import START_MAPS

    assert set(choices()["adapter.init"]) == {"random", *START_MAPS}


def test_the_dtype_choices_are_the_loaders_dtypes_and_auto():
    from puma_lightning.config import MODEL_DTYPES
    from puma_lightning.models.dtype_choice import DTYPES

    assert MODEL_DTYPES == ("auto", *DTYPES)
