"""Registry of user-selection strategies, their typed parameters, and the selection entry point.

A strategy picks a budget of users (from N users with one source soft prompt each) to train the
migration adapter on. Strategies register themselves by name with :func:`register_strategy`; a
config node such as ``{"name": "puma", "budget": 2000, "n_clusters": 15}`` is turned into a
strategy by :func:`build_strategy` (flat: every key but ``name`` and ``budget`` is a parameter) and
run by :func:`select_users`, which returns the users together with what was actually done.

Three keys of a node are not parameters: ``published_mode`` (optional; null or the published
``dataset.mode`` 1-10 the strategy reproduces, checked against the class's ``published_mode``, so a
preset cannot claim a mode it does not follow), ``seed`` (optional int) overrides the context's seed for
this selection only (sweeps vary it without touching the experiment seed that also fixes the data
subset and prompt init), and ``class: module.Class`` names an importable strategy class of the
user's own, which is imported and registered under the node's ``name`` (see
``docs/custom_strategy.md``). Each strategy declares the optional per-user statistics it reads in
its ``needs`` class attribute (``("loss",)``, ``("ffn_features",)``), so callers compute only those.
"""

from __future__ import annotations

import dataclasses
import importlib
import types
import typing
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any, ClassVar, Literal, Union

import numpy as np

STRATEGIES: dict[str, type[SelectionStrategy]] = {}
"""Registered strategy classes by lowercase name."""

OPTIONAL_STATS: tuple[str, ...] = ("loss", "ffn_features")
"""Per-user statistics a strategy may declare in ``needs`` (fields of :class:`SelectionContext`
that are None unless the caller computed them)."""

RESERVED_KEYS: tuple[str, ...] = ("name", "budget", "seed", "class", "published_mode")
"""Keys of a selection config node that are not strategy parameters."""

PUBLISHED_MODES: tuple[int, ...] = tuple(range(1, 11))
"""``dataset.mode`` values of the published code's ``get_train_indices`` (Kimagure7/Dont-Start-Over
9d85839, ``utils/datasets.py``) that select users; a preset's ``published_mode`` names one of them."""


@dataclass
class SelectionContext:
    """Everything a strategy may look at, for N users (row u describes user u)."""

    prompts: np.ndarray
    """float32 [N, D] flattened source soft prompts."""
    label_variance: np.ndarray
    """float [N] sample variance (ddof=1) of each user's training labels; 0 with < 2 rows."""
    train_counts: np.ndarray
    """int [N] number of training rows per user; users with 0 rows are selected last."""
    seed: int = 0
    """Seed of every random choice; the same context gives the same selection."""
    loss: np.ndarray | None = None
    """float [N] per-user task loss of the source model (loss-based strategies)."""
    ffn_features: np.ndarray | None = None
    """[N, F] per-user FFN activation features (ffn_* strategies)."""
    label_variance_pandas: np.ndarray | None = None
    """float [N] the variance as the published code's ``groupby('UserID')['rating'].var()`` computes it
    (Welford in row order, NaN with < 2 rows; :func:`~.published.pandas_group_variance`). Its last bits
    decide which quantile group a tied user joins, so ``allocation: faithful`` bins it when given (else
    ``label_variance`` with NaN for single-rating users)."""

    def __post_init__(self) -> None:
        self.prompts = np.ascontiguousarray(np.asarray(self.prompts, dtype=np.float32))
        if self.prompts.ndim != 2:
            raise ValueError(f"SelectionContext.prompts must be [N, D], got shape {self.prompts.shape}")
        n = self.prompts.shape[0]
        self.label_variance = np.asarray(self.label_variance, dtype=np.float64).reshape(-1)
        self.train_counts = np.asarray(self.train_counts).reshape(-1).astype(np.int64)
        for name in ("label_variance", "train_counts"):
            if getattr(self, name).shape[0] != n:
                raise ValueError(f"SelectionContext.{name} has {getattr(self, name).shape[0]} rows, prompts have {n}")
        for name in ("loss", "ffn_features", "label_variance_pandas"):
            value = getattr(self, name)
            if value is not None and np.asarray(value).shape[0] != n:
                raise ValueError(f"SelectionContext.{name} has {np.asarray(value).shape[0]} rows, prompts have {n}")
        self.seed = int(self.seed)

    @property
    def n_users(self) -> int:
        """Number of users N."""
        return int(self.prompts.shape[0])

    def require(self, name: str, strategy: str) -> np.ndarray:
        """Return the optional field ``name``, or raise a clear error when it was not provided."""
        value = getattr(self, name)
        if value is None:
            raise ValueError(f"selection strategy {strategy!r} needs SelectionContext.{name}, which is None")
        return np.asarray(value)

    def subset(self, users: np.ndarray) -> SelectionContext:
        """The context restricted to ``users`` (rows re-indexed 0..len(users)-1), same seed."""

        def take(a: np.ndarray | None) -> np.ndarray | None:
            return None if a is None else np.asarray(a)[users]

        return SelectionContext(
            prompts=self.prompts[users],
            label_variance=self.label_variance[users],
            train_counts=self.train_counts[users],
            seed=self.seed,
            loss=take(self.loss),
            ffn_features=take(self.ffn_features),
            label_variance_pandas=take(self.label_variance_pandas),
        )


