"""Attention basins over structured items (retrieved documents, few-shot examples): how much
attention each item gets from the query region, whether the middle items are neglected, and an
AttnRank-style reordering.

Items are character spans of the text, found automatically (find_items) or given (items_from_spec),
mapped to the tokens whose first non-space character lies in the span. Token 0 is never counted in
an item (it is the first-token sink). The query region Q defaults to the tokens after the last
item (trailing special tokens such as [SEP] excluded).

Exact masses (rows of Q against all keys, from the engine's own probability blocks; never n x n):
  RC[l,h,j]        = sum_{i in Q} A_ij                       (region column sums)
  mass[l,h,k]      = sum_{j in S_k} RC[l,h,j] / |Q|          mean over Q of the attention on item k
  sink / query_self / other = the same for token 0, for Q itself and for everything else; with the
                     items they add up to 1 for every head (each attention row sums to 1)
  b_k              = mean over layers and heads of mass[., ., k]; per layer: mean over heads
  density_k        = b_k / |S_k|   (per token, fair to items of unequal length)
  depth            = ((b_first + b_last) / 2 - mean(b_middle)) / mean(b)   (K >= 3; > 0: a basin,
                     the middle items get less); depth_density uses density_k instead of b_k
AttnRank-style order (Attention Basin paper): a positional preference pref[p] for K item positions is
estimated from a calibration set (the shipped prompts in data/basin_calibration.json, or this
prompt itself): per calibration prompt the density shares d_k / sum d are scaled by K_c, put at
relative positions k / (K_c - 1) and linearly interpolated at p / (K - 1); pref is their mean (1 =
average attention). The important items (in the order given) go to the positions with the highest
pref, the other items keep their relative order in the remaining positions.
"""
from __future__ import annotations

import json
import re
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Optional

import numpy as np

from ..errors import InputError
from ..result import AttentionResult
from .common import plain
from ..capture import row_blocks
from .tokens import token_char_spans

DATA = Path(__file__).with_name("data")
_MARKER = re.compile(r"(?im)^[ \t]*(?:(?:document|doc|passage|source)\s*\[?\s*\d+\s*\]?|\[\d+\]|example\s*\d+\s*:)")


@dataclass
class Layout:
    """Items mapped onto tokens. spans: [(start, end)] chars; tokens: [np.ndarray of token indices];
    query: (q0, q1) token range; labels; mode 'markers' | 'blocks' | 'spans'."""

    spans: list
    labels: list
    tokens: list
    query: tuple
    mode: str
    token0_item: Optional[int] = None      # the item that held token 0 (dropped from it)

    @property
    def n_items(self) -> int:
        return len(self.spans)


def _line_end(text: str, pos: int) -> int:
    e = text.find("\n", pos)
    return len(text) if e < 0 else e


def _rstrip_span(text: str, s: int, e: int) -> tuple[int, int]:
    while e > s and text[e - 1].isspace():
        e -= 1
    return s, e


def find_items(text: str) -> dict:
    """{'mode', 'items': [(start, end, label)], 'query': None} from markers ('Document [k]',
    'Document k', 'Passage k', '[k]', 'Example k:' at a line start; the last item ends at the next
    blank line, else at the end of its line) or else blank-line separated blocks (the last block is
    the query). Raises InputError when neither gives at least two items."""
    marks = [m.start() + len(m.group(0)) - len(m.group(0).lstrip()) for m in _MARKER.finditer(text)]
    if len(marks) >= 2:
        items = []
        for k, s in enumerate(marks):
            if k + 1 < len(marks):
                e = marks[k + 1]
            else:
                blank = re.compile(r"\n[ \t]*\n").search(text, s)
                e = blank.start() if blank else _line_end(text, s)
            s, e = _rstrip_span(text, s, e)
            label = text[s:_line_end(text, s)].strip()[:40]
            items.append((s, e, label))
        return {"mode": "markers", "items": items, "query": None}
    blocks, start = [], None
    pos = 0
    for line in text.splitlines(keepends=True):
        if line.strip():
            if start is None:
                start = pos + len(line) - len(line.lstrip())
        elif start is not None:
            blocks.append(_rstrip_span(text, start, pos))
            start = None
        pos += len(line)
    if start is not None:
        blocks.append(_rstrip_span(text, start, len(text)))
    if len(blocks) >= 3:
        items = [(s, e, f"block {k + 1}") for k, (s, e) in enumerate(blocks[:-1])]
        return {"mode": "blocks", "items": items, "query": blocks[-1]}
    raise InputError("could not find items: separate them with blank lines (the last block is the question), "
                     "or start them with 'Document [k]' / 'Example k:' lines, or give character spans")


