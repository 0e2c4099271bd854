"""Built-in probes that score heads on inputs made for the purpose (independent of the user's text).

Induction probe
  x = T random token ids (distinct, special tokens excluded), the input is x followed by x again
  (wrapped in the tokenizer's special tokens, if it adds any). With s = start of the first copy,
  query i = s + T + k (k = 0..T-1, the second copy) has its earlier occurrence at s + k; the token
  after it is at s + k + 1 = i - T + 1.
    induction[l,h] = mean over the B sequences and the T queries of A_{i, i-T+1}
    control[l,h]   = the same positions on 2T distinct random tokens (no repetition)
  Induction heads score far above their control (which is about 1/i for a broad head).

Retrieval probe (Wu et al. 2024, "Retrieval Head Mechanistically Explains Long-Context Factuality")
  A haystack (shipped prose) with a needle sentence "The secret words are: w1 ... wm." inserted at
  depth d, then "What are the secret words? The secret words are: w1 ... wm." Teacher-forced: the
  answer's token t is "generated" by query t-1. Head (l,h) copies token t when its argmax attention
  at query t-1 (engine top1_idx) lands on a needle token with the same id as t (and, by default,
  the model's own top-1 prediction at t-1 is that token, i.e. it really generated it).
    retrieval[l,h] = mean over trials of (#answer tokens copied by the head) / (#answer tokens)
  Trials put the needle at depths linspace(0.2, 0.8, trials). Heads above 0.1 are retrieval heads.
"""
from __future__ import annotations

import time
from pathlib import Path
from typing import Callable, Optional

import numpy as np
import torch

from kernels import StatsConfig

from ..capture import check_cancel
from ..engine import capture, next_token_loss, stack_layers
from .tokens import token_char_spans

DATA = Path(__file__).with_name("data")


_CACHE: dict = {}


def cached(probe, lm, cancel=None, **kw) -> dict:
    """A probe's result depends on the model and its parameters only, not on the user's text:
    computed once per process (the app re-analyses texts with the same model)."""
    key = (probe.__name__, lm.info.source, lm.info.name, lm.device, tuple(sorted(kw.items())))
    if key not in _CACHE:
        _CACHE[key] = probe(lm, cancel=cancel, **kw)
    return _CACHE[key]


def induction_score(maps: np.ndarray, start: int, period: int) -> np.ndarray:
    """Pure: maps [..., N, N] -> [...] mean over i in [start+T, start+2T) of A[i, i-T+1]."""
    i = np.arange(start + period, start + 2 * period)
    return maps[..., i, i - period + 1].mean(-1)


def _wrap(lm, core: list[int]) -> tuple[list[int], int]:
    """core wrapped in the tokenizer's special tokens; returns (ids, index where core starts)."""
    tok = lm.tokenizer
    try:
        ids = list(tok.build_inputs_with_special_tokens(list(core)))
    except Exception:          # tokenizers without the method: no special tokens
        return list(core), 0
    for s in range(len(ids) - len(core) + 1):
        if ids[s:s + len(core)] == list(core):
            return ids, s
    return list(core), 0


def _random_ids(lm, rng: np.random.Generator, shape: tuple) -> np.ndarray:
    special = set(int(i) for i in lm.tokenizer.all_special_ids)
    vocab = len(lm.tokenizer)
    rows = []
    for _ in range(shape[0]):
        row = []
        while len(row) < shape[1]:
            cand = rng.choice(vocab, size=shape[1] * 2, replace=False)
            row = [int(c) for c in cand if int(c) not in special][:shape[1]]
        rows.append(row)
    return np.array(rows, dtype=np.int64)


def _layer_maps(lm, batch_ids: list[list[int]], mem_budget_mb: int, cancel=None) -> np.ndarray:
    """[L, B, H, N, N] exact maps of a batch of equal-length probe sequences."""
    L = lm.info.n_layers

    def on_layer(_layer):
        check_cancel(cancel)

    sess, _ = capture(lm, torch.tensor(batch_ids), config=StatsConfig(full_maps=True, mem_budget_mb=mem_budget_mb),
                      progress=on_layer)
    return np.stack([sess.results[l].maps.numpy() for l in range(L)])


def induction_probe(lm, length: int = 40, batch: int = 4, seed: int = 0, mem_budget_mb: int = 256,
                    cancel: Optional[Callable[[], bool]] = None) -> dict:
    """{'score': [L, H], 'control': [L, H], 'length': T, 'batch': B, 'seed', 'time_s', 'start' (index
    of the first copy), 'example_ids' (the first repeated sequence),
    'top_heads': [{'head': 'L.H', 'score', 'control'} x 10]}"""
    t0 = time.perf_counter()
    rng = np.random.default_rng(seed)
    core = _random_ids(lm, rng, (batch, length))
    ctl = _random_ids(lm, rng, (batch, 2 * length))
    rep_ids, ctl_ids, start = [], [], 0
    for b in range(batch):
        ids, start = _wrap(lm, list(core[b]) + list(core[b]))
        rep_ids.append(ids)
        ctl_ids.append(_wrap(lm, list(ctl[b]))[0])
    score = induction_score(_layer_maps(lm, rep_ids, mem_budget_mb, cancel), start, length).mean(1)
    control = induction_score(_layer_maps(lm, ctl_ids, mem_budget_mb, cancel), start, length).mean(1)
    order = np.argsort(-score.ravel())[:10]
    H = score.shape[1]
    return {"score": score, "control": control, "length": length, "batch": batch, "seed": seed,
            "start": start, "example_ids": rep_ids[0], "time_s": time.perf_counter() - t0,
            "top_heads": [{"head": f"{k // H}.{k % H}", "score": float(score.ravel()[k]),
                           "control": float(control.ravel()[k])} for k in order]}


