"""The app's door to compute.tracing: one trace (logit lens, rollout and flow, head contributions) of one
query position of a cached analysis, run as a background job, cached per (analysis key, position).

Cache layout (visapp.state's store, next to the analysis' entries in visapp.service):
  <key>:trace:<P>       the trace.json dict of position P (compute.tracing.trace.build_trace)
  <key>:trace:<P>:qk    q and k of every head at P and its visible keys (after and before RoPE): the neuron
                        view of any head and key is then a dot product here, not another forward
  <key>:trace-latest    the cache key of the latest finished trace (export CLI; overview importance)
The trace's head_importance also goes to service.trace_importance_key(key), which service.importance_of
reads, so the overview can size its glyphs by it.

Everything returned is plain data (dicts, lists, numpy arrays); no Dash here.
"""
from __future__ import annotations

import math
from typing import Callable, Optional

import numpy as np

from compute.errors import InputError, UserError

from . import service, state

Progress = Callable[[float, str], None]


def trace_key(key: str, position: int) -> str:
    return f"{key}:trace:{int(position)}"


def latest_key(key: str) -> str:
    return f"{key}:trace-latest"


def parse_position(value, n_tokens: int) -> int:
    """A position from the page (None/'' = the last token) checked against the text (InputError: one line)."""
    from compute.tracing.trace import resolve_position

    if value is None or (isinstance(value, str) and not value.strip()):
        return resolve_position(None, n_tokens)
    try:
        f = float(value)
    except (TypeError, ValueError):
        raise InputError(f"position {value!r} is not a whole number") from None
    if not math.isfinite(f) or f != int(f):
        raise InputError(f"position {value!r} is not a whole number")
    return resolve_position(int(f), n_tokens)


def get_trace(tk: Optional[str]) -> Optional[dict]:
    return state.store().get(tk) if tk else None


def is_traced(key: str, position: int) -> bool:
    return state.store().has(trace_key(key, position))


def run_trace(key: str, position, progress: Optional[Progress] = None, cancel=None) -> str:
    """Trace `position` of the cached analysis `key` (runs in a job: one forward of the analysis' tokens);
    caches the trace, the q/k of the neuron view and the head importance; returns the trace's cache key."""
    from compute.tracing.trace import build_trace

    res = service.get_result(key)
    req = service.get_request(key)
    if req is None:
        raise service.NotCached("the request of this analysis is no longer cached; analyse again")
    P = parse_position(position, res.n_tokens)
    tk = trace_key(key, P)
    st = state.store()
    if not st.has(tk):
        say = progress or (lambda f, m: None)
        say(0.0, f"loading {req.model}")
        lm = service._load(req.model)
        kept: dict = {}
        tr = build_trace(lm, list(res.token_ids), P, cancel=cancel, progress=say,
                         on_forward=lambda ft: kept.update(qk_arrays(ft)))
        if kept:
            st.set(f"{tk}:qk", kept)
        st.set(tk, tr)                      # written last: a present trace means its q/k were written
    tr = st.get(tk)
    if tr is None:
        raise UserError("the trace could not be stored (cache full or unavailable); try again")
    if tr.get("head_importance"):
        st.set(service.trace_importance_key(key), dict(tr["head_importance"], position=P))
    st.set(latest_key(key), tk)
    return tk


def qk_arrays(ft) -> dict:
    """What the neuron view needs of a ForwardTrace (nothing when the text was past the dense limit)."""
    if ft.q is None:
        return {}
    return {"position": ft.position, "n_tokens": ft.n_tokens, "causal": ft.causal, "head_rows": ft.head_rows,
            "q": ft.q, "k": ft.k, "q_pre": ft.q_pre, "k_pre": ft.k_pre, "scale": list(ft.scale)}


def latest(key: str) -> Optional[str]:
    """The cache key of the latest trace of analysis `key` that is still cached, or None."""
    tk = state.store().get(latest_key(key))
    return tk if tk and state.store().has(tk) else None


def strongest_key(tr: dict, layer: int, head: int) -> int:
    """The key position that head (layer, head) attends to most from the traced position."""
    rows = tr.get("head_rows")
    if not rows:
        return 0
    return int(np.argmax(np.asarray(rows[layer][head], float)))


def neuron(tk: str, layer: int, head: int, key_pos) -> dict:
    """The neuron view (compute.tracing.neuron) of query P and key `key_pos` (None = the strongest key) in head
    (layer, head), from the stored q/k of the trace `tk`. InputError when unavailable or out of range."""
    from compute.tracing.forward import DENSE_MAX_TOKENS, ForwardTrace
    from compute.tracing.neuron import neuron_view

    tr = get_trace(tk)
    if tr is None:
        raise service.NotCached("this trace is no longer cached; trace the position again")
    d = state.store().get(f"{tk}:qk")
    if not d:
        raise InputError(f"the neuron view keeps q and k only up to {DENSE_MAX_TOKENS} visible keys; "
                         f"position {tr['position']} sees more")
    if key_pos is None or (isinstance(key_pos, str) and not key_pos.strip()):
        j = strongest_key(tr, layer, head)
    else:
        try:
            f = float(key_pos)
        except (TypeError, ValueError):
            raise InputError(f"key {key_pos!r} is not a whole number") from None
        if not math.isfinite(f) or f != int(f):
            raise InputError(f"key {key_pos!r} is not a whole number")
        j = int(f)
    return neuron_view(ForwardTrace(**d), int(layer), int(head), j)
