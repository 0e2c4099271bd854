"""Variants: a head's map under softmax and the chosen variants side by side, the difference map, the
fidelity table, and end-to-end loss and top-1 agreement bars (compute.variants)."""
from __future__ import annotations

from typing import Optional

import numpy as np
from dash import dcc, html

from .. import ids
from ..figures import difference_map, empty_figure, grouped_bars, maps_side_by_side, token_labels
from ..templates import SCREEN
from .common import controls, graph, labelled, notice, section, table

FIDELITY_COLUMNS = ("kl", "js", "out_rel_l2", "retained", "entropy_shift", "sink_shift", "topk_overlap", "spearman")


def layout(choices: list[dict]) -> html.Div:
    return html.Div([
        section("Compare attention variants",
                controls(
                    labelled("Variants", dcc.Dropdown(id=ids.VR_SPECS, multi=True, style={"minWidth": "380px"},
                                                      options=[{"label": c["label"], "value": c["spec"]}
                                                               for c in choices],
                                                      value=[c["spec"] for c in choices[:2]])),
                    labelled("More specs", dcc.Input(id=ids.VR_CUSTOM, type="text", placeholder="e.g. topk:16, elu",
                                                     debounce=True, style={"width": "180px"})),
                    labelled("Layers", dcc.Input(id=ids.VR_LAYERS, type="text", placeholder="all (or 0,5,10)",
                                                 debounce=True, style={"width": "140px"})),
                    html.Button("Compare", id=ids.VR_RUN, className="btn"),
                    html.Button("Cancel", id=ids.VR_CANCEL, className="btn btn-secondary", disabled=True)),
                html.Div([html.Progress(id=ids.VR_PROGRESS, max="100", value="0"),
                          html.Span(id=ids.VR_PROGRESS_MSG, className="progress-msg")], className="progress-row"),
                html.Div(id=ids.VR_ERROR, role="alert"),
                html.Div(id=ids.VR_NOTE),
                help_text="Each variant replaces softmax on the same captured q/k/v; maps are for the selected "
                          "head. End to end, the variant is swapped into the chosen layers."),
        section("Maps of the selected head", graph(ids.VR_MAPS, 420)),
        html.Div([section("Difference (first variant − softmax)", graph(ids.VR_DIFF, 420)),
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


def _variant_rows(result: dict) -> list[dict]:
    return list(result.get("variants") or [])


def _head_value(v: dict, metric: str, l: int, h: int):
    per = (v.get("fidelity") or v.get("heads") or {}).get(metric)
    if per is None:
        return None, None
    arr = np.asarray([[np.nan if x is None else x for x in row] for row in per], float) if isinstance(per, list) \
        else np.asarray(per, float)
    if arr.ndim != 2:
        return None, None
    val = arr[l, h] if l < arr.shape[0] and h < arr.shape[1] else np.nan
    return (None if not np.isfinite(val) else float(val)), float(np.nanmean(arr)) if np.isfinite(arr).any() else None


def render(res, cmp, softmax_map: Optional[np.ndarray], selected, template: str = SCREEN):
    """(maps figure, diff figure, bars figure, table, note)."""
    l, h = selected
    empty = empty_figure("press Compare", template)
    if cmp is None:
        return empty, empty, empty, "", ""
    result = cmp.result
    rows = _variant_rows(result)
    names = [v.get("spec") or v.get("name") for v in rows]
    # maps
    maps = {"softmax": softmax_map} if softmax_map is not None else {}
    for spec in cmp.specs:
        z = cmp.maps.get((spec, l, h))
        if z is not None:
            maps[spec] = z
    note = ""
    if softmax_map is None:
        f_maps = f_diff = empty_figure("long text: maps are shown for texts up to the full-map limit", template)
    elif len(maps) < 2:
        f_maps = empty_figure(f"variant maps of head {l}.{h}: press Compare to compute them", template)
        f_diff = empty_figure("", template)
    else:
        labels = token_labels(res.tokens)
        f_maps = maps_side_by_side(maps, labels, causal=res.causal, template=template,
                                   title=f"layer {l} head {h}")
        first = [k for k in maps if k != "softmax"][0]
        f_diff = difference_map(maps[first], maps["softmax"], labels, causal=res.causal, name_a=first,
                                template=template)
    base = (result.get("baseline") or {}).get("loss", result.get("baseline_loss"))
    series = {"loss": [v.get("loss") for v in rows], "top-1 agreement": [v.get("top1_agreement") for v in rows]}
    if any(x is not None for x in series["loss"]):
        f_bars = grouped_bars(names, {"loss": series["loss"]}, ylabel="next-token loss (nats)", baseline=base,
                              template=template, title="loss with the variant swapped in")
        agree = [a for a in series["top-1 agreement"] if a is not None]
        if agree:
            from plotly.subplots import make_subplots
            import plotly.graph_objects as go
            f2 = make_subplots(rows=1, cols=2, subplot_titles=("next-token loss", "top-1 agreement with softmax"))
            for tr in f_bars.data:
                f2.add_trace(tr, 1, 1)
            f2.add_trace(go.Bar(x=names, y=series["top-1 agreement"], marker_color="#009E73",
                                name="top-1 agreement",
                                hovertemplate="%{x}<br>agreement %{y:.3f}<extra></extra>"), 1, 2)
            if base is not None:
                f2.add_hline(y=base, line=dict(color="#000", dash="dash"), row=1, col=1,
                             annotation_text=f"softmax {base:.3f}")
            f2.update_yaxes(range=[0, 1.02], row=1, col=2)
            f2.update_layout(template=template, height=420, showlegend=False)
            f_bars = f2
    else:
        f_bars = empty_figure("end-to-end loss: not available (encoders have no masked-LM head here)", template)
        note = notice((result.get("loss_unavailable") or "no end-to-end loss for this model"))
    trows = []
    for v, name in zip(rows, names):
        r = [name]
        for m in FIDELITY_COLUMNS:
            hv, mv = _head_value(v, m, l, h)
            r.append("" if hv is None else f"{hv:.4g}" + ("" if mv is None else f" ({mv:.3g})"))
        trows.append(r)
    tbl = table(["variant"] + list(FIDELITY_COLUMNS), trows) if trows else notice("no fidelity numbers")
    return f_maps, f_diff, f_bars, tbl, note