def items_from_spec(spec, text: str) -> dict:
    """Validate an explicit spec: {'items': [[s, e] | {'start', 'end', 'label'?, 'important'?}],
    'query': [s, e] | None, 'important': [k, ...]} (0-based character offsets, end exclusive).
    Returns {'mode': 'spans', 'items': [(s, e, label)], 'query', 'important': [k]}."""
    if not isinstance(spec, dict) or not isinstance(spec.get("items"), list):
        raise InputError("items must be an object with an 'items' list of [start, end] character spans")
    items, important = [], list(spec.get("important") or [])
    for k, it in enumerate(spec["items"]):
        if isinstance(it, dict):
            s, e, label = it.get("start"), it.get("end"), it.get("label") or f"item {k}"
            if it.get("important"):
                important.append(k)
        elif isinstance(it, (list, tuple)) and len(it) == 2:
            (s, e), label = it, f"item {k}"
        else:
            raise InputError(f"item {k}: expected [start, end] or {{'start': .., 'end': ..}}")
        if not (isinstance(s, int) and isinstance(e, int)) or isinstance(s, bool) or isinstance(e, bool):
            raise InputError(f"item {k}: start and end must be integers (character offsets)")
        if not 0 <= s < e <= len(text):
            raise InputError(f"item {k} span {s}-{e} is out of range or empty (the text has {len(text)} characters)")
        items.append((s, e, str(label)))
    if len(items) < 2:
        raise InputError("give at least two items")
    order = sorted(range(len(items)), key=lambda k: items[k][0])
    if order != list(range(len(items))):
        raise InputError("items must be listed in text order")
    for a, b in zip(items, items[1:]):
        if b[0] < a[1]:
            raise InputError(f"items '{a[2]}' ({a[0]}-{a[1]}) and '{b[2]}' ({b[0]}-{b[1]}) overlap")
    q = spec.get("query")
    if q is not None:
        if not (isinstance(q, (list, tuple)) and len(q) == 2 and all(isinstance(v, int) for v in q)):
            raise InputError("query must be [start, end] character offsets")
        if not 0 <= q[0] < q[1] <= len(text):
            raise InputError(f"query span {q[0]}-{q[1]} is out of range or empty")
        if any(q[0] < e and s < q[1] for s, e, _ in items):
            raise InputError("the query span overlaps an item")
        q = (int(q[0]), int(q[1]))
    bad = [k for k in important if not (isinstance(k, int) and 0 <= k < len(items))]
    if bad:
        raise InputError(f"important item index {bad[0]} is not an item (0..{len(items) - 1})")
    return {"mode": "spans", "items": items, "query": q, "important": sorted(set(important))}


def map_layout(found: dict, char_spans: np.ndarray) -> Layout:
    """Char spans -> token indices (a token belongs to the span holding its first non-space char)."""
    starts = char_spans[:, 0]
    toks, token0_item = [], None
    for k, (s, e, label) in enumerate(found["items"]):
        t = np.nonzero((starts >= s) & (starts < e))[0]
        if len(t) and t[0] == 0:
            token0_item = k
            t = t[1:]
        if len(t) == 0:
            raise InputError(f"item {k} ('{label}', characters {s}-{e}) covers no tokens"
                             + (" besides token 0" if token0_item == k else ""))
        toks.append(t)
    for k in range(1, len(toks)):
        if toks[k][0] <= toks[k - 1][-1]:
            raise InputError(f"items {k - 1} and {k} share tokens; leave at least one token between them")
    has_text = np.nonzero(starts >= 0)[0]
    if found.get("query") is not None:
        qs, qe = found["query"]
        qt = np.nonzero((starts >= qs) & (starts < qe))[0]
        if len(qt) == 0:
            raise InputError(f"the query span {qs}-{qe} covers no tokens")
        q0, q1 = int(qt[0]), int(qt[-1]) + 1
    else:
        after = has_text[has_text > toks[-1][-1]]
        if len(after) == 0:
            raise InputError("there are no tokens after the last item to use as the query region; "
                             "add the question after the items or give a query span")
        q0, q1 = int(toks[-1][-1]) + 1, int(after[-1]) + 1
    if q1 <= q0 or q0 < 1:
        raise InputError("the query region is empty")
    for k, t in enumerate(toks):
        if q0 <= t[-1] and t[0] < q1:
            raise InputError(f"the query region overlaps item {k}")
    return Layout(spans=[(s, e) for s, e, _ in found["items"]], labels=[l for _, _, l in found["items"]],
                  tokens=toks, query=(q0, q1), mode=found["mode"], token0_item=token0_item)


