"""What machine a figure was measured on: CPU model, vector ISA, threads, GPU and library versions.

Speed on a CPU depends on more than its core count: on an AVX2-only CPU bf16 matrix products are
tens of times slower than fp32, on one with AVX-512 BF16 or AMX they are faster. Every benchmark
prints :func:`describe_machine` with its figures, and the automatic dtype choice keys its cached
measurement on :func:`machine_key`.
"""

from __future__ import annotations

import importlib.metadata
import os
import platform
from functools import lru_cache
from typing import Any

import torch

ISA_ENVIRONMENT = ("ATEN_CPU_CAPABILITY", "ONEDNN_MAX_CPU_ISA", "DNNL_MAX_CPU_ISA")
"""Environment variables that cap the kernels PyTorch and oneDNN dispatch to (and so change speed)."""


@lru_cache(maxsize=1)
def cpu_model() -> str:
    """The CPU's marketing name (``/proc/cpuinfo`` on Linux, else :func:`platform.processor`)."""
    try:
        with open("/proc/cpuinfo", encoding="utf-8", errors="replace") as fh:
            for line in fh:
                if line.lower().startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine() or "unknown CPU"


def cpu_capability() -> str:
    """The vector ISA PyTorch dispatches CPU kernels to (``AVX2``, ``AVX512``, ``DEFAULT``...)."""
    getter = getattr(torch.backends.cpu, "get_cpu_capability", None)
    return str(getter()) if callable(getter) else "unknown"


def library_version(package: str) -> str:
    """Installed version of a distribution, or ``-`` when it is not installed."""
    try:
        return importlib.metadata.version(package)
    except importlib.metadata.PackageNotFoundError:
        return "-"


def gpu_name() -> str | None:
    """Name of CUDA device 0, or None without a usable GPU."""
    if torch.cuda.is_available():
        return torch.cuda.get_device_name(0)
    return None


def isa_overrides() -> dict[str, str]:
    """The ISA-capping environment variables that are set (see :data:`ISA_ENVIRONMENT`)."""
    return {k: os.environ[k] for k in ISA_ENVIRONMENT if os.environ.get(k)}


def machine_info() -> dict[str, str]:
    """CPU, capability, threads, GPU and library versions, as strings."""
    info = {
        "cpu": cpu_model(),
        "capability": cpu_capability(),
        "threads": str(torch.get_num_threads()),
        "gpu": gpu_name() or "none",
        "python": platform.python_version(),
        "torch": torch.__version__,
        "transformers": library_version("transformers"),
        "lightning": library_version("lightning"),
    }
    info.update({k.lower(): v for k, v in isa_overrides().items()})
    return info


def describe_machine(dtype: str | None = None) -> str:
    """One line naming the machine (and the compute dtype, when given) for a printed figure."""
    info = machine_info()
    parts = [f"CPU {info['cpu']} ({info['capability']}, {info['threads']} threads)", f"GPU {info['gpu']}"]
    if dtype:
        parts.append(f"dtype {dtype}")
    parts.append(f"torch {info['torch']}, transformers {info['transformers']}, lightning {info['lightning']}, "
                 f"python {info['python']}")
    extra = isa_overrides()
    if extra:
        parts.append(" ".join(f"{k}={v}" for k, v in extra.items()))
    return "machine: " + "; ".join(parts)


def machine_key() -> dict[str, str]:
    """What a CPU speed measurement depends on: CPU model, capability, threads, torch and ISA caps."""
    return {"cpu": cpu_model(), "capability": cpu_capability(), "threads": str(torch.get_num_threads()),
            "torch": torch.__version__, **isa_overrides()}


def dtype_name(dtype: Any) -> str:
    """``torch.bfloat16`` -> ``bfloat16``."""
    return str(dtype).replace("torch.", "")


def machine_record(dtype: str | None) -> dict[str, str | None]:
    """:func:`machine_info` plus the compute dtype (None when no model was loaded), for a results file."""
    return {**machine_info(), "dtype": dtype}


class BackboneDtypes:
    """The compute dtype of every backbone the watched Experiments load (model name -> dtype), for a benchmark's
    :func:`describe_machine` line and :func:`machine_record`.

    Stages reused from an earlier run load no model, so their dtype is not seen here.
    """

    def __init__(self) -> None:
        self.by_model: dict[str, str] = {}

    def watch(self, exp: Any) -> Any:
        """Record the dtype of each backbone ``exp`` (an Experiment) hands out; returns ``exp``."""
        original = exp.backbone

        def backbone(which: str) -> Any:
            lm = original(which)
            self.by_model[str(exp.cfg[which].name)] = dtype_name(lm.dtype)
            return lm

        exp.backbone = backbone  # this instance only
        return exp

    def text(self) -> str | None:
        """One dtype when all backbones agree, else ``model dtype`` per model; None when none was loaded."""
        kinds = set(self.by_model.values())
        if len(kinds) <= 1:
            return next(iter(kinds), None)
        return ", ".join(f"{m} {d}" for m, d in self.by_model.items())
