"""Every exportable figure in one place: view -> its figures (parts) -> the view function that builds
it and the table of numbers it shows.

The builders here call the SAME view functions the app's callbacks call (visapp.pages.*), with the
same arguments, only with a paper template; nothing is re-drawn for export. Tables come from the
built figure itself (generic extraction of its traces), or, where a figure's numbers live in its
hover data or in edges, from the same result fields and service calls the view used.

Figure names (the CLI's --figure): overview, head:L.H, sinks, basin, entropy, graph(s), variants,
generate; a view's other figures are its parts (`sinks` + part `rate`), the first part is the default.
"""
from __future__ import annotations

import re
from dataclasses import dataclass, field
from functools import cached_property
from typing import Any, Callable, Optional

import numpy as np
import plotly.graph_objects as go

from compute.errors import InputError

from .. import service as _service
from ..pages import basin, entropy, generate, graphs, head, overview, sinks, variants
from ..pages.common import head_rows
from ..templates import SCREEN
from ..urlstate import METRICS, SCALES
from .tables import Table, _heatmap_values, edge_table, figure_tables, heatmap_tables, py


# ---------------------------------------------------------------- what a view's controls hold

@dataclass(frozen=True)
class ViewSettings:
    """The control values a view renders with (the app reads them from its components; the CLI
    from its options). Defaults are the app's defaults."""

    head: tuple[int, int] = (0, 0)
    metric: str = "sink_metric"          # overview colour
    size_by: str = "importance"          # overview glyph size
    colours: str = "Viridis"             # overview colour scale
    scale: str = "log"                   # head map colour scale
    pool: str = "max"                    # pooled blocks of long texts
    eps: float = 0.3                     # sinks view threshold
    head_threshold: float = 0.1          # head view token graph
    graph_threshold: float = 0.1         # graphs view token graph
    important: tuple[int, ...] = ()      # basin items marked important
    diff_variant: str = ""               # variants view: the difference map's variant ('' = the first)

    def validate(self) -> "ViewSettings":
        if self.metric not in METRICS:
            raise InputError(f"metric must be one of {', '.join(METRICS)}")
        if self.scale not in SCALES:
            raise InputError(f"scale must be one of {', '.join(SCALES)}")
        if self.pool not in ("max", "mean"):
            raise InputError("pool must be max or mean")
        if self.size_by not in ("importance", "none"):
            raise InputError("size must be importance or none")
        for name in ("eps", "head_threshold", "graph_threshold"):
            v = getattr(self, name)
            if not 0 < v < 1:
                raise InputError(f"{name.replace('_', ' ')} must lie between 0 and 1 (got {v})")
        return self

    def public(self) -> dict:
        return {"head": f"{self.head[0]}.{self.head[1]}", "metric": self.metric, "size_by": self.size_by,
                "colours": self.colours, "scale": self.scale, "pool": self.pool, "eps": self.eps,
                "head_threshold": self.head_threshold, "graph_threshold": self.graph_threshold,
                "important": list(self.important), "diff_variant": self.diff_variant}


@dataclass
class Context:
    """One analysis as the views see it: cached result, its summary, the control values, and the
    optional zoomed block (long texts) and variant comparison."""

    key: str
    res: Any
    summ: dict
    settings: ViewSettings = field(default_factory=ViewSettings)
    service: Any = _service
    zoom: Optional[dict] = None
    comparison: Any = None

    @property
    def head(self) -> tuple[int, int]:
        return self.settings.head

    @cached_property
    def rows(self):
        """(z, q0, k0) of the selected head, as the head and graphs views get them."""
        l, h = self.head
        return head_rows(self.res, self.key, l, h, self.service, self.zoom)

    @cached_property
    def full(self) -> Optional[np.ndarray]:
        """The selected head's full map when stored (same rule as the app's head callback)."""
        z, q0, k0 = self.rows
        n = self.res.n_tokens
        return z if (q0, k0) == (0, 0) and z is not None and z.shape == (n, n) else None

    @cached_property
    def head_map(self) -> Optional[np.ndarray]:
        l, h = self.head
        return self.service.head_map(self.key, l, h)


