"""exBERT-style context search (Hoover et al., ACL demo 2020): the corpus tokens nearest to a chosen
token, by one head's query vector or by the layer's hidden state, with their contexts and where the head
attends there.

build_index(lm, texts, layer, head) runs each text once and keeps, per token:
  query    head's query vector at `layer` (position encoding applied, as in compute/embedding.py)
  hidden   the layer's output hidden state (transformers' hidden_states[layer + 1]; for the last layer of
           Llama-style models transformers applies the final norm to it)
  top keys the head's top_k keys (position, weight) for that token as query, from exact rows
           (compute/ondemand.head_block, the kernels' path)
search(index, vector, by, k) is pure: exact cosine similarity against every row (numpy; a corpus of
this size needs no approximate index), ties broken by corpus order.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Callable, Optional, Sequence

import numpy as np

from .errors import InputError

BY = ("query", "hidden")
TOP_K_KEYS = 5
CONTEXT = 8                  # tokens either side in a hit's context window
MAX_HITS = 100
ROW_BLOCK = 256              # attention rows computed at once for the top keys (bounds memory to 256 x N)


@dataclass
class SearchIndex:
    model: str
    layer: int
    head: int
    text_id: list[str]                     # [M] text of each row
    position: np.ndarray                   # [M] position of each row in its text
    tokens: dict[str, list[str]]           # text id -> token strings
    vectors: dict[str, np.ndarray]         # 'query' [M, D], 'hidden' [M, d_model] (float32)
    top_keys: np.ndarray                   # [M, K] key positions (-1 where the row sees fewer keys)
    top_weights: np.ndarray                # [M, K]
    rows: dict[str, int] = field(default_factory=dict)   # text id -> first row

    def row(self, text_id: str, position: int) -> int:
        if text_id not in self.rows:
            raise InputError(f"no text {text_id!r} in the search index")
        n = len(self.tokens[text_id])
        if not 0 <= position < n:
            raise InputError(f"text {text_id!r} has positions 0..{n - 1}, not {position}")
        return self.rows[text_id] + position


def _one_text(lm, ids: list[int], layer: int, head: int, hidden: bool, top_k: int):
    """(q [N, D], hidden [N, d] or None, top_keys [N, K], top_weights [N, K]) from one forward."""
    import torch

    from .engine import _base_model, capture
    from .ondemand import head_block, layer_qk

    if hidden:
        got: dict = {}
        hook = _base_model(lm.model).register_forward_hook(lambda m, i, o: got.update(out=o))
        try:
            sess, _ = capture(lm, torch.tensor([ids]), layers=set(), keep_qkv={layer}, output_hidden_states=True)
        finally:
            hook.remove()
        c = sess.calls[layer]
        qk = {"q": c.q[0].float().numpy(), "k": c.k[0].float().numpy(), "causal": c.causal, "scale": c.scale,
              "layer": layer, "window": c.window}
        hs = got["out"].hidden_states[layer + 1][0].detach().float().cpu().numpy()
    else:
        qk, hs = layer_qk(lm, ids, layer), None
    n = len(ids)
    k = min(top_k, n)
    keys, weights = [], []
    for a in range(0, n, ROW_BLOCK):                             # exact rows of this head, ROW_BLOCK at a time
        p = head_block(qk, head, a, min(n, a + ROW_BLOCK), 0, n)
        order = np.argsort(-p, axis=1, kind="stable")[:, :k]
        w = np.take_along_axis(p, order, 1)
        keys.append(np.where(w > 0, order, -1))
        weights.append(w)
    return qk["q"][head], hs, np.concatenate(keys).astype(np.int32), np.concatenate(weights).astype(np.float32)


def build_index(lm, texts: Sequence[tuple[str, str]], layer: int, head: int, *, hidden: bool = True,
                top_k: int = TOP_K_KEYS, max_tokens: int = 1024,
                progress: Optional[Callable[[float, str], None]] = None,
                cancel: Optional[Callable[[], bool]] = None) -> SearchIndex:
    """Capture the search matrices of `texts` ([(id, text)]) for one layer and head."""
    from .embedding import check_capture_size
    from .engine import token_strings, tokenize_texts

    L, H = lm.info.n_layers, lm.info.n_heads
    if not 0 <= layer < L:
        raise InputError(f"no layer {layer}: the model has layers 0..{L - 1}")
    if not 0 <= head < H:
        raise InputError(f"no head {head}: the model has heads 0..{H - 1}")
    if not 1 <= top_k <= 64:
        raise InputError("top keys must be between 1 and 64")
    if not texts:
        raise InputError("no texts to search")
    qs, hs, tk, tw, tids, pos, toks, rows = [], [], [], [], [], [], {}, {}
    m = 0
    for i, tid, ids in tokenize_texts(lm, texts, max_tokens, cancel):
        q, h, keys, weights = _one_text(lm, ids, layer, head, hidden, top_k)
        kw = np.full((len(ids), top_k), -1, np.int32)
        ww = np.zeros((len(ids), top_k), np.float32)
        kw[:, :keys.shape[1]], ww[:, :keys.shape[1]] = keys, weights
        qs.append(q)
        if h is not None:
            hs.append(h)
        tk.append(kw)
        tw.append(ww)
        check_capture_size(sum(a.nbytes for a in qs + hs + tk + tw), what="search index")
        rows[tid] = m
        m += len(ids)
        tids += [tid] * len(ids)
        pos.append(np.arange(len(ids)))
        toks[tid] = token_strings(lm, ids)
        if progress is not None:
            progress((i + 1) / len(texts), f"text {i + 1}/{len(texts)}")
    vectors = {"query": np.concatenate(qs).astype(np.float32)}
    if hidden:
        vectors["hidden"] = np.concatenate(hs).astype(np.float32)
    return SearchIndex(lm.info.name, layer, head, tids, np.concatenate(pos), toks, vectors, np.concatenate(tk),
                       np.concatenate(tw), rows)


def cosine_top(matrix: np.ndarray, vector: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
    """(row indices, cosine similarities) of the k rows most similar to vector, best first; rows of
    zero norm have similarity 0. Ties keep corpus order (stable sort)."""
    x = np.asarray(matrix, np.float64)
    v = np.asarray(vector, np.float64).ravel()
    if x.ndim != 2 or x.shape[1] != v.shape[0]:
        raise InputError(f"the search vector has {v.shape[0]} dimensions, the index {x.shape[-1]}")
    nv = np.linalg.norm(v)
    if nv == 0:
        raise InputError("the search vector is zero: cosine similarity is undefined")
    nx = np.linalg.norm(x, axis=1)
    sims = np.where(nx > 0, (x @ v) / np.maximum(nx, 1e-300) / nv, 0.0)
    order = np.argsort(-sims, kind="stable")[:k]
    return order, sims[order]


def search(index: SearchIndex, vector: np.ndarray, by: str = "query", k: int = 10,
           context: int = CONTEXT) -> list[dict]:
    """The k nearest corpus tokens: [{text_id, position, token, context_tokens, context_start, similarity,
    attends: [{position, token, weight}]}], most similar first."""
    _check_by(index, by)
    if not 1 <= k <= MAX_HITS:
        raise InputError(f"the number of hits must be between 1 and {MAX_HITS}")
    rows, sims = cosine_top(index.vectors[by], vector, k)
    hits = []
    for r, s in zip(rows.tolist(), sims.tolist()):
        tid, p = index.text_id[r], int(index.position[r])
        toks = index.tokens[tid]
        a, b = max(0, p - context), min(len(toks), p + context + 1)
        attends = [{"position": int(j), "token": toks[j], "weight": float(w)}
                   for j, w in zip(index.top_keys[r].tolist(), index.top_weights[r].tolist()) if j >= 0]
        hits.append({"text_id": tid, "position": p, "token": toks[p], "context_tokens": toks[a:b],
                     "context_start": a, "similarity": float(s), "attends": attends})
    return hits


def search_at(index: SearchIndex, text_id: str, position: int, by: str = "query", k: int = 10,
              context: int = CONTEXT) -> list[dict]:
    """Search with the vector of a token that is itself in the index."""
    _check_by(index, by)
    return search(index, index.vectors[by][index.row(text_id, position)], by, k, context)


def _check_by(index: SearchIndex, by: str) -> None:
    if by not in BY:
        raise InputError(f"search by {by!r}? choose one of {', '.join(BY)}")
    if by not in index.vectors:
        raise InputError(f"the index was built without {by} vectors")