def copy_score(top1_idx: np.ndarray, ids: list[int], answer: list[int], needle: list[int],
               correct: Optional[np.ndarray] = None) -> np.ndarray:
    """Pure: top1_idx [L, H, N]; answer / needle token positions; correct [len(answer)] bool (model
    predicted the answer token) or None -> [L, H] fraction of answer tokens the head copied."""
    ids = np.asarray(ids)
    needle_set = np.zeros(len(ids), bool)
    needle_set[needle] = True
    L, H, _ = top1_idx.shape
    hits = np.zeros((L, H))
    for k, t in enumerate(answer):
        if t < 1 or (correct is not None and not correct[k]):
            continue
        j = top1_idx[:, :, t - 1]
        ok = (j >= 0) & needle_set[np.clip(j, 0, None)] & (ids[np.clip(j, 0, None)] == ids[t])
        hits += ok
    return hits / max(1, len(answer))


def _tokens_in(spans: np.ndarray, a: int, b: int) -> list[int]:
    return [t for t, (s, _) in enumerate(spans) if a <= s < b]


def build_needle_prompt(haystack: str, words: list[str], depth: float) -> tuple[str, tuple, tuple]:
    """(text, needle words char span, answer words char span): the needle goes after the sentence
    nearest to `depth` of the haystack."""
    ends = [i + 1 for i, c in enumerate(haystack) if c == "." and (i + 1 == len(haystack) or haystack[i + 1] in " \n")]
    cut = min(ends, key=lambda e: abs(e - depth * len(haystack))) if ends else len(haystack)
    w = " ".join(words)
    needle = f" The secret words are: {w}."
    head = haystack[:cut] + needle
    n0 = len(haystack[:cut]) + len(" The secret words are: ")
    body = head + haystack[cut:].rstrip() + "\n\nWhat are the secret words? The secret words are: "
    a0 = len(body)
    text = body + w + "."
    return text, (n0, n0 + len(w)), (a0, a0 + len(w))


def retrieval_probe(lm, trials: int = 3, n_words: int = 6, seed: int = 0, require_correct: bool = True,
                    haystack_chars: int = 1500, cancel: Optional[Callable[[], bool]] = None) -> dict:
    """{'score': [L, H], 'trials': [{'depth', 'words', 'n_tokens', 'answer_tokens', 'model_copy_accuracy'}],
    'require_correct', 'time_s', 'top_heads': [{'head', 'score'} x 10], 'note'}"""
    t0 = time.perf_counter()
    rng = np.random.default_rng(seed + 1)
    words_all = (DATA / "needle_words.txt").read_text().split()
    hay = (DATA / "haystack.txt").read_text()
    limit = min(lm.info.max_positions, 512) * 3          # chars: stay well inside short-context models
    hay = hay[:min(haystack_chars, limit)]
    hay = hay[:hay.rfind(".") + 1]
    L = lm.info.n_layers
    use_correct = require_correct and lm.info.causal
    scores, info = [], []
    for depth in np.linspace(0.2, 0.8, trials) if trials > 1 else [0.5]:
        check_cancel(cancel)
        words = [str(w) for w in rng.choice(words_all, n_words, replace=False)]
        text, nspan, aspan = build_needle_prompt(hay, words, float(depth))
        ids = lm.tokenizer(text, add_special_tokens=True)["input_ids"]
        spans = token_char_spans(lm, text, ids)
        needle, answer = _tokens_in(spans, *nspan), _tokens_in(spans, *aspan)
        input_ids = torch.tensor([ids])
        sess, hidden = capture(lm, input_ids, config=StatsConfig(), return_hidden=use_correct)
        top1 = stack_layers(sess.results, L, "top1_idx")
        correct = None
        acc = None
        if use_correct:
            _, pred = next_token_loss(lm, hidden, input_ids)
            correct = np.array([t >= 1 and pred[t - 1] == ids[t] for t in answer])
            acc = float(correct.mean())
        scores.append(copy_score(top1, ids, answer, needle, correct))
        info.append({"depth": float(depth), "words": words, "n_tokens": len(ids),
                     "answer_tokens": len(answer), "model_copy_accuracy": acc})
    score = np.mean(scores, 0)
    H = score.shape[1]
    order = np.argsort(-score.ravel())[:10]
    return {"score": score, "trials": info, "require_correct": use_correct,
            "time_s": time.perf_counter() - t0,
            "top_heads": [{"head": f"{k // H}.{k % H}", "score": float(score.ravel()[k])} for k in order],
            "note": None if lm.info.causal else
            "bidirectional model: copies counted without checking the model's prediction (no LM head)"}