def resolve_layout(text: str, char_spans: np.ndarray, spec) -> tuple[Layout, list[int]]:
    """spec: 'auto' | dict (items_from_spec) -> (Layout, important items from the spec)."""
    if spec == "auto" or spec is None:
        found = find_items(text)
    elif isinstance(spec, dict):
        found = items_from_spec(spec, text)
    else:
        raise InputError("items must be 'auto' or a spec with character spans")
    return map_layout(found, char_spans), list(found.get("important", []))


def basin_masses(rc: np.ndarray, layout_tokens: list, query: tuple) -> dict:
    """Pure: region column sums RC [L, H, N] -> {'mass' [L, H, K], 'sink' [L, H], 'query_self' [L, H],
    'other' [L, H]} (means over the query rows; they add up to 1 per head)."""
    q0, q1 = query
    nq = q1 - q0
    mass = np.stack([rc[..., t].sum(-1) for t in layout_tokens], -1) / nq
    sink = rc[..., 0] / nq
    qself = rc[..., q0:q1].sum(-1) / nq
    total = rc.sum(-1) / nq
    return {"mass": mass, "sink": sink, "query_self": qself, "other": total - mass.sum(-1) - sink - qself}


def depth_score(b) -> Optional[float]:
    """((b_first + b_last) / 2 - mean(b_middle)) / mean(b); None for fewer than 3 items or zero mean."""
    b = np.asarray(b, dtype=np.float64)
    if len(b) < 3 or b.mean() <= 0:
        return None
    return float(((b[0] + b[-1]) / 2 - b[1:-1].mean()) / b.mean())


def preference_curve(densities: list, k: int) -> np.ndarray:
    """Pure: per-prompt item densities (lists, any lengths >= 2) -> preference at k positions
    (1 = average attention), by linear interpolation on relative positions."""
    if k == 1:
        return np.ones(1)
    xt = np.arange(k) / (k - 1)
    curves = []
    for d in densities:
        d = np.asarray(d, dtype=np.float64)
        if len(d) < 2 or d.sum() <= 0:
            continue
        share = d / d.sum() * len(d)
        curves.append(np.interp(xt, np.arange(len(d)) / (len(d) - 1), share))
    if not curves:
        return np.ones(k)
    return np.mean(curves, 0)


def attnrank_order(pref, important: list[int]) -> list[int]:
    """Pure: item at each new position. Important items (in the order given) take the positions of
    highest preference (ties: earlier position first); the others keep their order elsewhere."""
    k = len(pref)
    ranked = sorted(range(k), key=lambda p: (-pref[p], p))
    imp = list(dict.fromkeys(important))
    order = [None] * k
    for item, pos in zip(imp, ranked):
        order[pos] = item
    rest = iter([i for i in range(k) if i not in set(imp)])
    return [o if o is not None else next(rest) for o in order]


def _densities(mass: np.ndarray, layout: Layout) -> np.ndarray:
    b = mass.mean((0, 1))
    return b / np.array([len(t) for t in layout.tokens], float)


_CALIBRATION: dict = {}


