"""AttentionViz joint query/key embeddings of one head (Yeh et al., IEEE VIS 2023).

For layer L, head H, every token t of every text gives a query q_t and a key k_t: the vectors
transformers hands the attention function (compute/capture.py AttentionCall), so the model's own
position encoding is already in them (RoPE rotated for Llama/SmolLM2, absolute embeddings for BERT).
GQA: the key of query head H is kv head H // (n_heads / n_kv_heads). They are captured with
ondemand.layer_qk, which stops the forward after layer L.

Making distance a proxy for attention (transforms that leave every attention row unchanged), with s the
model's attention scale (1/sqrt(d) for these models):
  1. scale:     q' = sqrt(s) c q,  k' = sqrt(s) k / c,  c = sqrt(mean_t |k_t| / mean_t |q_t|):
                q'.k' = s q.k is exactly the logit the softmax sees, and queries and keys have the same
                mean norm, so neither cloud sits inside the other (AttentionViz's norm equalisation);
  2. translate: k'' = k' - mean(k') + mean(q')   (q.(k_j + v) = q.k_j + q.v: a per-row constant,
                which softmax ignores), so the key centroid is the query centroid (AttentionViz's
                key translation).
Scaling first keeps step 2 exact (the centroids coincide in the final space); the mean norms are equal
before the translation. AttentionViz describes both transforms; the order is our choice, for that reason.
Then |q - k|^2 = |q|^2 + |k|^2 - 2 q.k: at similar norms, a high logit means a short distance, and
coordinates are in logit units (sqrt(s) makes q''.k'' the logit up to the per-row constant).

2-D reduction of the queries and keys together (one space), with scikit-learn:
  pca   (default) deterministic, linear (distances along the top-2 axes are real q/k distances), fast;
        the identity test checks it against numpy's SVD.
  tsne  scikit-learn's Barnes-Hut t-SNE, PCA init, fixed seed: shows clusters better; distances
        between clusters mean little.
UMAP is not a dependency (umap-learn pulls numba); t-SNE covers the non-linear case.

Layer mode (AttentionViz's matrix view): embed_layer gives one such embedding per head of the layer, all
from the same forwards and the same sampled tokens.

Bounded: at most max_points points (default 4000; per head in layer mode): tokens are sampled
uniformly without replacement with a fixed seed and both their query and their key are kept, so every
sampled token appears twice.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Callable, Optional, Sequence

import numpy as np

from .errors import InputError

METHODS = ("pca", "tsne")
DEFAULT_METHOD = "pca"
MAX_POINTS = 4000
SEED = 0
CONTEXT_TOKENS = 6            # tokens shown either side of a point's token in its hover
MAX_CAPTURE_MB = 1024         # vectors kept over a corpus (here and in context_search): refused beyond


@dataclass
class HeadQK:
    """Queries and keys of one head over some texts, one row per token (rows of q and k line up)."""

    layer: int
    head: int
    kv_head: int
    q: np.ndarray                  # [M, D] float32
    k: np.ndarray                  # [M, D] float32
    text_id: list[str]             # [M]
    position: np.ndarray           # [M] int, position within its text
    tokens: dict[str, list[str]]   # text id -> its token strings (for contexts)
    scale: float
    causal: bool


def head_qk(lm, token_ids: Sequence[int], layer: int, head: int) -> tuple[np.ndarray, np.ndarray, dict]:
    """(q [N, D], k [N, D] of head's kv head, layer_qk's dict) for one tokenised text."""
    from .ondemand import layer_qk

    qk = layer_qk(lm, list(token_ids), layer)
    n_heads, n_kv = qk["q"].shape[0], qk["k"].shape[0]
    if not 0 <= head < n_heads:
        raise InputError(f"no head {head}: layer {layer} has heads 0..{n_heads - 1}")
    kv = head // (n_heads // n_kv)
    return qk["q"][head], qk["k"][kv], qk


@dataclass
class LayerQK:
    """Queries [H, M, D] and keys [Hkv, M, D] of every head of one layer over some texts."""

    layer: int
    q: np.ndarray
    k: np.ndarray
    text_id: list[str]
    position: np.ndarray
    tokens: dict[str, list[str]]
    scale: float
    causal: bool

    def head(self, head: int) -> HeadQK:
        n_heads, n_kv = self.q.shape[0], self.k.shape[0]
        if not 0 <= head < n_heads:
            raise InputError(f"no head {head}: layer {self.layer} has heads 0..{n_heads - 1}")
        kv = head // (n_heads // n_kv)
        return HeadQK(self.layer, head, kv, self.q[head], self.k[kv], self.text_id, self.position, self.tokens,
                      self.scale, self.causal)


def check_capture_size(nbytes: int, limit_mb: int = MAX_CAPTURE_MB, what: str = "captured vectors") -> None:
    """Refuse, with a message, a corpus whose kept vectors would pass limit_mb (checked per text)."""
    if nbytes > limit_mb * 2 ** 20:
        raise InputError(f"the {what} of this corpus would take more than {limit_mb} MiB; "
                         "use fewer or shorter texts")


def collect_layer(lm, texts: Sequence[tuple[str, str]], layer: int, max_tokens: int = 1024,
                  progress: Optional[Callable[[float, str], None]] = None,
                  cancel: Optional[Callable[[], bool]] = None) -> LayerQK:
    """Capture layer `layer`'s q/k of every text (one early-stopped forward each, ondemand.layer_qk)."""
    from .engine import token_strings, tokenize_texts
    from .ondemand import layer_qk

    if not texts:
        raise InputError("no texts to embed")
    qs, ks, tids, pos, toks = [], [], [], [], {}
    meta: dict = {}
    for i, tid, ids in tokenize_texts(lm, texts, max_tokens, cancel):
        meta = layer_qk(lm, ids, layer)
        qs.append(meta["q"])
        ks.append(meta["k"])
        check_capture_size(sum(a.nbytes for a in qs + ks), what="query and key vectors")
        tids += [tid] * len(ids)
        pos.append(np.arange(len(ids)))
        toks[tid] = token_strings(lm, ids)
        if progress is not None:
            progress((i + 1) / len(texts), f"text {i + 1}/{len(texts)}")
    return LayerQK(layer, np.concatenate(qs, 1), np.concatenate(ks, 1), tids, np.concatenate(pos), toks,
                   float(meta["scale"]), bool(meta["causal"]))