@dataclass
class SelectionResult:
    """The selected users and a record of how they were selected."""

    users: np.ndarray
    """Sorted unique int64 user indices, ``min(budget, N)`` of them."""
    strategy: str
    """Registered name of the strategy that ran."""
    params: dict[str, Any]
    """Every parameter of the strategy, as used (defaults included)."""
    budget: int
    """Budget asked for."""
    info: dict[str, Any] = field(default_factory=dict)
    """Strategy-specific diagnostics (cluster sizes, picks per cluster, allocation, ...)."""
    seed: int | None = None
    """Seed the selection ran with (the node's ``seed`` if given, else the context's)."""


class SelectionStrategy:
    """Base class: subclasses set ``Params`` (a dataclass) and implement :meth:`_select`.

    :meth:`select` handles what every strategy shares: budget checks, ``budget >= N`` (all users),
    and users without training rows (never selected while the budget is below the number of users
    with rows; otherwise all users with rows plus a seeded random draw of the others). Strategies
    only ever see the users with rows and a budget below their count.
    """

    name: ClassVar[str] = ""
    needs: ClassVar[tuple[str, ...]] = ()
    """Optional per-user statistics (names in :data:`OPTIONAL_STATS`) this strategy reads."""
    published_mode: ClassVar[int | None] = None
    """The published ``dataset.mode`` (:data:`PUBLISHED_MODES`) whose function and parameters this
    strategy's defaults reproduce; None for a strategy of our own."""

    @dataclass
    class Params:
        """No parameters."""

    def __init__(self, params: Any | None = None) -> None:
        self.params = params if params is not None else self.Params()
        if not isinstance(self.params, self.Params):
            raise TypeError(f"{type(self).__name__} expects {self.Params.__qualname__}, got {type(params).__name__}")

    def select(self, ctx: SelectionContext, budget: int) -> np.ndarray:
        """Sorted unique int64 indices of ``min(budget, N)`` users, deterministic for ``ctx.seed``."""
        return self.select_with_info(ctx, budget)[0]

    def select_with_info(self, ctx: SelectionContext, budget: int) -> tuple[np.ndarray, dict[str, Any]]:
        """Like :meth:`select`, also returning the strategy's diagnostics."""
        if isinstance(budget, bool) or not isinstance(budget, (int, np.integer)) or budget < 0:
            raise ValueError(f"selection budget must be a non-negative integer, got {budget!r}")
        budget = int(budget)
        n = ctx.n_users
        eligible = np.flatnonzero(ctx.train_counts > 0)
        info: dict[str, Any] = {"n_users": n, "n_users_with_rows": int(eligible.size)}
        if budget >= n:
            info["all_users"] = True
            return np.arange(n, dtype=np.int64), info
        if budget == 0:
            return np.empty(0, dtype=np.int64), info
        if budget >= eligible.size:
            info["all_users_with_rows"] = True
            # Every user with rows, then a seeded uniform draw among the users without rows.
            others = np.flatnonzero(ctx.train_counts <= 0)
            rng = np.random.default_rng([ctx.seed, 0x5E1])
            extra = rng.choice(others, size=budget - eligible.size, replace=False)
            info["n_users_without_rows_selected"] = int(extra.size)
            return np.sort(np.concatenate([eligible, extra])).astype(np.int64), info
        for stat in self.needs:
            ctx.require(stat, self.name)
        sub = ctx if eligible.size == n else ctx.subset(eligible)
        local, own = self._select(sub, budget)
        local = np.asarray(local, dtype=np.int64)
        if local.size != budget or np.unique(local).size != budget:
            got = np.unique(local).size
            raise RuntimeError(f"strategy {self.name!r} returned {got} unique users, expected {budget}")
        info.update(own)
        return np.sort(eligible[local]).astype(np.int64), info

    def _select(self, ctx: SelectionContext, budget: int) -> tuple[np.ndarray, dict[str, Any]]:
        """Pick exactly ``budget`` (< N) distinct users of ``ctx`` (all have training rows)."""
        raise NotImplementedError