def make_context(key: str, settings: Optional[ViewSettings] = None, *, zoom: Optional[dict] = None,
                 comparison=None, service=_service) -> Context:
    """Context of a cached analysis (raises service.NotCached); the head is clamped into the model."""
    res = service.get_result(key)
    s = (settings or ViewSettings()).validate()
    l, h = s.head
    if not (0 <= l < res.n_layers and 0 <= h < res.n_heads):
        raise InputError(f"head {l}.{h} does not exist: {res.model} has {res.n_layers} layers x "
                         f"{res.n_heads} heads (0-based)")
    return Context(key=key, res=res, summ=service.summary(res), settings=s, service=service, zoom=zoom,
                   comparison=comparison)


# ---------------------------------------------------------------- the registry

Builder = Callable[[Context, Any], go.Figure]
Tables = Callable[[Context, go.Figure], dict]


@dataclass(frozen=True)
class FigureSpec:
    view: str
    part: str
    label: str
    build: Builder                                   # (ctx, template) -> the view's figure
    tables: Tables = lambda ctx, fig: figure_tables(fig)
    aspect: tuple[float, float] | Callable[[Context], tuple[float, float]] = (0.62, 0.36)
    caption: Callable[[Context], str] = lambda ctx: ""
    unavailable: Callable[[Context], Optional[str]] = lambda ctx: None   # reason, or None

    @property
    def name(self) -> str:
        return f"{self.view}/{self.part}"

    def aspect_for(self, ctx: Context, width: str) -> float:
        a = self.aspect(ctx) if callable(self.aspect) else self.aspect
        return a[0] if width == "single" else a[1]


def _grid_aspect(ctx: Context) -> tuple[float, float]:
    L, H = ctx.res.n_layers, ctx.res.n_heads
    r = (L + 3) / (H + 6)
    return float(np.clip(1.05 * r, 0.6, 1.45)), float(np.clip(0.5 * r, 0.35, 0.8))


def _txt(ctx: Context) -> str:
    return f"{ctx.res.model}, {ctx.res.n_tokens}-token text"


def _hd(ctx: Context) -> str:
    return f"layer {ctx.head[0]} head {ctx.head[1]}"


# -- overview
def _overview(ctx, t):
    s = ctx.settings
    return overview.render_grid(ctx.res, ctx.summ, s.metric, s.size_by, s.colours, ctx.head, template=t)


def _overview_tables(ctx, fig):
    res, summ, s = ctx.res, ctx.summ, ctx.settings
    values, why = overview.metric_values(res, summ, s.metric)
    roles = overview.role_labels(res)
    imp = overview.importance(res)
    cols = ["layer", "head", "role", s.metric, "sink_metric", "entropy_norm_mean", "prev_token_mean"]
    if imp is not None:
        cols.append("importance")
    rows = []
    for l in range(res.n_layers):
        for h in range(res.n_heads):
            r = [l, h, roles[l][h] if roles else None, py(float(values[l, h])) if values is not None else None,
                 py(float(summ["sink_metric"][l, h])), py(float(summ["entropy_norm_mean"][l, h])),
                 py(float(summ["prev_token_mean"][l, h]))]
            if imp is not None:
                r.append(py(float(imp[l, h])))
            rows.append(r)
    return {"heads": Table(cols, rows)}


def _overview_unavailable(ctx):
    return overview.metric_values(ctx.res, ctx.summ, ctx.settings.metric)[1]


# -- head detail
def _head_map(ctx, t):
    l, h = ctx.head
    return head.render_map(ctx.res, ctx.full, l, h, ctx.settings.scale, ctx.settings.pool, template=t)[0]


def _head_tokens(ctx, t):
    l, h = ctx.head
    return head.render_token_graph(ctx.res, ctx.rows, l, h, ctx.settings.head_threshold, ctx.service, template=t)


def _token_edges(ctx, threshold, max_edges=150):
    z, q0, k0 = ctx.rows
    if z is None:
        return []
    return ctx.service.token_edges_block(z, q0, k0, ctx.res.tokens, threshold=threshold, max_edges=max_edges)


def _deps_tables(ctx, fig):
    z, q0, k0 = ctx.rows
    dep = ctx.res.extras.get("dependency") or {}
    if z is None or not dep.get("available"):
        return {}
    from ..figures import show_token
    toks = ctx.res.tokens
    att = head.top1_edges(z, q0, k0, ctx.res.causal)
    rows = [["attention", int(a), show_token(toks[a]), int(b), show_token(toks[b]), py(w)] for a, b, w in att]
    rows += [["dependency", int(a), show_token(toks[int(a)]), int(b), show_token(toks[int(b)]), lab]
             for a, b, lab in dep["edges"]]
    return {"edges": Table(["kind", "from", "from_token", "to", "to_token", "weight_or_label"], rows)}


