"""trace.json for one query position: logit lens, rollout and flow, head contributions (and, on request,
one head's neuron view), all from one forward (forward.run_forward).

Sections a model or a length cannot have are left out and `omitted` says why (encoders have no
unembedding: no logit lens, no contributions; flow past FLOW_MAX_TOKENS; rollout past DENSE_MAX_TOKENS).
"""
from __future__ import annotations

import time
from typing import Callable, Optional

import numpy as np

from ..capture import check_cancel
from ..errors import InputError, UserError
from ..models import LoadedModel
from .contributions import head_contributions
from ..engine import token_strings, tokenize
from ..options import MAX_TOKENS_DEFAULT as DEFAULT_MAX_TOKENS
from .flow import FLOW_MAX_TOKENS, attention_flow, check_flow_limit, flow_limit_reason
from .forward import DENSE_MAX_TOKENS, decoder_parts, run_forward
from .logit_lens import TOP_K, lens_logits, logit_lens, token_text
from .neuron import check_neuron, neuron_view
from .rollout import rollout_by_layer, rollout_edges

MAX_TOP_K = 1000
DECOMPOSITION_RTOL = 1e-3        # contributions are dropped (with the reason) if they do not sum to the logit


def resolve_position(position: Optional[int], n_tokens: int) -> int:
    """None -> the last token; otherwise 0 <= position < n_tokens (an InputError says the range)."""
    if position is None:
        return n_tokens - 1
    if not 0 <= position < n_tokens:
        raise InputError(f"position {position} is outside the text: it has {n_tokens} tokens (0..{n_tokens - 1})")
    return int(position)


def validate_request(lm: LoadedModel, n_tokens: int, position: Optional[int], *, top_k: int = TOP_K,
                     flow_max_tokens: int = FLOW_MAX_TOKENS, neuron: Optional[tuple[int, int, int]] = None) -> int:
    """Every check that needs no forward (InputError with one line); returns the resolved position."""
    if n_tokens < 1:
        raise InputError("the text gives no tokens")
    P = resolve_position(position, n_tokens)
    if not 1 <= top_k <= MAX_TOP_K:
        raise InputError(f"the logit lens shows between 1 and {MAX_TOP_K} tokens per layer (got {top_k})")
    check_flow_limit(flow_max_tokens)
    if neuron is not None:
        n_keys = P + 1 if lm.info.causal else n_tokens
        check_neuron(*neuron, lm.info.n_layers, lm.info.n_heads, n_keys, P)
        if n_keys > DENSE_MAX_TOKENS:
            raise InputError(f"the neuron view keeps q and k only up to {DENSE_MAX_TOKENS} visible keys; "
                             f"position {P} sees {n_keys}")
    return P