def register_strategy(name: str):
    """Class decorator registering a :class:`SelectionStrategy` subclass under ``name``."""
    if not isinstance(name, str) or not name or name != name.lower():
        raise ValueError(f"strategy names must be non-empty lowercase strings, got {name!r}")

    def decorate(cls: type[SelectionStrategy]) -> type[SelectionStrategy]:
        if name in STRATEGIES:
            raise ValueError(f"selection strategy {name!r} is already registered ({STRATEGIES[name].__qualname__})")
        if not (isinstance(cls, type) and issubclass(cls, SelectionStrategy)):
            raise TypeError(f"@register_strategy({name!r}) must decorate a SelectionStrategy subclass")
        if not dataclasses.is_dataclass(cls.Params):
            raise TypeError(f"{cls.__qualname__}.Params must be a dataclass")
        unknown = [s for s in tuple(getattr(cls, "needs", ())) if s not in OPTIONAL_STATS]
        if unknown:
            raise ValueError(f"{cls.__qualname__}.needs names unknown statistics {unknown}; valid: {', '.join(OPTIONAL_STATS)}")
        mode = getattr(cls, "published_mode", None)
        if mode is not None and mode not in PUBLISHED_MODES:
            raise ValueError(f"{cls.__qualname__}.published_mode must be None or one of {PUBLISHED_MODES}, got {mode!r}")
        reserved = [f.name for f in dataclasses.fields(cls.Params) if f.name in RESERVED_KEYS]
        if reserved:
            raise ValueError(f"{cls.__qualname__}.Params may not define reserved keys {reserved}")
        cls.name = name
        STRATEGIES[name] = cls
        return cls

    return decorate


def _type_name(tp: Any) -> str:
    """Readable name of a type annotation, for error messages."""
    if typing.get_origin(tp) is Literal:
        return "one of " + ", ".join(repr(a) for a in typing.get_args(tp))
    if typing.get_origin(tp) in (Union, types.UnionType):
        return " or ".join(_type_name(a) for a in typing.get_args(tp))
    return "None" if tp is type(None) else getattr(tp, "__name__", str(tp))


def _coerce(value: Any, tp: Any) -> tuple[bool, Any]:
    """Check ``value`` against annotation ``tp``; return (ok, value converted to the field type)."""
    origin = typing.get_origin(tp)
    if origin is Literal:
        return (value in typing.get_args(tp) and not isinstance(value, bool)), value
    if origin in (Union, types.UnionType):
        for arg in typing.get_args(tp):
            ok, converted = _coerce(value, arg)
            if ok:
                return True, converted
        return False, value
    if tp is type(None):
        return value is None, value
    if tp is bool:
        return isinstance(value, (bool, np.bool_)), bool(value) if isinstance(value, (bool, np.bool_)) else value
    if tp is int:
        ok = isinstance(value, (int, np.integer)) and not isinstance(value, (bool, np.bool_))
        return ok, int(value) if ok else value
    if tp is float:
        ok = isinstance(value, (int, float, np.integer, np.floating)) and not isinstance(value, (bool, np.bool_))
        return ok, float(value) if ok else value
    if tp is str:
        return isinstance(value, str), value
    return True, value  # annotations without a checker (e.g. tuples) are passed through


def parse_params(cls: type[SelectionStrategy], values: Mapping[str, Any]) -> Any:
    """Build ``cls.Params`` from ``values``, with one-line errors for unknown keys and wrong types."""
    fields = {f.name: f for f in dataclasses.fields(cls.Params)}
    hints = typing.get_type_hints(cls.Params)
    kwargs: dict[str, Any] = {}
    for key, value in values.items():
        if key not in fields:
            valid = ", ".join(sorted(fields)) or "(none)"
            raise ValueError(f"unknown parameter {key!r} for selection strategy {cls.name!r}; valid parameters: {valid}")
        ok, converted = _coerce(value, hints[key])
        if not ok:
            raise ValueError(
                f"parameter {key!r} of selection strategy {cls.name!r} must be {_type_name(hints[key])}, got {value!r}"
            )
        kwargs[key] = converted
    return cls.Params(**kwargs)


def _plain(node: Mapping[str, Any]) -> dict[str, Any]:
    """A plain dict from a mapping (OmegaConf DictConfig included, interpolations resolved)."""
    try:
        from omegaconf import DictConfig, OmegaConf  # noqa: PLC0415

        if isinstance(node, DictConfig):
            return dict(OmegaConf.to_container(node, resolve=True))  # type: ignore[arg-type]
    except ImportError:  # pragma: no cover
        pass
    if not isinstance(node, Mapping):
        raise TypeError(f"selection config must be a mapping, got {type(node).__name__}")
    return dict(node)


