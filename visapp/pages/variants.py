"""Variants: a head's map under softmax and the chosen variants side by side, the difference map, the
fidelity table, and end-to-end loss and top-1 agreement bars (compute.variants)."""
from __future__ import annotations

from typing import Optional

import logging
import time

import numpy as np
from dash import Input, Output, State, callback, dcc, html, no_update

from compute.errors import UserError

from .. import ids, service
from ..components import controls, error_box, graph, labelled, notice, section, table
from ..figures import difference_map, empty_figure, maps_side_by_side, token_labels
from ..service import DEFAULT_VARIANTS
from ..state import background_manager
from ..templates import SCREEN
from .common import Analysis, current, on_analysis

log = logging.getLogger(__name__)
EXPORT_CONTROLS = (("compare", ids.COMPARE, "data"), ("diff_variant", ids.VR_DIFF_PICK, "value"))

FIDELITY_COLUMNS = ("kl", "js", "out_rel_l2", "retained", "entropy_shift", "sink_shift", "topk_overlap", "spearman")


def layout(**query) -> html.Div:
    choices = service.variant_choices()
    return html.Div([
        section("Compare attention variants",
                controls(
                    labelled("Variants", dcc.Dropdown(id=ids.VR_SPECS, multi=True, style={"minWidth": "420px"},
                                                      options=[{"label": c["label"], "value": c["spec"]}
                                                               for c in choices],
                                                      value=[c["spec"] for c in choices
                                                             if c["spec"] in DEFAULT_VARIANTS])),
                    labelled("More specs", dcc.Input(id=ids.VR_CUSTOM, type="text", placeholder="e.g. topk:16, elu",
                                                     debounce=True, style={"width": "180px"})),
                    labelled("Layers", dcc.Input(id=ids.VR_LAYERS, type="text", placeholder="all (or 0,5,10)",
                                                 debounce=True, style={"width": "140px"})),
                    html.Button("Compare", id=ids.VR_RUN, className="btn"),
                    html.Button("Cancel", id=ids.VR_CANCEL, className="btn btn-secondary", disabled=True)),
                html.Div([html.Progress(id=ids.VR_PROGRESS, max="100", value="0"),
                          html.Span(id=ids.VR_PROGRESS_MSG, className="progress-msg")], className="progress-row",
                         id=ids.VR_PROGRESS_WRAP, style={"display": "none"}),
                html.Div(id=ids.VR_ERROR, role="alert"),
                html.Div(id=ids.VR_NOTE),
                help_text="Each variant replaces softmax on the same captured q/k/v; maps are for the selected "
                          "head. End to end, the variant is swapped into the chosen layers."),
        section("Maps of the selected head", graph(ids.VR_MAPS, 420)),
        html.Div([section("Difference (variant − softmax)",
                          controls(labelled("Variant", dcc.Dropdown(id=ids.VR_DIFF_PICK, options=[], value=None,
                                                                    clearable=False, style={"width": "260px"}))),
                          graph(ids.VR_DIFF, 420)),
                  section("End to end", graph(ids.VR_BARS, 420))], className="grid2"),
        section("Fidelity per variant (selected head, and mean over heads)", html.Div(id=ids.VR_TABLE)),
    ], id=ids.view("variants"), className="view")


def parse_layers(text: Optional[str], n_layers: int) -> Optional[list[int]]:
    """'' / 'all' -> None; '0,5,10' or '0-3' -> sorted layers. Raises ValueError with a message."""
    t = (text or "").strip().lower()
    if t in ("", "all"):
        return None
    out = set()
    for part in t.replace(" ", "").split(","):
        if not part:
            continue
        if "-" in part:
            a, b = part.split("-", 1)
            lo, hi = int(a), int(b)
            out.update(range(lo, hi + 1))
        else:
            out.add(int(part))
    bad = [l for l in out if not 0 <= l < n_layers]
    if bad:
        raise ValueError(f"layer {bad[0]} does not exist (0..{n_layers - 1})")
    return sorted(out)


def fidelity_at(v: dict, metric: str, layers: list, l: int, h: int):
    """(value at head l.h, mean over the measured heads) of one fidelity metric; None when missing.
    Fidelity arrays are [len(layers), H] over the measured layers only."""
    arr = (v.get("fidelity") or {}).get(metric)
    if arr is None:
        return None, None
    a = np.asarray([[np.nan if x is None else x for x in row] for row in arr], float)
    mean = (v.get("fidelity_mean") or {}).get(metric)
    if a.ndim != 2 or l not in layers or h >= a.shape[1]:
        return None, mean
    val = a[layers.index(l), h]
    return (float(val) if np.isfinite(val) else None), mean


