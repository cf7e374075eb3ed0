"""Packaging: the strategy presets ship as package data, so ``selection=NAME`` works from a wheel.

The wheel (and the sdist) are built from a copy of the build inputs in a temporary folder, so a
stale ``build/`` in the checkout cannot hide a packaging error. The wheel is installed with
``pip --target`` into its own folder and imported from there in a subprocess that runs outside the
repository, with that folder first on ``PYTHONPATH`` (ahead of the editable install).
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import tarfile
import textwrap
import zipfile
from pathlib import Path

import pytest

from puma_lightning.cli.config_loader import strategies_dir

ROOT = Path(__file__).resolve().parents[1]
REPO_PRESETS = sorted(p.name for p in (ROOT / "strategies").glob("*.yaml"))
PKG_PRESETS = "puma_lightning/presets/strategies"
PIP_ENV = {**os.environ, "PIP_DISABLE_PIP_VERSION_CHECK": "1", "PIP_NO_INPUT": "1"}


def _run(cmd: list[str], **kw) -> subprocess.CompletedProcess:
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=120, **kw)
    assert proc.returncode == 0, f"{' '.join(map(str, cmd))} failed:\n{proc.stdout[-3000:]}\n{proc.stderr[-3000:]}"
    return proc


@pytest.fixture(scope="module")
def source(tmp_path_factory) -> Path:
    """The build inputs (top-level files + the package) copied out of the checkout."""
    src = tmp_path_factory.mktemp("src") / "puma_lightning_src"
    src.mkdir()
    for item in ROOT.iterdir():
        if item.is_file() and not item.is_symlink():
            shutil.copy2(item, src / item.name)
    shutil.copytree(ROOT / "puma_lightning", src / "puma_lightning",
                    ignore=shutil.ignore_patterns("__pycache__", "*.pyc"))
    return src


def test_top_level_strategies_is_the_packaged_folder():
    assert len(REPO_PRESETS) >= 2
    assert (ROOT / "strategies").resolve() == (ROOT / PKG_PRESETS).resolve() == Path(str(strategies_dir())).resolve()


def test_wheel_ships_presets_and_resolves_selection_in_isolation(source, tmp_path):
    wheels = tmp_path / "wheels"
    _run([sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "--no-index", "-q",
          "-w", str(wheels), str(source)], env=PIP_ENV)
    (wheel,) = wheels.glob("puma_lightning-*.whl")
    with zipfile.ZipFile(wheel) as zf:
        shipped = sorted(Path(n).name for n in zf.namelist() if n.startswith(PKG_PRESETS + "/") and n.endswith(".yaml"))
    assert shipped == REPO_PRESETS, f"wheel presets {shipped} != repository strategies/ {REPO_PRESETS}"

    site = tmp_path / "site"
    _run([sys.executable, "-m", "pip", "install", "--no-deps", "--no-index", "-q", "--target", str(site), str(wheel)],
         env=PIP_ENV)
    snippet = textwrap.dedent(f"""
        from pathlib import Path
        import puma_lightning
        from puma_lightning.cli.config_loader import ConfigError, load_config, strategy_names
        site = Path({str(site)!r}).resolve()
        assert site in Path(puma_lightning.__file__).resolve().parents, puma_lightning.__file__
        assert strategy_names() == {[n[:-5] for n in REPO_PRESETS]!r}, strategy_names()
        cfg = load_config(overrides=["selection=kmeans_fps"])
        assert cfg.selection.name == "kmeans_fps", cfg.selection
        try:
            load_config(overrides=["selection=no_such_strategy"])
        except ConfigError as exc:
            assert "available strategies" in str(exc) and "kmeans_fps" in str(exc), exc
        else:
            raise AssertionError("an unknown strategy name was accepted")
        print("ok", puma_lightning.__file__)
    """)
    outside = tmp_path / "elsewhere"
    outside.mkdir()
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "PYTHONHOME", "PYTHONSAFEPATH")}
    env["PYTHONPATH"] = str(site)
    proc = _run([sys.executable, "-c", snippet], cwd=outside, env=env)
    assert proc.stdout.startswith("ok ")


def test_sdist_ships_presets(source, tmp_path):
    dist = tmp_path / "dist"
    _run([sys.executable, "-c", "import sys; from setuptools import build_meta as b; print(b.build_sdist(sys.argv[1]))",
          str(dist)], cwd=source)
    (sdist,) = dist.glob("puma_lightning-*.tar.gz")
    with tarfile.open(sdist) as tf:
        shipped = sorted(Path(m.name).name for m in tf.getmembers()
                         if m.isfile() and f"/{PKG_PRESETS}/" in m.name and m.name.endswith(".yaml"))
    assert shipped == REPO_PRESETS, f"sdist presets {shipped} != repository strategies/ {REPO_PRESETS}"