def shipped_calibration(lm, mem_budget_mb: int = 256) -> list:
    """Item densities of the shipped calibration prompts for this model (cached per process)."""
    key = (lm.info.source, lm.info.name)
    if key in _CALIBRATION:
        return _CALIBRATION[key]
    from ..engine import tokenize
    from .live import forward_reduce
    from .reductions import RegionColsum
    prompts = json.loads((DATA / "basin_calibration.json").read_text())["prompts"]
    out = []
    for text in prompts:                     # the calibration prompts' own forwards (cached per process)
        ids = tokenize(lm, text, lm.info.max_positions)
        spans = token_char_spans(lm, text, ids)
        lay = map_layout(find_items(text), spans)
        red = RegionColsum(*lay.query, lm.info.n_layers, lm.info.n_heads, len(ids))
        forward_reduce(lm, ids, [lambda call, red=red: [red.on_block(call.layer, a, e, p[0]) for a, e, p
                                                        in row_blocks(call, red.rows, mem_budget_mb)]])
        out.append(_densities(basin_masses(red.rc, lay.tokens, lay.query)["mass"], lay).tolist())
    _CALIBRATION[key] = out
    return out


def basin_section(lm, res: AttentionResult, layout: Layout, rc: np.ndarray, important: list[int] = (),
                  calibration: str = "shipped", per_token: bool = False, mem_budget_mb: int = 256) -> dict:
    """report.json 'basin': {mode, query {start, end, n_tokens}, items [{index, label, start, end,
    first_token, n_tokens, mass, density, share, important}], mass [K], density [K], share [K],
    per_layer [L][K], per_head [L][H][K], sink, query_self, other (means), sum_check,
    depth, depth_density, ranking {calibration, preference [K], important, suggested_order, note},
    per_token [[..]] | None, token0_item, definitions}"""
    t0 = time.perf_counter()
    m = basin_masses(rc, layout.tokens, layout.query)
    mass = m["mass"]                                       # [L, H, K]
    b = mass.mean((0, 1))
    sizes = np.array([len(t) for t in layout.tokens], float)
    dens = b / sizes
    share = b / b.sum() if b.sum() > 0 else np.zeros_like(b)
    important = sorted(set(important))
    bad = [k for k in important if not 0 <= k < layout.n_items]
    if bad:
        raise InputError(f"important item {bad[0]} is not an item (0..{layout.n_items - 1})")
    ranking = {"calibration": calibration, "preference": None, "important": important,
               "suggested_order": None, "note": None}
    # The preference is stored even with no item marked, so a viewer can order any marked set at once.
    if calibration == "self":
        pref = preference_curve([dens], layout.n_items)
        ranking["note"] = "preference from this prompt itself (position and content are confounded)"
    else:
        pref = preference_curve(shipped_calibration(lm, mem_budget_mb), layout.n_items)
        ranking["note"] = "preference from the shipped calibration prompts"
    ranking["preference"] = pref
    if important:
        ranking["suggested_order"] = attnrank_order(pref, important)
    else:
        ranking["note"] += "; mark items as important to get a suggested order"
    q0, q1 = layout.query
    total = m["sink"] + m["query_self"] + m["other"] + mass.sum(-1)
    return plain({
        "definitions": {
            "mass": "mean over query rows of the attention on the item's tokens (token 0 excluded), "
                    "averaged over layers and heads",
            "density": "mass / number of tokens of the item",
            "depth": "((b_first + b_last) / 2 - mean(b_middle)) / mean(b)",
        },
        "mode": layout.mode,
        "query": {"start": q0, "end": q1, "n_tokens": q1 - q0},
        "items": [{"index": k, "label": layout.labels[k], "start": layout.spans[k][0], "end": layout.spans[k][1],
                   "first_token": int(layout.tokens[k][0]), "n_tokens": int(sizes[k]), "mass": b[k],
                   "density": dens[k], "share": share[k], "important": k in important}
                  for k in range(layout.n_items)],
        "mass": b, "density": dens, "share": share,
        "per_layer": mass.mean(1), "per_head": mass,
        "sink": float(m["sink"].mean()), "query_self": float(m["query_self"].mean()),
        "other": float(m["other"].mean()),
        "sum_check": float(np.abs(total - 1.0).max()),
        "depth": depth_score(b), "depth_density": depth_score(dens),
        "ranking": ranking,
        "per_token": [(rc[..., t].mean((0, 1)) / (q1 - q0)).tolist() for t in layout.tokens] if per_token else None,
        "token0_item": layout.token0_item,
        "time_s": time.perf_counter() - t0,
    })