def _rows_missing(ctx):
    return None if ctx.rows[0] is not None else "long text: no full-resolution block of this head is loaded"


def _deps_missing(ctx):
    dep = ctx.res.extras.get("dependency") or {}
    if not dep.get("available"):
        return f"dependency parse: {dep.get('reason', 'not computed')}"
    return _rows_missing(ctx)


# -- sinks
def _sinks(i):
    return lambda ctx, t: sinks.render(ctx.res, ctx.summ, ctx.settings.eps, ctx.head, ctx.service, template=t)[i]


def _lh_tables(label):
    def tables(ctx, fig):
        hm = [tr for tr in fig.data if isinstance(tr, go.Heatmap)][0]
        z = _heatmap_values(hm)
        flagged = set()
        for tr in fig.data:
            if isinstance(tr, go.Scatter) and tr.x is not None and tr.name and tr.name != "selected":
                flagged |= {(int(y), int(x)) for x, y in zip(tr.x, tr.y) if x is not None}
        rows = [[l, h, py(float(z[l, h])), (l, h) in flagged] for l in range(z.shape[0]) for h in range(z.shape[1])]
        flag = next((py(tr.name) for tr in fig.data if isinstance(tr, go.Scatter) and tr.name), "flagged")
        return {"heads": Table(["layer", "head", label, f"flag: {flag}"], rows)}
    return tables


# -- basin
def _basin(ctx, t):
    return basin.render(ctx.res, list(ctx.settings.important), ctx.service, template=t)[2]


def _basin_tables(ctx, fig):
    b = ctx.res.extras.get("basin") or {}
    items = b.get("items") or []
    per = np.asarray(b.get("per_layer") or np.zeros((0, len(items))), float)
    cols = ["item", "label", "start_char", "end_char", "n_tokens", "mass_all_layers", "density", "share"] + \
        [f"layer_{l}" for l in range(per.shape[0])]
    rows = []
    for j, it in enumerate(items):
        rows.append([it["index"], it.get("label"), it.get("start"), it.get("end"), it.get("n_tokens"),
                     py(b["mass"][j]) if b.get("mass") is not None else None, py(it.get("density")),
                     py(it.get("share"))] + [py(float(per[l, j])) for l in range(per.shape[0])])
    return {"items": Table(cols, rows)}


def _basin_missing(ctx):
    b = ctx.res.extras.get("basin")
    if not b or b.get("available") is False or not b.get("items"):
        return (b or {}).get("reason") or "no items in this analysis"
    return None


# -- entropy
def _entropy(i):
    return lambda ctx, t: entropy.render(ctx.res, ctx.summ, ctx.head, template=t)[i]


# -- graphs
def _graph_heads(ctx, t):
    return graphs.render_heads(ctx.res, ctx.head, template=t)[0]


def _graph_heads_tables(ctx, fig):
    g = (ctx.res.extras.get("graphs") or {}).get("heads") or {}
    nodes = g.get("nodes") or []
    nt = Table(["id", "layer", "head", "x", "y", "community"],
               [[n["id"], n["layer"], n["head"], py(n["x"]), py(n["y"]), n.get("community")] for n in nodes])
    et = Table(["source", "target", "weight"], [[e["source"], e["target"], py(e["weight"])]
                                                for e in g.get("edges", [])])
    return {"nodes": nt, "edges": et}


def _graph_heads_missing(ctx):
    g = (ctx.res.extras.get("graphs") or {}).get("heads")
    return None if g and g.get("nodes") else "head-similarity graph not in this analysis"


def _graph_tokens(ctx, t):
    return graphs.render_tokens(ctx.res, ctx.rows, ctx.summ, ctx.head, ctx.settings.graph_threshold, ctx.service,
                                template=t)


# -- variants
def _variants(i):
    return lambda ctx, t: variants.render(ctx.res, ctx.comparison, ctx.head_map, ctx.head, template=t,
                                                   diff_variant=ctx.settings.diff_variant or None)[i]


