"""Run a model on a text with instrumented attention and collect exact statistics per layer x head."""
from __future__ import annotations

import time
from dataclasses import asdict, dataclass
from typing import Callable, Optional

import numpy as np
import torch

from kernels import StatsConfig, resolve_backend
from kernels.backend import BackendUnavailable
from kernels.torch_stats import logsumexp_argmax

from .capture import CaptureSession, check_cancel
from .errors import InputError, UserError
from .models import LoadedModel
from .result import AttentionResult

Progress = Callable[[float, str], None]      # (fraction done in [0, 1], message)


@dataclass(frozen=True)
class AnalysisOptions:
    backend: str = "auto"
    sink_tokens: int = 4
    local_window: int = 8
    max_tokens: int = 8192
    full_map_max: int = 1024        # store dense maps of every head up to this many tokens
    pool_cells: int = 128           # pooled maps: about this many cells per side
    mem_budget_mb: int = 256
    compute_loss: bool = True

    def validate(self) -> None:
        if self.sink_tokens < 1:
            raise InputError("sink count must be at least 1")
        if self.local_window < 1:
            raise InputError("local window must be at least 1")
        if self.max_tokens < 1:
            raise InputError("max tokens must be at least 1")
        if self.pool_cells < 1 or self.mem_budget_mb < 1:
            raise InputError("pool cells and memory budget must be positive")

    def stats_config(self, n_tokens: int) -> StatsConfig:
        return StatsConfig(sink_tokens=self.sink_tokens, local_window=self.local_window,
                           pool_cells=self.pool_cells, full_maps=n_tokens <= self.full_map_max,
                           mem_budget_mb=self.mem_budget_mb)


def validate_text(text) -> str:
    if not isinstance(text, str):
        raise InputError("text must be a string")
    if not text.strip():
        raise InputError("the text is empty")
    if "\x00" in text:
        raise InputError("the text contains NUL bytes (binary data?)")
    try:                    # lone surrogates (undecodable argv bytes, bad JSON escapes) break tokenizers
        text.encode("utf-8")
    except UnicodeEncodeError as exc:
        raise InputError(f"the text is not valid Unicode (a lone surrogate at character {exc.start})") from None
    return text


def tokenize(lm: LoadedModel, text: str, max_tokens: int) -> list[int]:
    validate_text(text)
    # Cheap guard before tokenising megabytes: no tokenizer makes fewer tokens than chars / 64.
    limit = min(max_tokens, lm.info.max_positions)
    if len(text) > 64 * limit:
        raise InputError(f"the text is {len(text):,} characters, far more than the limit of {limit:,} tokens")
    ids = lm.tokenizer(text, add_special_tokens=True)["input_ids"]
    if len(ids) > lm.info.max_positions:
        raise InputError(f"the text is {len(ids):,} tokens; {lm.info.name} reads at most "
                         f"{lm.info.max_positions:,}")
    if len(ids) > max_tokens:
        raise InputError(f"the text is {len(ids):,} tokens; the limit is {max_tokens:,} (max tokens)")
    if not ids:
        raise InputError("the text gives no tokens")
    return ids


def token_strings(lm: LoadedModel, ids: list[int]) -> list[str]:
    return [lm.tokenizer.decode([i]) for i in ids]


def capture(lm: LoadedModel, input_ids: torch.Tensor, attention_mask: Optional[torch.Tensor] = None, *,
            config: StatsConfig = StatsConfig(), backend: str = "torch", keep_qkv=False, layers=None,
            output_hook=None, progress: Optional[Callable[[int], None]] = None,
            return_hidden: bool = False, **model_kwargs):
    """One no-grad forward of the base model under a CaptureSession. Returns (session, hidden).
    model_kwargs go to the model (e.g. position_ids for left-padded batches)."""
    base = _base_model(lm.model)
    sess = CaptureSession(config=config, backend=backend, keep_qkv=keep_qkv, layers=layers,
                          output_hook=output_hook, progress=progress)
    with torch.no_grad(), sess:
        out = base(input_ids=input_ids.to(lm.device),
                   attention_mask=None if attention_mask is None else attention_mask.to(lm.device),
                   **model_kwargs)
    hidden = out.last_hidden_state if return_hidden else None
    return sess, hidden


