"""Export of the dataset views (corpus, Q/K embedding + context search, side by side): their figures are
built by the same page functions the app calls (visapp.pages.corpus / embedding / sidebyside `render`),
with the paper template, and restyled and rendered like every other export (render.paper_figure,
render.render); their numbers come from the stored result itself (per head, per text, per point, per
match), not from the figure.

These views show a corpus run, an embedding or a comparison, not the current analysis, so their specs
take the view's stored data (`data`) instead of the registry's Context: DATASET_REGISTRY maps a view
to its DatasetFigure parts (visapp.export.registry re-exports it).
"""
from __future__ import annotations

import re
from dataclasses import dataclass, field
from typing import Any, Callable, Optional

import plotly.graph_objects as go

from compute.errors import InputError

from ..pages import corpus, embedding, sidebyside
from ..templates import SCREEN
from .options import ExportOptions
from .render import paper_figure, paper_template_name, plain_title, render
from .tables import Table, data_bytes, heatmap_tables, py


@dataclass
class DatasetData:
    """What one dataset view shows: its stored result(s) and control values."""

    view: str
    result: Any                                  # corpus run | embedding | side-by-side dict
    settings: dict = field(default_factory=dict)  # metric, color_by, head (l, h), groups
    search: Optional[dict] = None                # embedding view: the context-search result


@dataclass(frozen=True)
class DatasetFigure:
    view: str
    part: str
    label: str
    build: Callable[[DatasetData, str], go.Figure]
    tables: Callable[[DatasetData, go.Figure], dict]
    aspect: tuple[float, float] = (0.8, 0.45)
    caption: Callable[[DatasetData], str] = lambda d: ""
    unavailable: Callable[[DatasetData], Optional[str]] = lambda d: None

    @property
    def name(self) -> str:
        return f"{self.view}/{self.part}"


# ---------------------------------------------------------------- tables from the stored results

def corpus_head_table(d: DatasetData) -> Table:
    ov = d.result["overview"]
    metric = d.settings.get("metric") or corpus.DEFAULT_METRIC
    m = ov["metrics"][metric if metric in ov["metrics"] else corpus.DEFAULT_METRIC]
    rows = [[l, h, ov["role_mode"][l][h], py(ov["role_stability"][l][h]), py(m["mean"][l][h]), py(m["std"][l][h]),
             m["n"][l][h]] for l in range(ov["n_layers"]) for h in range(ov["n_heads"])]
    return Table(["layer", "head", "role_mode", "role_stability", f"{metric}_mean", f"{metric}_std", "n_texts"], rows)


def corpus_text_table(d: DatasetData) -> Table:
    ov, kinds = d.result["overview"], d.result.get("kinds") or []
    pt = ov["per_text"]
    rows = [[tid, kinds[i] if i < len(kinds) else None, d.result.get("n_tokens", {}).get(tid), py(pt["sink_rate"][i]),
             py(pt["entropy_mean"][i]), py(pt["entropy_norm_mean"][i])] for i, tid in enumerate(ov["ids"])]
    return Table(["text_id", "kind", "n_tokens", "sink_rate", "entropy_mean", "entropy_norm_mean"], rows)


def point_table(emb: dict) -> Table:
    layer_mode = emb.get("heads") is not None
    cols = (["head"] if layer_mode else []) + ["kind", "text_id", "position", "token", "x", "y"]
    rows = [([p["head"]] if layer_mode else []) + [p["kind"], p["text_id"], p["position"], p["token"], py(p["x"]),
                                                    py(p["y"])] for p in emb["points"]]
    return Table(cols, rows)


def hit_table(res: dict) -> Table:
    rows = [[i + 1, py(h["similarity"]), h["text_id"], h["position"], h["token"], "".join(h["context_tokens"]),
             "; ".join(f"{a['position']}:{a['token']}:{a['weight']:.4f}" for a in h["attends"])]
            for i, h in enumerate(res["hits"])]
    return Table(["rank", "cosine", "text_id", "position", "token", "context", "attends (position:token:weight)"],
                 rows)