def _variants_missing(ctx):
    if ctx.comparison is None:
        return "no variant comparison (press Compare in the app; --variants in the CLI)"
    return None


def _variant_maps_missing(ctx):
    return _variants_missing(ctx) or (None if ctx.head_map is not None else
                                      "long text: variant maps need the full map of the head")


def _variant_map_names(ctx):
    l, h = ctx.head
    names = ["softmax"] + [s for s in ctx.comparison.specs if (s, l, h) in ctx.comparison.maps]
    return names


# -- generate
def _generate(ctx, t):
    return generate.render(ctx.res, ctx.head_map, ctx.summ, ctx.head, ctx.settings.scale, template=t)[1]


def _generate_missing(ctx):
    return None if ctx.res.extras.get("generation") else "no generated continuation in this analysis"


HEATMAP = (0.95, 0.62)
LAYER_HEAD = _grid_aspect
CURVE = (0.62, 0.32)
ARCS = (0.55, 0.3)

REGISTRY: dict[str, list[FigureSpec]] = {
    "overview": [
        FigureSpec("overview", "grid", "Head overview (layers × heads)", _overview, _overview_tables, LAYER_HEAD,
                   lambda c: f"Heads of {_txt(c)}: colour = {METRICS.get(c.settings.metric, c.settings.metric)}; "
                             "symbol = head role; layer 0 on top.", _overview_unavailable),
    ],
    "head": [
        FigureSpec("head", "map", "Attention map", _head_map,
                   lambda c, f: heatmap_tables(f, concat=True), HEATMAP,
                   lambda c: f"Attention weights a_ij of {_hd(c)} ({_txt(c)}): rows are queries i, columns keys "
                             f"j; {c.settings.scale} colour scale; cells above the diagonal are never computed."),
        FigureSpec("head", "entropy", "Entropy per query",
                   lambda c, t: head.render_entropy(c.res, c.summ, c.head[0], c.head[1], template=t),
                   caption=lambda c: f"Attention entropy of each query, {_hd(c)} ({_txt(c)})."),
        FigureSpec("head", "received", "Attention received per key",
                   lambda c, t: head.render_received(c.res, c.summ, c.head[0], c.head[1], template=t),
                   caption=lambda c: f"Mean attention each key receives, {_hd(c)} ({_txt(c)}); sinks highlighted."),
        FigureSpec("head", "tokens", "Token graph", _head_tokens,
                   lambda c, f: {"edges": edge_table(_token_edges(c, c.settings.head_threshold), c.res.tokens)},
                   ARCS, lambda c: f"Attention edges with weight ≥ {c.settings.head_threshold:g}, {_hd(c)} "
                                   f"({_txt(c)}); token 0 left out.", _rows_missing),
        FigureSpec("head", "deps", "Dependency parse vs attention",
                   lambda c, t: head.render_deps(c.res, c.rows, c.head[0], c.head[1], template=t), _deps_tables,
                   ARCS, lambda c: f"Above: each query's strongest key, {_hd(c)}; below: the dependency parse "
                                   f"({_txt(c)}).", _deps_missing),
    ],
    "sinks": [
        FigureSpec("sinks", "layers", "Sink curves per layer", _sinks(0),
                   caption=lambda c: f"Sink mass per layer (mean over heads), {_txt(c)}; eps = {c.settings.eps:g}."),
        FigureSpec("sinks", "rate", "Sink rate against eps", _sinks(1),
                   caption=lambda c: f"Share of heads whose sink mass exceeds eps, {_txt(c)}."),
        FigureSpec("sinks", "map", "Sink mass per head", _sinks(2), _lh_tables("sink_mass"), LAYER_HEAD,
                   lambda c: f"Sink mass (mean attention on token 0) of every head, {_txt(c)}; x: above "
                             f"eps = {c.settings.eps:g}."),
    ],
    "basin": [
        FigureSpec("basin", "curves", "Attention on each item", _basin, _basin_tables, CURVE,
                   lambda c: f"Attention from the query region on each item, per layer (thin) and over all "
                             f"layers (thick), {_txt(c)}.", _basin_missing),
    ],
    "entropy": [
        FigureSpec("entropy", "map", "Normalised entropy per head", _entropy(0), _lh_tables("entropy_norm_mean"),
                   LAYER_HEAD, lambda c: f"Normalised attention entropy of every head, {_txt(c)}; x: collapsed."),
        FigureSpec("entropy", "profile", "Entropy by position", _entropy(1),
                   caption=lambda c: f"Normalised entropy of each query: {_hd(c)}, its layer's mean and all "
                                     f"heads' mean ({_txt(c)})."),
    ],
    "graphs": [
        FigureSpec("graphs", "heads", "Head-similarity graph", _graph_heads, _graph_heads_tables, (0.9, 0.55),
                   lambda c: f"Heads linked to their nearest heads by Jensen-Shannon distance of their attention "
                             f"maps; colour = community ({_txt(c)}).", _graph_heads_missing),
        FigureSpec("graphs", "tokens", "Token-attention graph", _graph_tokens,
                   lambda c, f: {"edges": edge_table(_token_edges(c, c.settings.graph_threshold, 200),
                                                     c.res.tokens)},
                   ARCS, lambda c: f"Attention edges with weight ≥ {c.settings.graph_threshold:g}, {_hd(c)} "
                                   f"({_txt(c)}); nodes coloured by attention received.", _rows_missing),
    ],
    "variants": [
        FigureSpec("variants", "maps", "Maps side by side", _variants(0),
                   lambda c, f: heatmap_tables(f, names=_variant_map_names(c)), (0.45, 0.3),
                   lambda c: f"Attention of {_hd(c)} under softmax and each variant, same colour scale "
                             f"({_txt(c)}).", _variant_maps_missing),
        FigureSpec("variants", "diff", "Difference map", _variants(1), aspect=HEATMAP,
                   caption=lambda c: f"Difference of attention weights (first variant − softmax), {_hd(c)} "
                                     f"({_txt(c)}).", unavailable=_variant_maps_missing),
        FigureSpec("variants", "bars", "End-to-end loss and agreement", _variants(2), aspect=CURVE,
                   caption=lambda c: f"Next-token loss and top-1 agreement with each variant swapped in "
                                     f"({_txt(c)}).", unavailable=_variants_missing),
    ],
    "generate": [
        FigureSpec("generate", "map", "Attention of the generated tokens", _generate,
                   lambda c, f: heatmap_tables(f, concat=True), (0.7, 0.45),
                   lambda c: f"Attention of the generated tokens (rows) on every earlier token, {_hd(c)} "
                             f"({_txt(c)}).", _generate_missing),
    ],
}