def load_strategy_class(path: str, name: str | None = None) -> type[SelectionStrategy]:
    """Import ``module.Class`` (or ``module:Class``) and make sure it is a registered strategy.

    A class already registered (e.g. by ``@register_strategy`` on import) is returned as is; its
    registered name must equal ``name`` when one is given. Otherwise it is registered under
    ``name`` (required then; an existing strategy of that name is a duplicate and rejected).
    """
    if not isinstance(path, str) or not path.strip():
        raise ValueError(f"selection 'class' must be 'module.ClassName', got {path!r}")
    module_name, sep, attr = path.strip().replace(":", ".").rpartition(".")
    if not sep or not module_name or not attr:
        raise ValueError(f"selection 'class' must be 'module.ClassName', got {path!r}")
    try:
        module = importlib.import_module(module_name)
    except ImportError as exc:
        raise ValueError(f"selection class {path!r}: cannot import module {module_name!r} ({exc}); is it on sys.path/PYTHONPATH?") from None
    cls = getattr(module, attr, None)
    if not (isinstance(cls, type) and issubclass(cls, SelectionStrategy)):
        raise ValueError(f"selection class {path!r}: {attr!r} in {module_name!r} is not a SelectionStrategy subclass")
    registered = cls.name if STRATEGIES.get(cls.name) is cls else None
    if registered is not None:
        if name is not None and name.lower() != registered:
            raise ValueError(f"selection class {path!r} is registered as {registered!r}, not {name!r}")
        return cls
    if name is None:
        raise ValueError(f"selection class {path!r} needs a 'name' to be registered under")
    register_strategy(name.lower())(cls)
    return cls


def strategy_class(node: Mapping[str, Any]) -> type[SelectionStrategy]:
    """The strategy class a config node names (imports and registers ``class:`` if given)."""
    values = _plain(node)
    name, path = values.get("name"), values.get("class")
    if path is not None:
        return load_strategy_class(path, name if isinstance(name, str) else None)
    if not isinstance(name, str) or name.lower() not in STRATEGIES:
        raise ValueError(f"unknown selection strategy {name!r}; valid strategies: {', '.join(sorted(STRATEGIES))}")
    return STRATEGIES[name.lower()]


def _node_seed(values: Mapping[str, Any]) -> int | None:
    """The node's ``seed`` override (None when absent), checked to be an integer."""
    seed = values.get("seed")
    if seed is None:
        return None
    if isinstance(seed, (bool, np.bool_)) or not isinstance(seed, (int, np.integer)):
        raise ValueError(f"selection 'seed' must be an integer or null, got {seed!r}")
    return int(seed)


def _check_published_mode(values: Mapping[str, Any], cls: type[SelectionStrategy]) -> None:
    """A node's ``published_mode`` (optional) must be null or the mode the strategy reproduces."""
    if "published_mode" not in values:
        return
    mode = values["published_mode"]
    if mode is not None and (isinstance(mode, (bool, np.bool_)) or not isinstance(mode, (int, np.integer))
                             or int(mode) not in PUBLISHED_MODES):
        raise ValueError(f"selection 'published_mode' must be null or one of {PUBLISHED_MODES[0]}..{PUBLISHED_MODES[-1]}"
                         f" (the published get_train_indices modes), got {mode!r}")
    if mode != cls.published_mode:
        says = "none" if cls.published_mode is None else f"mode {cls.published_mode}"
        raise ValueError(f"selection 'published_mode' is {mode!r} but strategy {cls.name!r} reproduces {says}"
                         f" (published_mode: {cls.published_mode if cls.published_mode is not None else 'null'})")


def build_strategy(node: Mapping[str, Any]) -> SelectionStrategy:
    """Instantiate the strategy described by a flat config node (``budget`` and ``seed`` are ignored here)."""
    values = _plain(node)
    cls = strategy_class(values)
    _node_seed(values)
    _check_published_mode(values, cls)
    params = {k: v for k, v in values.items() if k not in RESERVED_KEYS}
    return cls(parse_params(cls, params))


def select_users(node: Mapping[str, Any], ctx: SelectionContext, budget: int | None = None) -> SelectionResult:
    """Select users as described by ``node``; ``budget`` (argument) overrides ``node["budget"]``.

    ``node["seed"]``, when set, replaces ``ctx.seed`` for this selection.
    """
    values = _plain(node)
    strategy = build_strategy(values)
    seed = _node_seed(values)
    if seed is not None and seed != ctx.seed:
        ctx = dataclasses.replace(ctx, seed=seed)
    if budget is None:
        budget = values.get("budget")
        if budget is None:
            raise ValueError("selection needs a budget: set 'budget' in the selection config or pass budget=")
    users, info = strategy.select_with_info(ctx, budget)
    return SelectionResult(
        users=users,
        strategy=strategy.name,
        params=dataclasses.asdict(strategy.params),
        budget=int(budget),
        info=info,
        seed=ctx.seed,
    )