def delta_table(d: DatasetData) -> Table:
    diff = d.result["diff"]
    metric = d.settings.get("metric") or sidebyside.DEFAULT_METRIC
    metric = metric if metric in diff["metrics"] else sidebyside.DEFAULT_METRIC
    if diff.get("deltas") is None:
        rows = [[side, l, py(v)] for side in ("a", "b") for l, v in enumerate(diff["layer_profiles"][metric][side])]
        return Table(["side", "layer", f"{metric}_layer_mean"], rows)
    va, vb, dd = diff["values"]["a"][metric], diff["values"]["b"][metric], diff["deltas"][metric]
    rows = [[l, h, py(va[l][h]), py(vb[l][h]), py(dd[l][h])] for l in range(len(dd)) for h in range(len(dd[l]))]
    return Table(["layer", "head", f"{metric}_a", f"{metric}_b", f"{metric}_b_minus_a"], rows)


def match_rows_table(d: DatasetData) -> Table:
    rows = [[m["a"], m["b"], py(m["js"]), m["nearest"], py(m["nearest_js"])] for m in d.result["diff"]["matches"]]
    return Table(["head_a", "matched_head_b", "js_distance", "nearest_head_b", "nearest_js"], rows)


# ---------------------------------------------------------------- builders (the pages' render functions)

def _sel(d: DatasetData):
    return d.settings.get("head") or (0, 0)


def _corpus(i):
    return lambda d, t: corpus.render(d.result, d.settings.get("metric"), _sel(d), template=t)[i]


def _sbs(i):
    return lambda d, t: sidebyside.render(d.result, d.settings.get("metric"), _sel(d), template=t)[i]


def _no_matches(d):
    m = d.result["diff"]["matching"]
    return None if m["available"] else m["reason"]


def _no_search(d):
    return None if d.search else "no context search yet (press Search the corpus)"


def _corpus_txt(d):
    r = d.result
    return f"{r['overview']['n_texts']} texts ({r['label']}), {r['model']}"


LAYER_HEAD = (1.1, 0.6)
DATASET_REGISTRY: dict[str, list[DatasetFigure]] = {
    "corpus": [
        DatasetFigure("corpus", "grid", "Dataset overview (per head)", _corpus(1),
                      lambda d, f: {"heads": corpus_head_table(d)}, LAYER_HEAD,
                      lambda d: f"Per-head mean of {d.settings.get('metric') or corpus.DEFAULT_METRIC} over "
                                f"{_corpus_txt(d)}; symbol = most frequent role; size = role stability."),
        DatasetFigure("corpus", "spread", "Spread over texts", _corpus(2),
                      lambda d, f: {"heads": corpus_head_table(d)}, LAYER_HEAD,
                      lambda d: f"Std over texts of {d.settings.get('metric') or corpus.DEFAULT_METRIC}, "
                                f"{_corpus_txt(d)}."),
        DatasetFigure("corpus", "stability", "Role stability", _corpus(3),
                      lambda d, f: {"heads": corpus_head_table(d)}, LAYER_HEAD,
                      lambda d: f"Share of texts on which each head has its most frequent role, {_corpus_txt(d)}."),
        DatasetFigure("corpus", "distributions", "Per-text distributions", _corpus(4),
                      lambda d, f: {"texts": corpus_text_table(d)}, (0.62, 0.36),
                      lambda d: f"Sink rate and mean normalised entropy of each text, {_corpus_txt(d)}."),
    ],
    "embedding": [
        DatasetFigure("embedding", "scatter", "Query/key embedding",
                      lambda d, t: embedding.render(d.result, d.settings.get("color_by") or "kind",
                                                    d.settings.get("groups"), template=t)[0],
                      lambda d, f: {"points": point_table(d.result)}, (0.9, 0.55),
                      lambda d: f"Queries and keys of layer {d.result['layer']} head "
                                f"{d.result.get('head', 'all')} ({d.result['method'].upper()}, "
                                f"{d.result.get('n_points', len(d.result['points']))} points)."),
        DatasetFigure("embedding", "search", "Context search hits",
                      lambda d, t: embedding.render_search(d.search, template=t),
                      lambda d, f: {"hits": hit_table(d.search)}, (0.9, 0.6),
                      lambda d: f"Corpus tokens nearest to the query token by {d.search['by']} (cosine), "
                                f"layer {d.search['layer']} head {d.search['head']}.", _no_search),
    ],
    "sidebyside": [
        DatasetFigure("sidebyside", "delta", "Per-head difference (B − A)", _sbs(1),
                      lambda d, f: {"heads": delta_table(d)}, LAYER_HEAD,
                      lambda d: f"{d.settings.get('metric') or sidebyside.DEFAULT_METRIC}: "
                                f"{d.result['diff']['b']['label']} − {d.result['diff']['a']['label']} per head."),
        DatasetFigure("sidebyside", "match", "Heads matched by JS distance", _sbs(2),
                      lambda d, f: {"matches": match_rows_table(d)}, LAYER_HEAD,
                      lambda d: "Jensen-Shannon distance (base 2) of each head of A to its one-to-one partner in B.",
                      _no_matches),
        DatasetFigure("sidebyside", "map_a", "Selected head, A", _sbs(4), lambda d, f: heatmap_tables(f),
                      (0.95, 0.62), lambda d: f"Attention map of head {_sel(d)[0]}.{_sel(d)[1]} in A."),
        DatasetFigure("sidebyside", "map_b", "Selected head, B", _sbs(5), lambda d, f: heatmap_tables(f),
                      (0.95, 0.62), lambda d: "Attention map of the same (or matched) head in B."),
    ],
}

