"""The instrumented forward: run a model on token ids and collect exact statistics per layer x head
(plus tokenising helpers). compute.pipeline orchestrates an analysis around it."""
from __future__ import annotations

import time
from dataclasses import asdict
from typing import Callable, Optional

import numpy as np
import torch

from kernels import StatsConfig
from kernels.torch_stats import logsumexp_argmax

from .capture import CaptureSession, RowObserver, check_cancel
from .errors import InputError, UserError
from .models import LoadedModel
from .options import AnalysisOptions
from .result import AttentionResult

Progress = Callable[[float, str], None]      # (fraction done in [0, 1], message)


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


def encode(lm: LoadedModel, text: str, max_tokens: int) -> tuple[list[int], Optional[list]]:
    """Tokenise once: (ids, the fast tokenizer's character offsets or None). Raises InputError."""
    validate_text(text)
    # Cheap guard before tokenising megabytes: no tokenizer makes fewer tokens than chars / 64.
    limit = min(max_tokens, lm.info.max_positions)
    if len(text) > 64 * limit:
        raise InputError(f"the text is {len(text):,} characters, far more than the limit of {limit:,} tokens")
    fast = getattr(lm.tokenizer, "is_fast", False)
    enc = lm.tokenizer(text, add_special_tokens=True, **({"return_offsets_mapping": True} if fast else {}))
    ids = list(enc["input_ids"])
    if len(ids) > lm.info.max_positions:
        raise InputError(f"the text is {len(ids):,} tokens; {lm.info.name} reads at most "
                         f"{lm.info.max_positions:,}")
    if len(ids) > max_tokens:
        raise InputError(f"the text is {len(ids):,} tokens; the limit is {max_tokens:,} (max tokens)")
    if not ids:
        raise InputError("the text gives no tokens")
    return ids, (list(enc["offset_mapping"]) if fast else None)


def tokenize(lm: LoadedModel, text: str, max_tokens: int) -> list[int]:
    return encode(lm, text, max_tokens)[0]


def tokenize_texts(lm: LoadedModel, texts, max_tokens: int, cancel: Optional[Callable[[], bool]] = None):
    """Yield (i, text id, ids) for [(id, text)], ids unique; a text's error names its id. Checks cancel
    before each text (corpus embeddings and search indexes)."""
    seen: set = set()
    for i, (tid, text) in enumerate(texts):
        check_cancel(cancel)
        if tid in seen:
            raise InputError(f"text id {tid!r} is used twice")
        seen.add(tid)
        try:
            ids = tokenize(lm, text, max_tokens)
        except InputError as exc:
            raise InputError(f"text {tid!r}: {exc}") from None
        yield i, tid, ids


def token_strings(lm: LoadedModel, ids: list[int]) -> list[str]:
    return [lm.tokenizer.decode([i]) for i in ids]


def capture(lm: LoadedModel, input_ids: torch.Tensor, attention_mask: Optional[torch.Tensor] = None, *,
            config: StatsConfig = StatsConfig(), backend: str = "torch", keep_qkv=False, layers=None,
            output_hook=None, progress: Optional[Callable[[int], None]] = None,
            return_hidden: bool = False, row_observer=None, observer_rows=None, **model_kwargs):
    """One no-grad forward of the base model under a CaptureSession. Returns (session, hidden).
    model_kwargs go to the model (e.g. position_ids for left-padded batches)."""
    base = _base_model(lm.model)
    sess = CaptureSession(config=config, backend=backend, keep_qkv=keep_qkv, layers=layers,
                          output_hook=output_hook, progress=progress, row_observer=row_observer,
                          observer_rows=observer_rows)
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


def forward_stats(lm: LoadedModel, ids: list[int], text: str, opts: AnalysisOptions, backend: str, *,
                  progress: Optional[Progress] = None, cancel: Optional[Callable[[], bool]] = None,
                  row_observer: Optional[RowObserver] = None, observer_rows: Optional[tuple] = None
                  ) -> AttentionResult:
    """The one instrumented forward of an analysis: every layer's statistics (and, through row_observer,
    whatever reductions of the exact probabilities the caller planned), plus the next-token loss from
    the same hidden states. Validation, tokenising and limits are the pipeline's (compute.pipeline)."""
    n = len(ids)
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
    sess, hidden = capture(lm, input_ids, config=cfg, backend=backend, progress=on_layer,
                           return_hidden=opts.compute_loss, row_observer=row_observer, observer_rows=observer_rows)
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
        progress(1.0, "forward done")
    return res