ALIASES = {"graph": "graphs", "gen": "generate"}
CLI_FIGURES = ("overview", "head:L.H", "sinks", "basin", "entropy", "graph", "variants", "generate")


def specs(view: str) -> list[FigureSpec]:
    view = ALIASES.get(view, view)
    if view not in REGISTRY:
        raise InputError(f"unknown figure {view!r}: choose one of {', '.join(CLI_FIGURES)}")
    return REGISTRY[view]


def spec(view: str, part: Optional[str] = None) -> FigureSpec:
    sp = specs(view)
    if not part:
        return sp[0]
    for s in sp:
        if s.part == part:
            return s
    raise InputError(f"{sp[0].view} has no part {part!r}: choose one of {', '.join(s.part for s in sp)}")


def all_specs() -> list[FigureSpec]:
    return [s for v in REGISTRY.values() for s in v]


_HEAD_FIG = re.compile(r"^head(?::(\d{1,4})\.(\d{1,4}))?$")


def parse_figure(name: str) -> tuple[str, Optional[str], Optional[tuple[int, int]]]:
    """'overview' | 'head:L.H' | 'sinks' | 'sinks/rate' ... -> (view, part or None, head or None)."""
    raw = (name or "").strip()
    base, _, part = raw.partition("/")
    m = _HEAD_FIG.match(base)
    if m:
        h = (int(m.group(1)), int(m.group(2))) if m.group(1) is not None else None
        return "head", part or None, h
    if base.startswith("head"):
        raise InputError(f"bad figure {raw!r}: write head:L.H, e.g. head:3.4 (layer 3, head 4)")
    return specs(base)[0].view, part or None, None


def build(sp: FigureSpec, ctx: Context, template=SCREEN) -> go.Figure:
    """The view's figure (the same call the app makes, with `template`)."""
    return sp.build(ctx, template)