CLI = {"corpus": "python -m compute analyze --corpus FILE.jsonl --out DIR",
       "embedding": "python -m compute embed --corpus FILE.jsonl --layer L --head H --out DIR; "
                    "python -m compute search ... --out DIR",
       "sidebyside": "python -m compute diff --model A --model-b B --text-file F --out DIR"}


def dataset_spec(view: str, part: Optional[str] = None) -> DatasetFigure:
    if view not in DATASET_REGISTRY:
        raise InputError(f"no dataset view {view!r}")
    sp = DATASET_REGISTRY[view]
    if not part:
        return sp[0]
    for s in sp:
        if s.part == part:
            return s
    raise InputError(f"{view} has no part {part!r}: choose one of {', '.join(s.part for s in sp)}")


def provenance(d: DatasetData, sp: DatasetFigure, opts: ExportOptions) -> dict:
    from .provenance import software_versions
    r = d.result or {}
    src = {"corpus": lambda: {"model": r["model"], "corpus": r["label"], "run_key": r["run"], "texts": r["ids"],
                              "options": r["aggregate"].get("options")},
           "embedding": lambda: {"model": r.get("model"), "layer": r["layer"], "head": r.get("head"),
                                 "method": r["method"], "max_points": r["max_points"], "seed": r["seed"],
                                 "alignment": r.get("alignment"), "source": r.get("source")},
           "sidebyside": lambda: {"a": r["diff"]["a"], "b": r["diff"]["b"], "matching": r["diff"]["matching"]}}
    return {"figure": sp.name, "caption": sp.caption(d),
            "view": {k: v for k, v in d.settings.items() if k != "groups"}, "source": src[d.view](),
            "headless": CLI[d.view], "export": {"format": opts.fmt, "width": opts.width, "font": opts.font,
                                                 "size_pt": opts.size_pt}, "software": software_versions()}


def file_stem(d: DatasetData, sp: DatasetFigure) -> str:
    r = d.result or {}
    model = r.get("model") or (r.get("diff") or {}).get("a", {}).get("model") or "attnvis"
    return re.sub(r"[^A-Za-z0-9._-]+", "_", f"{model}_{sp.view}_{sp.part}")


def export(d: DatasetData, part: Optional[str], what: str, opts: ExportOptions) -> tuple[bytes, str, str]:
    """(content, file name, message) of one figure ('figure') or its numbers ('csv' | 'json')."""
    sp = dataset_spec(d.view, part)
    if d.result is None:
        raise InputError(f"nothing to export yet: run the {d.view} view first")
    why = sp.unavailable(d)
    if why:
        raise InputError(f"{sp.name}: not available ({why})")
    opts.validate()
    stem = file_stem(d, sp)
    if what == "figure":
        raw = sp.build(d, paper_template_name(opts.font, float(opts.size_pt)))
        fig = paper_figure(raw, opts, sp.aspect[0] if opts.width == "single" else sp.aspect[1])
        content = render(fig, opts, title=plain_title(raw.layout.title.text) or sp.label)
        return content, f"{stem}.{opts.fmt}", f"exported {stem}.{opts.fmt}"
    if what not in ("csv", "json"):
        raise InputError(f"unknown export {what!r}")
    raw = sp.build(d, SCREEN)
    tables = sp.tables(d, raw)
    content, ext = data_bytes(tables, what, provenance(d, sp, opts) if what == "json" else None)
    return content, f"{stem}.data.{ext}", f"exported {stem}.data.{ext} ({', '.join(tables)})"