def collect(lm, texts: Sequence[tuple[str, str]], layer: int, head: int, max_tokens: int = 1024,
            progress: Optional[Callable[[float, str], None]] = None,
            cancel: Optional[Callable[[], bool]] = None) -> HeadQK:
    """collect_layer, then one head (GQA: its kv head's keys)."""
    if not 0 <= head < lm.info.n_heads:
        raise InputError(f"no head {head}: the model has heads 0..{lm.info.n_heads - 1}")
    return collect_layer(lm, texts, layer, max_tokens, progress, cancel).head(head)


def align_keys(q: np.ndarray, k: np.ndarray, scale: float = 1.0) -> tuple[np.ndarray, np.ndarray, dict]:
    """The module docstring's two transforms: (q', k'', {'scale_c', 'translation_norm', 'attention_scale'}).
    Every row softmax_j(q'_i . k''_j) equals the model's softmax_j(q_i . k_j * scale) (tested)."""
    q = np.asarray(q, np.float64)
    k = np.asarray(k, np.float64)
    nq, nk = np.linalg.norm(q, axis=1).mean(), np.linalg.norm(k, axis=1).mean()
    c = float(np.sqrt(nk / nq)) if nq > 0 and nk > 0 else 1.0
    r = float(np.sqrt(scale))
    q2, k2 = q * (r * c), k * (r / c)
    shift = q2.mean(0) - k2.mean(0)
    return q2, k2 + shift, {"scale_c": c, "translation_norm": float(np.linalg.norm(shift)),
                            "attention_scale": float(scale)}


def sample_tokens(m: int, max_points: int, seed: int = SEED) -> np.ndarray:
    """Sorted indices of the tokens kept: all when 2m <= max_points, else max_points // 2 at random."""
    if max_points < 2:
        raise InputError("max points must be at least 2")
    keep = max_points // 2
    if m <= keep:
        return np.arange(m)
    return np.sort(np.random.default_rng(seed).choice(m, size=keep, replace=False))


def reduce_2d(x: np.ndarray, method: str = DEFAULT_METHOD, seed: int = SEED) -> tuple[np.ndarray, dict]:
    """[P, D] -> ([P, 2], info) with scikit-learn (see the module docstring for the choice);
    info holds PCA's explained_variance_ratio."""
    x = np.asarray(x, np.float64)
    if method not in METHODS:
        raise InputError(f"unknown embedding method {method!r}; choose one of {', '.join(METHODS)}")
    if x.shape[0] < 3:
        raise InputError(f"{x.shape[0] // 2} tokens are too few to embed (at least 2 are needed)")
    if method == "pca":
        from sklearn.decomposition import PCA
        pca = PCA(n_components=2, svd_solver="full")
        xy = pca.fit_transform(x)
        return xy, {"explained_variance_ratio": [float(v) for v in pca.explained_variance_ratio_]}
    from sklearn.manifold import TSNE
    perplexity = float(min(30.0, (x.shape[0] - 1) / 3.0))
    xy = TSNE(n_components=2, init="pca", random_state=seed, perplexity=perplexity).fit_transform(x)
    return xy, {"perplexity": perplexity}