def build_trace(lm: LoadedModel, ids: list[int], position: Optional[int] = None, *, top_k: int = TOP_K,
                flow_max_tokens: int = FLOW_MAX_TOKENS, neuron: Optional[tuple[int, int, int]] = None,
                cancel: Optional[Callable[[], bool]] = None,
                progress: Optional[Callable[[float, str], None]] = None) -> dict:
    """The trace of query `position` (default: last token) of the token ids `ids` as a JSON-able dict.
    progress(fraction, message) as the engine's; cancel() -> True stops with Cancelled between layers and
    between flow's max-flows."""
    P = validate_request(lm, len(ids), position, top_k=top_k, flow_max_tokens=flow_max_tokens, neuron=neuron)
    say = progress or (lambda frac, msg: None)
    L = lm.info.n_layers
    t0 = time.perf_counter()
    ft = run_forward(lm, ids, P, cancel=cancel, on_layer=lambda l: say(0.6 * (l + 1) / L, f"layer {l + 1}/{L}"))
    t1 = time.perf_counter()
    info = lm.info
    tokens = token_strings(lm, ids) if lm.tokenizer is not None else [f"<{i}>" for i in ids]
    out: dict = {"model": info.name, "causal": info.causal, "n_layers": info.n_layers, "n_heads": info.n_heads,
                 "n_kv_heads": info.n_kv_heads, "position": P, "tokens": tokens, "token_ids": list(map(int, ids)),
                 "limits": {"dense_max_tokens": DENSE_MAX_TOKENS, "flow_max_tokens": flow_max_tokens},
                 "omitted": {}}
    next_id = int(ids[P + 1]) if info.causal and P + 1 < len(ids) else None
    out["next_token"] = None if next_id is None else {"id": next_id, "token": token_text(lm, next_id)}

    if decoder_parts(lm) is None or ft.hidden is None:
        why = ("an encoder has no unembedding to read the residual stream with" if not info.causal else
               f"the residual stream of a {info.architecture} model is not split by this tracer (Llama family only)")
        out["omitted"]["logit_lens"] = out["omitted"]["contributions"] = why
    else:
        out["logit_lens"] = logit_lens(lm, ft, next_id, top_k)
        pred = out["logit_lens"][-1]["top"][0]
        out["prediction"] = dict(pred, logit=float(lens_logits(lm, ft.hidden[-1:])[0, pred["id"]]))
        out.update(_contributions(lm, ft, pred, out["omitted"]))
    check_cancel(cancel)

    if ft.mean_maps is None:
        out["omitted"]["rollout"] = (f"rollout needs every layer's attention among the {ft.n_keys} tokens "
                                     f"position {P} sees; it is computed up to {DENSE_MAX_TOKENS}")
        out["omitted"]["flow"] = out["omitted"]["rollout"]
    else:
        by_layer = rollout_by_layer(ft.mean_maps, P)
        out.update(rollout=by_layer[0].tolist(), rollout_by_layer=by_layer.tolist(),
                   rollout_edges=rollout_edges(ft.mean_maps, by_layer))
        reason = flow_limit_reason(ft.n_keys, flow_max_tokens)
        if reason is None:
            say(0.7, f"attention flow ({ft.n_keys} max-flows)")
            out["flow"] = attention_flow(ft.mean_maps, P, flow_max_tokens, check=lambda: check_cancel(cancel)).tolist()
        else:
            out["omitted"]["flow"] = reason
    out["head_rows"] = np.round(ft.head_rows, 6).tolist() if ft.n_keys <= DENSE_MAX_TOKENS else None
    if neuron is not None:
        out["neuron"] = neuron_view(ft, *neuron)
    out["timings"] = {"forward_s": t1 - t0, "total_s": time.perf_counter() - t0}
    say(1.0, "done")
    return out


def _contributions(lm: LoadedModel, ft, pred: dict, omitted: dict) -> dict:
    """The contribution fields of trace.json, or {} with the reason in `omitted`."""
    try:
        dla = head_contributions(lm, ft, pred["id"])
    except UserError as exc:                     # e.g. a final norm the decomposition does not know
        omitted["contributions"] = str(exc)
        return {}
    if dla["decomposition_error"] > DECOMPOSITION_RTOL * max(1.0, abs(dla["logit"])):
        omitted["contributions"] = (f"the components do not add up to the logit (off by "
                                    f"{dla['decomposition_error']:.3g}): this architecture's residual stream is "
                                    "not embeddings + attention + MLP outputs")
        return {}
    c = np.abs(np.asarray(dla["contributions"]))
    return {"contributions": dla["contributions"], "contribution_rest": dla["contribution_rest"],
            "contribution_parts": dla["parts"], "contribution_target": pred,
            "decomposition_error": dla["decomposition_error"],
            # the shape of the analysis' importance section, so the overview can size glyphs by it
            "head_importance": {"available": True, "importance": c.tolist(),
                                "method": f"|direct contribution to the logit of {pred['token']!r} at position "
                                          f"{ft.position}|"}}


def trace_text(lm: LoadedModel, text: str, position: Optional[int] = None, *,
               max_tokens: int = DEFAULT_MAX_TOKENS, **kw) -> dict:
    """Tokenise (the engine's checks: empty, binary, too long) and trace."""
    return build_trace(lm, tokenize(lm, text, max_tokens), position, **kw)
