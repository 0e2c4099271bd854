"""Basin: items highlighted in the text, per-item attention from the query region by layer (the U shape),
the depth score and an AttnRank-style suggested order for the items the user marks as important."""
from __future__ import annotations

import numpy as np
from dash import Input, Output, callback, dcc, html
from plotly.colors import sample_colorscale

from .. import ids, service
from ..components import graph, notice, section, table
from ..figures import basin_curves, empty_figure
from ..templates import SCREEN
from .common import Analysis, on_analysis

EXPORT_CONTROLS = (("important", ids.BS_IMPORTANT, "value"),)


def layout(**query) -> html.Div:
    return html.Div([
        section("Items in the text", html.Div(id=ids.BS_SUMMARY), html.Div(id=ids.BS_TEXT, className="basin-text"),
                help_text="Items are found automatically (blank-line blocks, or 'Document [k]' / 'Example k:' "
                          "markers); the question after the last item is the query region. Item colour = its "
                          "share of the attention the query region gives to items."),
        section("Attention on each item, by layer", graph(ids.BS_CURVES, 360),
                help_text="Mean attention from the query region on each item's tokens (token 0 excluded). "
                          "Thin lines: layers (dark = early); thick: all layers. A U shape means the middle "
                          "items are neglected (lost in the middle)."),
        section("Suggested order (AttnRank-style)",
                dcc.Checklist(id=ids.BS_IMPORTANT, options=[], value=[], inline=True, className="checks"),
                html.Div(id=ids.BS_ORDER),
                help_text="Mark the items that matter; they move to the positions this model attends to most "
                          "(positional preference from the shipped calibration prompts)."),
    ], id=ids.view("basin"), className="view")


def highlighted_text(text: str, items: list[dict]) -> list:
    """The text as spans; each item gets a background whose colour follows its share."""
    share = np.array([it.get("share") or 0.0 for it in items], float)
    top = share.max() if share.size and share.max() > 0 else 1.0
    colours = sample_colorscale("Cividis", (0.15 + 0.85 * share / top).tolist()) if items else []
    out, pos = [], 0
    for it, col in zip(items, colours):
        s, e = int(it["start"]), int(it["end"])
        if s > pos:
            out.append(html.Span(text[pos:s]))
        rgb = col.replace("rgb(", "").replace(")", "")
        out.append(html.Span([html.Sup(f"{it['index']}", className="item-tag"), text[s:e]],
                             className="item" + (" item-important" if it.get("important") else ""),
                             style={"backgroundColor": f"rgba({rgb},0.35)"},
                             title=f"item {it['index']}: share {it.get('share', 0):.3f}, "
                                   f"{it.get('n_tokens')} tokens"))
        pos = e
    out.append(html.Span(text[pos:]))
    return out


def _short(label: str, n: int = 14) -> str:
    label = " ".join(label.split())
    return label if len(label) <= n else label[:n - 1] + "…"


def render(res, important: list, service, template: str = SCREEN):
    """(summary, text spans, U-shape figure, checklist options, order block)."""
    b = res.extras.get("basin")
    if not b or b.get("available") is False or not b.get("items"):
        why = (b or {}).get("reason") or "no basin section in this analysis"
        msg = notice(f"basin: not available ({why}). Try the 'Documents + question' example.")
        return msg, "", empty_figure("no items", template), [], ""
    items = b["items"]
    names = [f"{it['index']}: {_short(it['label'])}" for it in items]
    fig = basin_curves(np.asarray(b["per_layer"], float), item_names=names,
                       aggregate=np.asarray(b["mass"], float), template=template)
    q = b.get("query") or {}
    depth = b.get("depth")
    summary = html.Div([
        html.P([f"{len(items)} items ({b.get('mode')}); query region tokens {q.get('start')}–{q.get('end', 1) - 1}: ",
                html.Span("".join(res.tokens[q.get("start", 0):q.get("end", 0)])[:160], className="mono")]),
        table(["depth", "depth (per token)", "sink", "query itself", "other", "sum check"],
              [(depth, b.get("depth_density"), b.get("sink"), b.get("query_self"), b.get("other"), b.get("sum_check"))]),
        table(["item", "label", "tokens", "mass", "density", "share"],
              [(it["index"], it["label"], it["n_tokens"], it["mass"], it["density"], it["share"]) for it in items]),
    ])
    options = [{"label": n, "value": it["index"]} for n, it in zip(names, items)]
    pref = (b.get("ranking") or {}).get("preference")
    if not important:
        order = notice("mark one or more items as important to get a suggested order")
    elif pref is None:
        order = notice("suggested order: not available (no positional preference in this analysis)")
    else:
        o = service.attnrank_order(pref, sorted(int(i) for i in important))
        order = html.Div([
            html.P("suggested order (item numbers, first to last):"),
            html.Ol([html.Li(f"{names[k]}" + (" ★" if k in important else "")) for k in o]),
            html.P("positional preference: " + ", ".join(f"{p:.2f}" for p in pref), className="help"),
        ])
    return summary, highlighted_text(res.text, items), fig, options, order


# ---------------------------------------------------------------- callbacks

@callback(Output(ids.BS_SUMMARY, "children"), Output(ids.BS_TEXT, "children"), Output(ids.BS_CURVES, "figure"),
          Output(ids.BS_IMPORTANT, "options"), Output(ids.BS_ORDER, "children"),
          Input(ids.STATE, "data"), Input(ids.BS_IMPORTANT, "value"))
@on_analysis("basin", lambda msg: (msg, "", empty_figure(msg), [], ""))
def render_basin(a: Analysis, important):
    return render(a.res, list(important or []), service)
