"""Arguments of single commands: the ``key=value`` tokens that belong to the command being run, not to the config.

What only one command reads (the bank it scores, the file it writes) is a field of a small dataclass in that command's
module, built from the shared fields here, so a field several commands take is written once. A field's docstring is
its ``--help`` text, its type hint what its value parses to, its metadata what the value must also be (``choices``, a
``minimum``; ``path``, or ``input``: a path that ``out`` may never replace). Arguments never enter the config: they are not in
``run_dir/config.yaml`` and no stage's key can depend on them.
"""

from __future__ import annotations

import typing
from dataclasses import dataclass, field, fields
from typing import Any, Optional, Sequence, TypeVar

from omegaconf import OmegaConf
from omegaconf.errors import OmegaConfBaseException

from puma_lightning.errors import PumaError

MODEL_SIDES = ("source", "target")
"""``model`` choices: the section of the config whose model a one-model command uses."""
EVAL_SPLITS = ("valid", "test")
"""``split`` choices of ``test``."""
PATH = {"path": True}
"""Field metadata of an argument naming a path (``--help`` and the errors say so)."""
INPUT = {**PATH, "input": True}
"""Field metadata of an argument naming an input path: ``out`` may not be it, lie inside it or hold it."""
POSITIVE = {"minimum": 1}
"""Field metadata of a count that must be at least 1 (or null where the type allows it)."""
CONFIG_INPUTS = ("source_dir", "source.bank")
"""Config keys naming inputs that ``out`` may never replace either (with the config files themselves)."""

A = TypeVar("A", bound="Arguments")


class ArgumentError(PumaError):
    """A bad command argument, phrased as one line that names the key and what it takes."""


@dataclass
class Arguments:
    """A command's own ``key=value`` arguments: none here; a command that takes some subclasses this."""

    def check(self, cfg: Any, config_files: Sequence[str]) -> None:
        """Refuse, before the run directory is claimed, what no work should start with (nothing by default)."""


@dataclass
class BankArgument(Arguments):
    bank: Optional[str] = field(default=None, metadata=INPUT)
    """Path of the prompt bank to read: a bank folder written by ``fit``, ``pretrain``, ``migrate`` or ``bank import``
    (``migrate`` reads ``source.bank`` when it is not given)."""


@dataclass
class ModelArgument(Arguments):
    model: str = field(default="target", metadata={"choices": MODEL_SIDES})
    """Which model the command uses, ``source`` or ``target`` (that section of the config); ``pretrain``: ``source``
    trains the source prompts, ``target`` retrains every prompt on the target (full retraining)."""


@dataclass
class WritesOutput(Arguments):
    """Arguments of a command that writes ``out`` (a field its subclass declares)."""

    def check(self, cfg: Any, config_files: Sequence[str]) -> None:
        """Refuse an ``out`` that is one of the command's inputs (or inside one, or holding one) before any work."""
        from puma_lightning.io.ownership import check_not_an_input

        out = getattr(self, "out", None)
        if not out:
            return
        inputs = {f.name: getattr(self, f.name) for f in fields(self) if f.metadata.get("input")}
        inputs.update({key: OmegaConf.select(cfg, key) for key in CONFIG_INPUTS})
        inputs.update({f"--config #{i + 1}": path for i, path in enumerate(config_files)})
        check_not_an_input(out, inputs)


def field_types(cls: type) -> dict[str, Any]:
    """``{field: type hint}`` of an arguments dataclass (the hints are strings until resolved here)."""
    hints = typing.get_type_hints(cls)
    return {f.name: hints[f.name] for f in fields(cls)}


def expected(cls: type, name: str) -> str:
    """What a value of argument ``name`` must be, in words: ``an integer >= 1 or null``, ``one of: source, target``."""
    meta = next(f.metadata for f in fields(cls) if f.name == name)
    hint = field_types(cls)[name]
    optional = type(None) in typing.get_args(hint)
    base = next((t for t in typing.get_args(hint) if t is not type(None)), hint)
    if "choices" in meta:
        what = "one of: " + ", ".join(meta["choices"])
    elif base is bool:
        what = "true or false"
    elif base is int:
        what = "an integer" + (f" >= {meta['minimum']}" if "minimum" in meta else "")
    else:
        what = "a path" if meta.get("path") else "a string"
    return what + (" or null" if optional else "")


def parse_arguments(cls: type[A], tokens: Sequence[str]) -> A:
    """``cls`` filled from ``key=value`` tokens naming its fields (values read as config values are: ``true``, ``null``,
    quoting), typed and checked; a bad value is one :class:`ArgumentError` line naming the key and what it takes."""
    node = OmegaConf.structured(cls)
    for token in tokens:
        key, value = token.split("=", 1)
        try:
            node.merge_with(OmegaConf.from_dotlist([token]))
        except OmegaConfBaseException:
            raise ArgumentError(f"'{key}' is {value!r}; expected {expected(cls, key)}") from None
    args = OmegaConf.to_object(node)
    for f in fields(args):
        value = getattr(args, f.name)
        choices, minimum = f.metadata.get("choices"), f.metadata.get("minimum")
        if (choices is not None and value not in choices) or (minimum is not None and value is not None and value < minimum):
            raise ArgumentError(f"'{f.name}' is {value!r}; expected {expected(cls, f.name)}")
    return args  # type: ignore[return-value]
