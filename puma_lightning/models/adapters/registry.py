"""Registry of migration adapters: each module in this folder registers its class by name."""

from __future__ import annotations

from typing import Any, Callable, TypeVar

import torch
from torch import nn

ADAPTERS: dict[str, type[nn.Module]] = {}
T = TypeVar("T", bound=type[nn.Module])


def register_adapter(name: str) -> Callable[[T], T]:
    """Class decorator adding an adapter under ``name``; duplicate names are an error."""

    def decorate(cls: T) -> T:
        if name in ADAPTERS:
            raise ValueError(f"adapter {name!r} is already registered by {ADAPTERS[name].__qualname__}")
        ADAPTERS[name] = cls
        return cls

    return decorate


def build_adapter(kind: str, source_dim: int, target_dim: int, hidden: int = 4096, dropout: float = 0.1) -> nn.Module:
    """Instantiate a registered adapter mapping ``[..., source_dim]`` to ``[..., target_dim]``."""
    if kind not in ADAPTERS:
        raise ValueError(f"unknown adapter {kind!r}; choose one of {sorted(ADAPTERS)}")
    return ADAPTERS[kind](source_dim, target_dim, hidden=hidden, dropout=dropout)


def linear_path_kinds() -> tuple[str, ...]:
    """Registered adapters that can start as a given linear map (their class defines ``set_linear``)."""
    return tuple(name for name, cls in ADAPTERS.items() if callable(getattr(cls, "set_linear", None)))


def init_as_linear(adapter: nn.Module, weight: torch.Tensor, bias: torch.Tensor | None = None) -> None:
    """Make ``adapter`` compute ``x @ weight + bias`` (``weight`` ``[d_s, d_t]``) before it trains.

    An adapter (or a wrapper around one, such as input standardisation) supports this by a ``set_linear(weight, bias)``
    method; ValueError for one without a linear path.
    """
    setter = getattr(adapter, "set_linear", None)
    if not callable(setter):
        raise ValueError(f"adapter {type(adapter).__name__} has no linear path to initialise; "
                         f"adapters with one: {', '.join(linear_path_kinds())}")
    setter(weight, torch.zeros(weight.shape[1]) if bias is None else bias)


def adapter_metadata(acfg: Any, source_bank: Any, target_lm: Any, output_scale: float = 1.0) -> dict[str, str]:
    """What a saved adapter file records so that ``migrate`` can rebuild and check it alone."""
    return {
        "kind": str(acfg.kind),
        "source_dim": str(source_bank.hidden_size),
        "target_dim": str(target_lm.hidden_size),
        "hidden": str(acfg.hidden),
        "dropout": str(acfg.dropout),
        "output_scale": repr(float(output_scale)),
        "input_norm": str(acfg.get("input_norm", "none")),
        "shrink": str(acfg.get("shrink", "none")),
        "source_model": str(source_bank.model_name),
        "source_fingerprint": str(source_bank.model_fingerprint),
        "target_model": str(target_lm.name),
        "target_fingerprint": str(target_lm.fingerprint),
    }
