"""Greedy continuation of a prompt, so the app can inspect the attention of the generated tokens.

generate_text returns the prompt, the continuation, where it starts in tokens, and for every generated
token the model's probability of it and the top-k alternatives (softmax of the model's own output
logits at that step, before any logits processor). The caller then analyses prompt + continuation like
any text (the engine re-tokenises, so the boundary is the prompt's own token count).

strongest_keys reads exact attention rows of the generated queries and reports each query's strongest
key other than the sink tokens, with the sink mass beside it: with most heads sinking, the plain argmax
would name token 0 for almost every generated token.

torch and the engine are imported inside generate_text, so the pure parts (strongest_keys, the records)
import without torch (the app's pages use them).
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Optional, Sequence

import numpy as np

from .errors import InputError, UserError

MAX_NEW_TOKENS = 256
TOP_K = 5
MAX_TOP_K = 20


@dataclass
class Generation:
    prompt: str
    continuation: str
    text: str                 # prompt + continuation
    prompt_tokens: int        # tokens of the prompt alone
    new_tokens: int
    # one record per generated token: {"token_id", "token", "prob", "top": [{"token_id", "token", "prob"}]}
    steps: list = field(default_factory=list)

    def record(self) -> dict:
        """JSON-ready summary (what the analysis stores under extras['generation'])."""
        return {"prompt_tokens": self.prompt_tokens, "new_tokens": self.new_tokens,
                "continuation": self.continuation, "prompt_chars": len(self.prompt), "steps": self.steps}


def _check_top_k(top_k) -> int:
    if isinstance(top_k, bool) or not isinstance(top_k, int) or not 1 <= top_k <= MAX_TOP_K:
        raise InputError(f"alternatives per token (top-k) must be between 1 and {MAX_TOP_K}")
    return top_k


def step_records(logits, chosen: Sequence[int], decode, top_k: int = TOP_K) -> list[dict]:
    """Per step t: the probability softmax(logits[t]) gives the chosen token and the top_k tokens.
    logits: [T, V] (torch or numpy), the model's raw output at each step."""
    import torch

    lg = torch.as_tensor(logits).float()
    logp = torch.log_softmax(lg, -1)
    top_lp, top_id = logp.topk(min(top_k, lg.shape[-1]), -1)
    out = []
    for t, tok in enumerate(chosen):
        out.append({"token_id": int(tok), "token": decode(int(tok)), "prob": float(logp[t, int(tok)].exp()),
                    "top": [{"token_id": int(i), "token": decode(int(i)), "prob": float(p.exp())}
                            for p, i in zip(top_lp[t], top_id[t])]})
    return out


def generate_text(lm, prompt: str, max_new_tokens: int = 32, max_tokens: int = 8192,
                  top_k: int = TOP_K, cancel=None) -> Generation:
    """Greedy decoding (deterministic) of up to max_new_tokens tokens after the prompt, with each
    token's probability and the top_k alternatives. cancel() is checked after every token (it raises,
    or returns True to stop with compute.errors.Cancelled): a time limit or the user's Cancel."""
    import torch
    from transformers import StoppingCriteria, StoppingCriteriaList

    from .capture import check_cancel

    class _Checked(StoppingCriteria):
        def __call__(self, input_ids, scores, **kw):
            check_cancel(cancel)
            return torch.zeros(input_ids.shape[0], dtype=torch.bool, device=input_ids.device)

    from .engine import tokenize

    if not lm.info.causal:
        raise UserError(f"{lm.info.name} is an encoder (bidirectional) model: it does not generate text; "
                        "pick a causal language model")
    if isinstance(max_new_tokens, bool) or not isinstance(max_new_tokens, int) \
            or not 1 <= max_new_tokens <= MAX_NEW_TOKENS:
        raise InputError(f"tokens to generate must be between 1 and {MAX_NEW_TOKENS}")
    top_k = _check_top_k(top_k)
    ids = tokenize(lm, prompt, max_tokens)
    if len(ids) + max_new_tokens > min(max_tokens, lm.info.max_positions):
        raise InputError(f"the prompt is {len(ids)} tokens; with {max_new_tokens} new tokens it would pass the "
                         f"limit of {min(max_tokens, lm.info.max_positions)}")
    tok = lm.tokenizer
    pad = tok.pad_token_id if tok.pad_token_id is not None else tok.eos_token_id
    x = torch.tensor([ids], device=lm.device)
    with torch.no_grad():
        out = lm.model.generate(x, attention_mask=torch.ones_like(x), max_new_tokens=max_new_tokens,
                                do_sample=False, num_beams=1, pad_token_id=pad, return_dict_in_generate=True,
                                output_logits=True, stopping_criteria=StoppingCriteriaList([_Checked()]))
    new = out.sequences[0, len(ids):].tolist()
    continuation = tok.decode(new, skip_special_tokens=True)
    if not continuation:
        raise UserError("the model generated no text (it ended at once); try a different prompt")
    logits = torch.stack([s[0] for s in out.logits[:len(new)]]).cpu()       # [T, V] raw, before processors
    steps = step_records(logits, new, lambda i: tok.decode([i]), top_k)
    return Generation(prompt=prompt, continuation=continuation, text=prompt + continuation,
                      prompt_tokens=len(ids), new_tokens=len(new), steps=steps)


def strongest_keys(rows: np.ndarray, q_start: int, *, k_start: int = 0, sinks: Sequence[int] = (0,),
                   exclude_self: bool = False) -> list[dict]:
    """For each query row (queries q_start.., keys k_start..) of exact attention weights: the strongest
    key that is not a sink, its weight, and the mass on the sinks reported separately.

    Returns [{"query", "key", "weight", "sink_mass", "top_is_sink"}]; key is None (weight 0) when a row
    sees no key besides the sinks (and itself, with exclude_self). top_is_sink says whether the plain
    argmax would have been a sink."""
    a = np.nan_to_num(np.asarray(rows, dtype=np.float64))
    if a.ndim != 2:
        raise ValueError("rows must be [queries, keys]")
    nq, nk = a.shape
    cols = np.arange(k_start, k_start + nk)
    is_sink = np.isin(cols, np.asarray(list(sinks), dtype=int))
    sink_mass = a[:, is_sink].sum(1)
    b = a.copy()
    b[:, is_sink] = -np.inf
    if exclude_self:
        for r in range(nq):
            j = q_start + r - k_start
            if 0 <= j < nk:
                b[r, j] = -np.inf
    out = []
    for r in range(nq):
        j = int(np.argmax(b[r])) if nk else 0
        ok = nk > 0 and np.isfinite(b[r, j]) and b[r, j] > 0
        out.append({"query": q_start + r, "key": int(cols[j]) if ok else None,
                    "weight": float(a[r, j]) if ok else 0.0, "sink_mass": float(sink_mass[r]),
                    "top_is_sink": bool(nk and is_sink[int(np.argmax(a[r]))])})
    return out


def sink_positions(hidden_sinks: Optional[Sequence[dict]], layer: int, head: int, first: int = 1) -> list[int]:
    """Sink keys of one head: the first `first` tokens plus the analysis' hidden sinks of that head
    (extras['sinks']['hidden_sinks'] records with 'index' and 'heads' like '3.4')."""
    out = list(range(max(1, int(first))))
    for rec in hidden_sinks or []:
        if f"{layer}.{head}" in rec.get("heads", []):
            out.append(int(rec["index"]))
    return sorted(set(out))