def render(res, cmp, softmax_map: Optional[np.ndarray], selected, template: str = SCREEN,
           diff_variant: Optional[str] = None):
    """(maps figure, diff figure, bars figure, table, note) of a compute.variants comparison; the
    difference map shows `diff_variant` (default: the first variant)."""
    l, h = selected
    if cmp is None:
        e = empty_figure("choose variants and press Compare", template)
        return e, e, e, "", ""
    result = cmp.result
    vs = result.get("variants") or {}
    names = [s for s in cmp.specs if s in vs] or list(vs)
    layers = list(result.get("layers") or cmp.layers or range(res.n_layers))
    notes = []
    # maps of the selected head (softmax and each variant on the same captured q/k/v)
    maps = {}
    if cmp.maps.get(("softmax", l, h)) is not None:
        maps["softmax"] = cmp.maps[("softmax", l, h)]
        for spec in names:
            if cmp.maps.get((spec, l, h)) is not None:
                maps[spec] = cmp.maps[(spec, l, h)]
    labels = token_labels(res.tokens)
    if len(maps) >= 2 and all(np.shape(z) == (res.n_tokens, res.n_tokens) for z in maps.values()):
        f_maps = maps_side_by_side(maps, labels, causal=res.causal, template=template,
                                   title=f"layer {l} head {h}")
        shown = [k for k in maps if k != "softmax"]
        pick = diff_variant if diff_variant in shown else shown[0]
        f_diff = difference_map(maps[pick], maps["softmax"], labels, causal=res.causal, name_a=pick,
                                template=template)
    else:
        why = (f"the comparison holds no maps of head {l}.{h}: press Compare to add them (the numbers are kept)"
               if res.n_tokens <= 2048 else "maps are drawn for texts up to the full-map limit")
        f_maps = empty_figure(why, template)
        f_diff = empty_figure("", template)
    # end to end
    base = result.get("baseline") or {}
    e2e = [vs[n].get("e2e") or {} for n in names]
    loss = [e.get("loss") for e in e2e]
    agree = [e.get("top1_agreement") for e in e2e]
    if any(x is not None for x in loss):
        f_bars = _e2e_bars(names, loss, agree, base.get("loss"), template)
    else:
        why = base.get("loss_unavailable") or next((e.get("loss_unavailable") for e in e2e if e.get("loss_unavailable")),
                                                    "no end-to-end loss for this model")
        f_bars = empty_figure(f"end-to-end loss: not available ({why})", template)
        notes.append(notice(f"end-to-end loss: not available ({why})"))
    # fidelity table
    rows = []
    for n in names:
        r = [n]
        for m in FIDELITY_COLUMNS:
            hv, mv = fidelity_at(vs[n], m, layers, l, h)
            r.append("" if hv is None and mv is None else
                     ("–" if hv is None else f"{hv:.4g}") + ("" if mv is None else f" ({mv:.3g})"))
        e = vs[n].get("e2e") or {}
        r += [e.get("loss"), e.get("top1_agreement")]
        rows.append(r)
    tbl = html.Div([
        html.P(f"head {l}.{h} (mean over the heads of layers {_layers_text(layers, res.n_layers)} in "
               "brackets); KL/JS in nats; retained = softmax mass the variant keeps.", className="help"),
        table(["variant"] + list(FIDELITY_COLUMNS) + ["loss", "top-1 agr."], rows)]) if rows \
        else notice("no fidelity numbers")
    if base.get("loss") is not None:
        notes.append(html.P(f"softmax loss {base['loss']:.4f} (perplexity {base.get('perplexity', 0):.2f})",
                            className="help"))
    return f_maps, f_diff, f_bars, tbl, html.Div(notes)


def _layers_text(layers: list, n_layers: int) -> str:
    return "all" if list(layers) == list(range(n_layers)) else ", ".join(map(str, layers))


