"""Load a frozen backbone LLM and its tokenizer by name, folder or hub id.

Resolution order for ``name_or_path``:

1. a tiny in-process model name (``tiny-llama``, ``tiny-gemma3``, ``tiny-qwen2``);
2. a packaged real model name (``smollm2-135m``, ``gemma3-270m``), converted once into the cache;
3. an existing local folder with a ``transformers`` checkpoint;
4. a hub id, through ``from_pretrained`` (needs network or a filled HF cache).

The model comes back in eval mode with every parameter frozen, the tokenizer pads on the right and
has a pad token, and a ``fingerprint`` identifies the checkpoint (config + first embedding rows) so
that prompts trained on one checkpoint are never silently used with another.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from puma_lightning.models.dtype_choice import DTYPES, DtypeChoice, choose_dtype
from puma_lightning.models.packaged import default_cache_dir, ensure_packaged_model, is_packaged_model
from puma_lightning.models.tiny import build_tiny_model, is_tiny_model

log = logging.getLogger(__name__)

# config keys that describe how a checkpoint was loaded, not what it is
_VOLATILE_CONFIG_KEYS = {
    "_name_or_path",
    "name_or_path",
    "dtype",
    "torch_dtype",
    "transformers_version",
    "_attn_implementation",
    "_attn_implementation_internal",
    "_attn_implementation_autoset",
    "_experts_implementation",
    "use_cache",
    "quantization_config",
    "_commit_hash",
}


@dataclass
class LoadedBackbone:
    """A frozen causal LM with its tokenizer and identity."""

    model: Any
    """The ``transformers`` causal LM (eval mode, no parameter requires grad)."""
    tokenizer: Any
    """Its tokenizer (fast), padding on the right, with a pad token."""
    name: str
    """The name or path it was loaded from."""
    fingerprint: str
    """Short sha256 of the config and the first embedding rows: differs between checkpoints."""
    hidden_size: int
    """Width of the input embeddings (``d`` of a soft prompt)."""
    dtype_choice: DtypeChoice
    """The compute dtype and why it was chosen (``dtype: auto`` measures; see :mod:`.dtype_choice`)."""


def _clean_config(obj: Any) -> Any:
    """Drop load-time keys recursively (nested text configs carry them too)."""
    if isinstance(obj, dict):
        return {k: _clean_config(v) for k, v in obj.items() if k not in _VOLATILE_CONFIG_KEYS}
    if isinstance(obj, (list, tuple)):
        return [_clean_config(v) for v in obj]
    return obj


def model_fingerprint(model: Any) -> str:
    """Short sha256 (16 hex) of the model config (sorted keys) and its first 16 embedding rows.

    The rows are hashed after rounding to bfloat16, so one checkpoint loaded in float32 or in
    bfloat16 has one fingerprint, while two checkpoints of one architecture differ.
    """
    cfg = _clean_config(model.config.to_dict())
    digest = hashlib.sha256(json.dumps(cfg, sort_keys=True, default=str).encode("utf-8"))
    weight = model.get_input_embeddings().weight
    rows = weight[:16].detach().to("cpu", torch.bfloat16).view(torch.int16).numpy().tobytes()
    digest.update(rows)
    return digest.hexdigest()[:16]


def hidden_size_of(model: Any) -> int:
    """Input-embedding width of a causal LM (text config for multimodal wrappers)."""
    return int(model.get_input_embeddings().weight.shape[1])


def ensure_pad_token(tokenizer: Any) -> None:
    """Give the tokenizer a pad token (eos, else unk, else bos) without adding tokens, pad right."""
    if tokenizer.pad_token is None:
        for attr in ("eos_token", "unk_token", "bos_token"):
            tok = getattr(tokenizer, attr, None)
            if tok is not None:
                tokenizer.pad_token = tok
                break
        else:
            raise ValueError(
                f"tokenizer {type(tokenizer).__name__} has no pad, eos, unk or bos token to pad with"
            )
    tokenizer.padding_side = "right"


def freeze_model(model: Any) -> Any:
    """Eval mode and ``requires_grad=False`` on every parameter."""
    model.eval()
    for p in model.parameters():
        p.requires_grad_(False)
    return model


def _mlp_shape(source: str, trust_remote_code: bool, local_files_only: bool = False) -> tuple[int, int]:
    """(hidden, intermediate) width of a checkpoint, read from its config alone (no weights loaded)."""
    from transformers import AutoConfig

    from puma_lightning.models.prefix_cache import text_config

    text = text_config(AutoConfig.from_pretrained(source, trust_remote_code=trust_remote_code, local_files_only=local_files_only))
    hidden = int(getattr(text, "hidden_size", 0) or getattr(text, "n_embd", 0) or 1024)
    intermediate = int(getattr(text, "intermediate_size", 0) or getattr(text, "n_inner", 0) or 4 * hidden)
    return hidden, intermediate


def _looks_like_path(name: str) -> bool:
    return name.startswith(("/", "./", "../", "~")) or "\\" in name or name.count("/") > 1


def _offline() -> bool:
    """``HF_HUB_OFFLINE`` / ``TRANSFORMERS_OFFLINE`` read now (not at import), to skip network retries."""
    return any(os.environ.get(v, "").strip().lower() in {"1", "true", "yes", "on"} for v in ("HF_HUB_OFFLINE", "TRANSFORMERS_OFFLINE"))


def _from_pretrained(
    source: str, dtype: torch.dtype, trust_remote_code: bool, local_files_only: bool = False
) -> tuple[Any, Any]:
    from transformers import AutoModelForCausalLM, AutoTokenizer

    kw = {"trust_remote_code": trust_remote_code, "local_files_only": local_files_only}
    tokenizer = AutoTokenizer.from_pretrained(source, **kw)
    model = AutoModelForCausalLM.from_pretrained(source, dtype=dtype, **kw)
    return model, tokenizer


def model_source(name: str, cache_dir: str | Path | None = None) -> tuple[str, bool]:
    """Where a model named ``name`` is read from, and whether that is a hub id: a tiny name as itself, a packaged name's
    converted folder (converted into the cache once), a local folder; a path that does not exist is an error."""
    if is_tiny_model(name):
        return name, False
    if is_packaged_model(name):
        return str(ensure_packaged_model(name, cache_dir)), False
    if Path(name).expanduser().is_dir():
        return str(Path(name).expanduser()), False
    if _looks_like_path(name) or Path(name).expanduser().exists():
        raise FileNotFoundError(f"model folder {name!r} does not exist (or is not a folder)")
    return name, True


def load_backbone(
    name_or_path: str,
    dtype: str = "auto",
    cache_dir: str | Path | None = None,
    trust_remote_code: bool = False,
    device: str = "cpu",
) -> LoadedBackbone:
    """Load a frozen causal LM and its tokenizer (tiny name, packaged name, local folder or hub id).

    ``dtype``: "float32", "bfloat16" or "auto" (float32 for tiny models; for real ones bf16 on a GPU
    that supports it, and on a CPU only where a measured micro-benchmark shows bf16 faster — see
    :mod:`puma_lightning.models.dtype_choice`). ``device``: where the model will run ("cpu" or
    "cuda"), which is what ``auto`` decides for. ``cache_dir`` is where packaged models are converted
    and the dtype measurement is cached (default ``$PUMA_CACHE`` or ``~/.cache/puma_lightning``).
    """
    name = str(name_or_path)
    if dtype != "auto" and dtype not in DTYPES:
        raise ValueError(f"dtype must be one of 'auto', {', '.join(map(repr, DTYPES))}; got {dtype!r}")
    cache = Path(cache_dir).expanduser() if cache_dir is not None else default_cache_dir()
    tiny = is_tiny_model(name)
    source, hub = model_source(name, cache_dir)
    local_only = hub and _offline()
    try:
        shape = (0, 0) if tiny or dtype != "auto" else _mlp_shape(source, trust_remote_code, local_only)
        choice = choose_dtype(dtype, tiny=tiny, device=device, hidden=shape[0], intermediate=shape[1], cache_dir=cache)
        if tiny:
            model, tokenizer = build_tiny_model(name)
            model = model.to(choice.dtype)
        else:
            model, tokenizer = _from_pretrained(source, choice.dtype, trust_remote_code, local_files_only=local_only)
    except (OSError, ValueError) as err:
        if not hub:
            raise
        first = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
        raise OSError(
            f"could not load model {name!r} from the hub (offline or not found: {first}); "
            f"pass a local folder with a transformers checkpoint, or a packaged name "
            f"(smollm2-135m, gemma3-270m)"
        ) from err
    freeze_model(model)
    ensure_pad_token(tokenizer)
    fp = model_fingerprint(model)
    log.info("loaded backbone %s (%s, %s, fingerprint %s)", name, type(model).__name__, choice.dtype, fp)
    if dtype == "auto" and not tiny:
        log.info("dtype auto -> %s for %s: %s", str(choice.dtype).replace("torch.", ""), name, choice.reason)
    return LoadedBackbone(
        model=model, tokenizer=tokenizer, name=name, fingerprint=fp, hidden_size=hidden_size_of(model),
        dtype_choice=choice,
    )


def load_tokenizer(name_or_path: str, cache_dir: str | Path | None = None, trust_remote_code: bool = False) -> Any:
    """The tokenizer of a model alone (tiny, packaged, local folder, or hub id: from the cache when offline), without
    its weights: enough to check a template's answers before any model is loaded."""
    from transformers import AutoTokenizer

    name = str(name_or_path)
    if is_tiny_model(name):
        from puma_lightning.models.tiny import build_tiny_tokenizer

        return build_tiny_tokenizer(name)
    source, hub = model_source(name, cache_dir)
    return AutoTokenizer.from_pretrained(source, trust_remote_code=trust_remote_code, local_files_only=hub and _offline())