def context_of(tokens: Sequence[str], pos: int, width: int = CONTEXT_TOKENS) -> str:
    """The tokens around pos with the token itself in [brackets] (plain text; figures escape it)."""
    a, b = max(0, pos - width), min(len(tokens), pos + width + 1)
    return "".join(tokens[a:pos]) + "[" + tokens[pos] + "]" + "".join(tokens[pos + 1:b])


def embed(data: HeadQK, method: str = DEFAULT_METHOD, max_points: int = MAX_POINTS, seed: int = SEED) -> dict:
    """embedding.json: {'method', 'layer', 'head', 'kv_head', 'n_tokens', 'n_points', 'max_points', 'seed',
    'alignment', 'reduction', 'text_lengths' {text id: tokens},
    'points': [{kind, text_id, position, token, context, x, y}]}.
    Points list the sampled tokens' queries first, then their keys, in the same token order."""
    idx = sample_tokens(len(data.text_id), max_points, seed)
    q, k, info = align_keys(data.q, data.k, data.scale)  # centroids and norms of all tokens, not the sample
    xy, red = reduce_2d(np.concatenate([q[idx], k[idx]]), method, seed)
    out = {"method": method, "layer": data.layer, "head": data.head, "kv_head": data.kv_head,
           "n_tokens": len(data.text_id), "n_points": 2 * len(idx), "max_points": max_points, "seed": seed,
           "alignment": info, "reduction": red, "causal": data.causal,
           "text_lengths": {tid: len(toks) for tid, toks in data.tokens.items()}}
    pts = []
    for part, kind in ((0, "query"), (1, "key")):
        for r, t in enumerate(idx):
            tid, p = data.text_id[t], int(data.position[t])
            toks = data.tokens[tid]
            x, y = xy[part * len(idx) + r]
            pts.append({"kind": kind, "text_id": tid, "position": p, "token": toks[p],
                        "context": context_of(toks, p), "x": float(x), "y": float(y)})
    out["points"] = pts
    return out


def embed_layer(data: LayerQK, method: str = DEFAULT_METHOD, max_points: int = MAX_POINTS,
                seed: int = SEED) -> dict:
    """Every head of a layer (AttentionViz's matrix view): one embedding per head, the same sampled tokens
    in each, max_points per head. {'method', 'layer', 'heads': [embed(...) per head], 'points': all heads'
    points, each with its 'head'}."""
    heads = [embed(data.head(h), method, max_points, seed) for h in range(data.q.shape[0])]
    points = [dict(p, head=e["head"]) for e in heads for p in e["points"]]
    return {"method": method, "layer": data.layer, "n_heads": len(heads), "max_points": max_points, "seed": seed,
            "n_tokens": len(data.text_id), "heads": [{k: v for k, v in e.items() if k != "points"} for e in heads],
            "text_lengths": heads[0]["text_lengths"], "points": points}


def embedding_for_texts(lm, texts: Sequence[tuple[str, str]], layer: int, head: Optional[int], *,
                        method: str = DEFAULT_METHOD, max_points: int = MAX_POINTS, seed: int = SEED,
                        max_tokens: int = 1024, progress=None, cancel=None) -> dict:
    """collect + embed (head None: every head of the layer, embed_layer), arguments checked first."""
    if method not in METHODS:
        raise InputError(f"unknown embedding method {method!r}; choose one of {', '.join(METHODS)}")
    if not 2 <= max_points <= 200_000:
        raise InputError("max points must be between 2 and 200000")
    L, H = lm.info.n_layers, lm.info.n_heads
    if not 0 <= layer < L:
        raise InputError(f"no layer {layer}: the model has layers 0..{L - 1}")
    if head is not None and not 0 <= head < H:
        raise InputError(f"no head {head}: the model has heads 0..{H - 1}")
    data = collect_layer(lm, texts, layer, max_tokens, progress, cancel)
    out = embed_layer(data, method, max_points, seed) if head is None else embed(data.head(head), method,
                                                                                  max_points, seed)
    out["model"] = lm.info.name
    return out