def _e2e_bars(names, loss, agree, base_loss, template):
    """Two panels: loss with the variant swapped in (softmax baseline dashed) and top-1 agreement."""
    from ..figures.common import make_figure
    traces = [dict(type="bar", x=list(names), y=np.array([np.nan if v is None else v for v in loss], float),
                   name="loss", marker=dict(color="#0072B2"), xaxis="x", yaxis="y",
                   hovertemplate="%{x}<br>loss %{y:.4f}<extra></extra>"),
              dict(type="bar", x=list(names), y=np.array([np.nan if v is None else v for v in agree], float),
                   name="top-1 agreement", marker=dict(color="#009E73"), xaxis="x2", yaxis="y2",
                   hovertemplate="%{x}<br>agreement %{y:.3f}<extra></extra>")]
    shapes, notes = [], [dict(text="loss (nats)", x=0.22, y=1.0, xref="paper", yref="paper",
                              showarrow=False, yanchor="bottom"),
                         dict(text="top-1 agreement", x=0.78, y=1.0, xref="paper", yref="paper",
                              showarrow=False, yanchor="bottom")]
    if base_loss is not None:
        shapes.append(dict(type="line", x0=0, x1=0.44, xref="paper", y0=base_loss, y1=base_loss, yref="y",
                           line=dict(color="#000", dash="dash", width=1.5)))
        notes.append(dict(text=f"softmax {base_loss:.3f}", x=0, xref="paper", y=base_loss, yref="y",
                          showarrow=False, xanchor="left", yanchor="bottom"))
    layout = dict(height=420, showlegend=False, shapes=shapes, annotations=notes,
                  xaxis=dict(domain=[0, 0.44]), xaxis2=dict(domain=[0.56, 1]),
                  yaxis=dict(title=dict(text="loss")), yaxis2=dict(anchor="x2", range=[0, 1.02]))
    return make_figure(traces, layout, template)


def diff_choices(cmp) -> list[dict]:
    """The difference map's variant choices: the comparison's variants, in the user's order."""
    if cmp is None:
        return []
    vs = (cmp.result or {}).get("variants") or {}
    return [{"label": s, "value": s} for s in ([s for s in cmp.specs if s in vs] or list(vs))]


def comparison_of(state: Optional[dict], compare_store: Optional[dict]):
    """The stored comparison of the state's analysis, or None."""
    if compare_store and state and compare_store.get("a") == state.get("a"):
        return service.get_comparison(compare_store.get("ck"))
    return None


# ---------------------------------------------------------------- callbacks

def _placeholder(msg: str):
    e = empty_figure(msg)
    return e, e, e, "", "", []


@callback(Output(ids.VR_MAPS, "figure"), Output(ids.VR_DIFF, "figure"), Output(ids.VR_BARS, "figure"),
          Output(ids.VR_TABLE, "children"), Output(ids.VR_NOTE, "children"), Output(ids.VR_DIFF_PICK, "options"),
          Input(ids.STATE, "data"), Input(ids.COMPARE, "data"), Input(ids.VR_DIFF_PICK, "value"))
@on_analysis("variants", _placeholder)
def render_variants(a: Analysis, compare_store, diff_variant):
    reason = service.variants_available()
    if reason:
        return _placeholder(f"variants: not available yet ({reason})")
    l, h = a.head
    cmp = comparison_of(a.state, compare_store)
    out = render(a.res, cmp, service.head_map(a.key, l, h), (l, h), diff_variant=diff_variant)
    return (*out, diff_choices(cmp))


def compare_job(set_progress, n_clicks, specs, custom, layers_text, state):
    """Background: compare the chosen variants on the current analysis. Returns (store, error)."""
    try:
        a = current(state)
        if a is None:
            raise UserError("no analysis to compare on yet")
        chosen = list(specs or [])
        if custom and custom.strip():
            chosen += service.split_specs(custom)
        try:
            layers = parse_layers(layers_text, a.res.n_layers)
        except ValueError as exc:
            raise UserError(f"layers: {exc}") from None
        service.job_setup()
        ck = service.run_comparison(a.key, chosen, layers, a.head,
                                    progress=lambda f, m: set_progress((str(int(round(100 * f))), m)))
        return {"a": a.key, "ck": ck, "t": time.time()}, ""
    except UserError as exc:
        return no_update, error_box(str(exc))
    except Exception as exc:
        log.exception("comparison failed")
        return no_update, error_box(f"internal error ({exc.__class__.__name__}: {exc})")


callback(Output(ids.COMPARE_JOB, "data"), Output(ids.VR_ERROR, "children"),
         Input(ids.VR_RUN, "n_clicks"), State(ids.VR_SPECS, "value"), State(ids.VR_CUSTOM, "value"),
         State(ids.VR_LAYERS, "value"), State(ids.STATE, "data"),
         background=True, manager=background_manager(), interval=500, prevent_initial_call=True,
         progress=[Output(ids.VR_PROGRESS, "value"), Output(ids.VR_PROGRESS_MSG, "children")],
         running=[(Output(ids.VR_RUN, "disabled"), True, False), (Output(ids.VR_CANCEL, "disabled"), False, True),
                  (Output(ids.VR_PROGRESS_WRAP, "style"), {"display": "flex"}, {"display": "none"})],
         cancel=[Input(ids.VR_CANCEL, "n_clicks")])(compare_job)