def _base_model(model):
    return getattr(model, model.base_model_prefix, model)


def next_token_loss(lm: LoadedModel, hidden: torch.Tensor, ids: torch.Tensor, chunk: int = 512):
    """Per-position next-token NLL and top-1 id from the final hidden states, in chunks so the
    [N, vocab] logits are never held at once. Returns (nll [N-1], top1 [N-1]) or (None, None)."""
    head = lm.model.get_output_embeddings() if lm.info.causal else None
    if head is None or hidden.shape[1] < 2:
        return None, None
    nll, top1 = [], []
    h = hidden[0, :-1]
    tgt = ids[0, 1:].to(h.device)
    with torch.no_grad():
        for a in range(0, h.shape[0], chunk):
            logits = head(h[a:a + chunk]).float()
            t = tgt[a:a + chunk]
            target_logit = logits.gather(-1, t[:, None]).squeeze(-1)
            lse, best = logsumexp_argmax(logits)                     # overwrites logits
            nll.append(lse - target_logit)                           # = cross_entropy(logits, t)
            top1.append(best)
    return torch.cat(nll).cpu().numpy(), torch.cat(top1).cpu().numpy()


def stack_layers(results: dict, n_layers: int, name: str, batch: int = 0) -> np.ndarray:
    return np.stack([getattr(results[l], name)[batch].numpy() for l in range(n_layers)])


def analyze_text(lm: LoadedModel, text: str, opts: AnalysisOptions = AnalysisOptions(),
                 progress: Optional[Progress] = None,
                 cancel: Optional[Callable[[], bool]] = None) -> AttentionResult:
    """Full analysis of one text. Raises UserError (InputError, BackendUnavailable...) on bad input."""
    opts.validate()
    try:
        backend = resolve_backend(opts.backend, lm.device)
    except BackendUnavailable as exc:
        raise UserError(str(exc)) from None
    ids = tokenize(lm, text, opts.max_tokens)
    n = len(ids)
    from .limits import check_memory  # refuse, before computing, work that would not fit in memory
    check_memory(lm, n, opts)
    cfg = opts.stats_config(n)
    L = lm.info.n_layers
    t0 = time.perf_counter()

    def on_layer(layer: int) -> None:
        check_cancel(cancel)
        if progress is not None:
            progress((layer + 1) / (L + 1), f"layer {layer + 1}/{L}")

    if progress is not None:
        progress(0.0, f"{n} tokens")
    input_ids = torch.tensor([ids])
    sess, hidden = capture(lm, input_ids, config=cfg, backend=backend, progress=on_layer, return_hidden=opts.compute_loss)
    t1 = time.perf_counter()
    nll, top1 = next_token_loss(lm, hidden, input_ids) if opts.compute_loss else (None, None)
    r = sess.results
    if len(r) != L:
        raise UserError(f"captured {len(r)} of {L} layers: the model does not route attention through "
                        "transformers' attention interface")
    arrays = {name: stack_layers(r, L, name) for name in
              ("lse", "entropy", "n_visible", "sink0", "sink_s", "top1_prob", "prev_mass", "local_mass",
               "exp_dist", "colsum", "n_queries", "pooled_mean", "pooled_max", "dist_hist")}
    arrays["top1_idx"] = stack_layers(r, L, "top1_idx").astype(np.int32)
    maps = None
    if cfg.full_maps:
        maps = np.stack([r[l].maps[0].to(torch.float16).numpy() for l in range(L)])
    res = AttentionResult(
        model=lm.info.name, model_kind=lm.info.kind, causal=lm.info.causal, n_layers=L,
        n_heads=lm.info.n_heads, n_kv_heads=lm.info.n_kv_heads, tokens=token_strings(lm, ids),
        token_ids=list(map(int, ids)), text=text, options=asdict(opts), backend=backend, pool=r[0].pool,
        maps=maps, token_nll=nll, token_top1=top1,
        timings={"forward_s": t1 - t0, "total_s": time.perf_counter() - t0}, **arrays)
    if progress is not None:
        progress(1.0, "done")
    return res