def model_identity(name_or_path: str, cache_dir: str | Path | None = None, trust_remote_code: bool = False) -> tuple[int, str]:
    """``(hidden_size, fingerprint)`` of a model found locally, without its tokenizer and without the network.

    For labelling prompts that were trained elsewhere (``bank import``): the fingerprint is the one
    :func:`load_backbone` gives the same checkpoint (it rounds to bfloat16, so loading in bfloat16
    here changes nothing and halves the memory). A tiny name is built in; a packaged name is
    converted into the cache if needed; a local folder is read; a hub id must already be in the
    Hugging Face cache (``local_files_only``), else one line says so.
    """
    from puma_lightning.errors import PumaError

    name = str(name_or_path)
    if is_tiny_model(name):
        model, _ = build_tiny_model(name)
        return hidden_size_of(model), model_fingerprint(model)
    try:
        source, _ = model_source(name, cache_dir)
    except ModuleNotFoundError as exc:  # a packaged model whose wheel is not installed
        raise PumaError(str(exc)) from None
    from transformers import AutoModelForCausalLM

    try:
        model = AutoModelForCausalLM.from_pretrained(source, dtype=torch.bfloat16, trust_remote_code=trust_remote_code,
                                                     local_files_only=True)
    except (OSError, ValueError) as err:
        first = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
        raise PumaError(f"cannot load model {name!r} locally ({first}); name a tiny or packaged model, a local folder "
                        "with a transformers checkpoint, or a hub id already in the Hugging Face cache") from None
    return hidden_size_of(model), model_fingerprint(model)
