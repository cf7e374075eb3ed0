"""What a lever is: a change to how prompts or the adapter train, owning its config options and the hooks it acts through.

A lever is one file of :mod:`puma_lightning.pipeline.levers` (or of a plugin) that subclasses :class:`Lever` and
registers an instance (:func:`~puma_lightning.pipeline.levers.registry.register_lever`). It declares

- ``options``: the config keys it owns, each with its allowed values (one list per key: ``--help``, the config
  errors and the loader's choice check all read it), the values that fit ratings only (refused when the config
  loads for a click task) or clicks only (refused for a rating task) and, for an option whose best value depends on the task, what its value ``auto`` stands
  for (resolved when the config loads, before anything reads or hashes it);
- ``section``: for a lever of your own, a dataclass of its settings, read from ``levers.<name>`` in the config
  (the built-in levers keep their historical keys under ``prompt.*`` and ``adapter.*``);
- ``validate``: any further check of its settings when the config loads;
- the hooks it acts through (the base class's do nothing). The pipeline calls each hook on every registered lever
  (:mod:`puma_lightning.pipeline.levers.hooks`), so a lever reads its own settings and stays inert when they say off.

Hooks: ``row_offset`` (an offset added to every row's output), ``pair_offset`` (the same for scored pairs),
``reads_hidden`` (whether a new head reads the hidden state), ``start_head`` (set up a head where a stage starts it
on a model), ``before_train`` (work on the module before it trains; returns a record), ``adapter_init`` (a
closed-form start of PUMA's adapter), ``choose_start`` (replace that start by one chosen on validation),
``wrap_adapter`` (wrap the adapter before it trains), ``after_adapter_fit``
(change the trained adapter before it maps every prompt), ``extra_rows`` (extra training rows for the adapter).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Callable

if TYPE_CHECKING:
    import numpy as np
    import torch

    from puma_lightning.data.table import InteractionTable


@dataclass(frozen=True)
class Option:
    """A config key a lever owns: ``key`` (a dotted path), its allowed ``values`` (empty: any value of the key's type),
    those of them that fit ratings only (``rating_only``) or clicks only (``click_only``) and, where ``values`` has ``auto``, the function ``auto``
    that names the value ``auto`` stands for in a config (by its ``data.task``: a rating-only value cannot be a
    default on a click task)."""

    key: str
    values: tuple[str, ...] = ()
    rating_only: tuple[str, ...] = ()
    auto: Callable[[Any], str] | None = None
    click_only: tuple[str, ...] = ()

    def __post_init__(self) -> None:
        for kind, listed in (("rating-only", self.rating_only), ("click-only", self.click_only)):
            stray = [v for v in listed if v not in self.values]
            if stray:
                raise ValueError(f"option {self.key!r}: {kind} values {stray} are not among its values {list(self.values)}")
        both = sorted(set(self.rating_only) & set(self.click_only))
        if both:
            raise ValueError(f"option {self.key!r}: values {both} cannot be both rating-only and click-only")
        if ("auto" in self.values) != (self.auto is not None):
            raise ValueError(f"option {self.key!r}: the value 'auto' and the function 'auto' that resolves it go together")

    def resolved(self, cfg: Any, value: Any) -> Any:
        """``value``, or where it is ``auto`` the value it stands for in ``cfg`` (one of ``values``, never ``auto``)."""
        if value != "auto" or self.auto is None:
            return value
        chosen = self.auto(cfg)
        if chosen == "auto" or chosen not in self.values:
            raise ValueError(f"option {self.key!r}: 'auto' resolved to {chosen!r}, not one of {list(self.values)}")
        return chosen


class Lever:
    """A lever: its ``name``, the ``options`` it owns, an optional ``section`` dataclass (``levers.<name>``), its
    validation and its hooks. Every hook's default does nothing, so a lever implements only those it acts through."""

    name: str = ""
    options: tuple[Option, ...] = ()
    section: type | None = None
    description: str = ""

    def settings(self, cfg: Any) -> Any:
        """This lever's own section ``levers.<name>`` of ``cfg`` (a lever with a ``section``)."""
        return cfg.levers[self.name]

    def validate(self, cfg: Any) -> None:
        """Refuse settings the option lists cannot (raise ``ValueError`` with one line naming the key)."""

    def row_offset(self, cfg: Any, table: "InteractionTable") -> "np.ndarray | None":
        """float32 ``[len(table)]``: added to every row's model output (None: nothing)."""
        return None

    def pair_offset(self, cfg: Any, fitted_on: "InteractionTable", pairs: "InteractionTable") -> "np.ndarray | None":
        """:meth:`row_offset` for the rows of ``pairs`` (users by id, items by index into ``fitted_on``'s items), fitted
        on ``fitted_on`` (``predict``, the teacher's rows)."""
        return None

    def reads_hidden(self, cfg: Any) -> bool:
        """Whether a new head reads the model's hidden state at the answer position."""
        return False

    def start_head(self, cfg: Any, head: Any, lm: Any, table: "InteractionTable",
                   start: Callable[[], "torch.Tensor"]) -> None:
        """Set up ``head`` where a stage starts it on ``lm`` for a new bank; ``start()``: the bank's prompts ``[N, l, d]``
        the stage starts from (computed only when called)."""

    def before_train(self, cfg: Any, module: Any, datamodule: Any) -> dict[str, Any] | None:
        """Work on ``module`` before it trains on ``datamodule`` (a closed-form fit); its record (with ``seconds``, counted
        in the stage's cost), keyed by :attr:`record_name` in the stage's record, or None."""
        return None

    record_name: str = ""
    """The key of :meth:`before_train`'s record in a stage's record (default: the lever's name)."""

    def adapter_init(self, exp: Any, source_bank: Any) -> Any:
        """A closed-form start of PUMA's adapter (with ``weight`` ``[d_s, d_t]`` and ``seconds``), or None."""
        return None

    def choose_start(self, cfg: Any, start_map: Any, judge: Callable[[Any], dict]) -> tuple[Any, dict[str, Any]] | None:
        """Before PUMA's adapter trains, replace ``start_map`` (``adapter_init``'s, or None) by one chosen on validation:
        ``judge(map)`` gives the ``user``, ``prediction`` and ``label`` per validation row of every unselected user when
        the adapter starts at ``map``. ``(map, record)`` (with ``seconds``, counted in PUMA's cost), or None."""
        return None

    def wrap_adapter(self, cfg: Any, adapter: Any, source: "torch.Tensor") -> Any:
        """``adapter`` as PUMA trains it, given every user's source prompts ``source`` (default: unchanged)."""
        return adapter

    def after_adapter_fit(self, cfg: Any, module: Any, validation_rows: Callable[[Any], dict]) -> dict[str, Any] | None:
        """Work on PUMA's trained ``module`` before it maps every prompt (replace ``module.adapter`` with a wrapper that
        is saved with it); ``validation_rows(module)``: its ``user``, ``prediction`` and ``label`` (arrays) per
        validation row of every unselected user (up to ``adapter.validation_max_users``). Its record (with ``seconds``, counted in PUMA's cost), keyed by the lever's name in
        the stage's record, or None."""
        return None

    def extra_rows(self, exp: Any, users: "np.ndarray") -> tuple[Any, "InteractionTable", "np.ndarray | None"] | None:
        """The adapter's training table grown by extra rows for the selected ``users``: ``(teacher, table, offsets)``
        (what the task needs to weight them, the grown table, every row's offset), or None."""
        return None
