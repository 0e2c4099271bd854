"""Side by side: the current analysis (A) against B, the same text on another model (registry model or a
local folder) or another text on the same model: per-head metric deltas, heads matched by the
Jensen-Shannon distance of their maps (map and table), and the selected head's map in both
(compute.sidebyside through visapp.corpus_jobs)."""
from __future__ import annotations

from typing import Optional

import numpy as np
from dash import Input, Output, State, callback, dcc, html
from dash.exceptions import PreventUpdate

from compute.errors import InputError

from .. import corpus_jobs as cj
from .. import ids, service, urlstate
from ..components import controls, graph, labelled, notice, section
from ..dataset_ui import guarded, job_row, register_job, register_relay
from ..figures import attention_heatmap, empty_figure, pooled_heatmap, token_labels
from ..figures.sidebyside import delta_map, match_map, match_table
from ..templates import SCREEN
from .common import select_head_on_click

DEFAULT_METRIC = "sink_metric"


def layout(**query) -> html.Div:
    models = service.list_models()
    return html.Div([
        section("Side by side",
                controls(
                    labelled("Compare the current analysis with", dcc.RadioItems(
                        id=ids.SB_MODE, value="models", options=[
                            {"label": "the same text on model B", "value": "models"},
                            {"label": "text B on the same model", "value": "texts"}])),
                    labelled("Model B", dcc.Dropdown(id=ids.SB_MODEL_B, clearable=True, value=None,
                                                     options=[{"label": m["name"], "value": m["name"],
                                                               "disabled": not m["installed"]} for m in models],
                                                     style={"width": "220px"})),
                    labelled("or a local folder / .gguf", dcc.Input(id=ids.SB_PATH_B, type="text", debounce=True,
                                                                    style={"width": "240px"}))),
                labelled("Text B", dcc.Textarea(id=ids.SB_TEXT_B, value="", className="text-input",
                                                style={"width": "100%", "height": "70px"})),
                *job_row(ids.SB_RUN, ids.SB_CANCEL, ids.SB_PROGRESS, ids.SB_PROGRESS_MSG, ids.SB_PROGRESS_WRAP,
                         ids.SB_ERROR, "Compare"),
                help_text=f"A is the current analysis (input panel). Texts up to {cj.SBS_MAX_TOKENS} tokens; heads "
                          "are matched when both sides have the same tokens (same text and tokenizer). Headless: "
                          "python -m compute diff --model A --model-b B --text-file F --out DIR (or --text-file-b)."),
        html.Div(id=ids.SB_SUMMARY),
        html.Div([section("Per-head difference (B − A)",
                          controls(labelled("Metric", dcc.Dropdown(id=ids.SB_METRIC, value=DEFAULT_METRIC,
                                                                   clearable=False, options=list(cj.HEAD_METRICS),
                                                                   style={"width": "240px"}))),
                          graph(ids.SB_DELTA, 480), help_text="Click a head to show it below."),
                  section("Heads matched by Jensen-Shannon distance", graph(ids.SB_MATCH, 480))],
                 className="grid2"),
        section("Matches", graph(ids.SB_TABLE, 360)),
        html.Div([section("A: selected head", graph(ids.SB_MAP_A, 440)),
                  section("B: same head, or its matched head", graph(ids.SB_MAP_B, 440))], className="grid2"),
    ], id=ids.view("sidebyside"), className="view")


def head_map_figure(side: dict, layer: int, head: int, title: str, template: str = SCREEN):
    """One head's map of a stored side: full map (heatmap figure) or its pooled map for long texts."""
    maps = side["maps"]
    if not (0 <= layer < maps.shape[0] and 0 <= head < maps.shape[1]):
        return empty_figure(f"{title}: no head {layer}.{head} in this model", template)
    z = np.asarray(maps[layer, head], np.float32)
    if side["full"]:
        labels = token_labels(side["tokens"])
        return attention_heatmap(z, labels, labels, causal=side["causal"], title=title, template=template)
    return pooled_heatmap(z, side["pool"], side["n_tokens"], causal=side["causal"], title=title + " (pooled max)",
                          template=template)


def partner(diff: dict, layer: int, head: int) -> Optional[tuple[int, int]]:
    for m in diff.get("matches") or []:
        if m["a"] == f"{layer}.{head}" and m["b"]:
            l, h = m["b"].split(".")
            return int(l), int(h)
    return None


def render(stored: Optional[dict], metric: Optional[str], selected: tuple[int, int], template: str = SCREEN):
    """(summary, delta map, match map, match table, map A, map B, metric options)."""
    if stored is None:
        e = empty_figure("choose B and press Compare", template)
        return "", e, e, e, e, e, list(cj.HEAD_METRICS)
    diff = stored["diff"]
    metric = metric if metric in diff["metrics"] else DEFAULT_METRIC
    l, h = selected
    l = min(l, diff["a"]["n_layers"] - 1)
    h = min(h, diff["a"]["n_heads"] - 1)
    a, b = diff["a"], diff["b"]
    bits = [f"A: {a['label']} ({a['n_tokens']} tokens, {a['n_layers']}×{a['n_heads']} heads)",
            f"B: {b['label']} ({b['n_tokens']} tokens, {b['n_layers']}×{b['n_heads']} heads)",
            "matching: " + (diff["matching"]["reason"])]
    if not diff["grid_match"]:
        bits.append("the layer × head grids differ: the delta panel shows both layer profiles")
    summary = html.Div([notice(" · ".join(bits[:2])), notice(bits[2] if len(bits) < 4 else bits[2] + "; " + bits[3])])
    p = partner(diff, l, h)
    lb, hb = p if p is not None else (l, h)
    which = "matched head" if p is not None else "same head"
    if diff["matching"]["available"]:
        f_match, f_table = match_map(diff, selected=(l, h), template=template), match_table(diff, template=template)
    else:        # the reason is in the summary above (too long for an empty figure)
        f_match = f_table = empty_figure("no head matching: the two sides have different tokens", template)
    return (summary, delta_map(diff, metric, selected=(l, h), template=template), f_match, f_table,
            head_map_figure(stored["sides"]["a"], l, h, f"A: layer {l} head {h}", template),
            head_map_figure(stored["sides"]["b"], lb, hb, f"B: layer {lb} head {hb} ({which})", template),
            list(diff["metrics"]))


# ---------------------------------------------------------------- callbacks

def compare_body(progress, mode, model_b, path_b, text_b, state):
    if not state or not state.get("a"):
        raise InputError("analyse a text first: it is side A")
    return {"dk": cj.run_sidebyside(state["a"], mode or "models", (path_b or "").strip() or model_b, text_b,
                                    progress)}


register_job(guarded(compare_body, "side by side"), store=ids.SB_JOB, error=ids.SB_ERROR, run=ids.SB_RUN,
             cancel=ids.SB_CANCEL, progress=ids.SB_PROGRESS, msg=ids.SB_PROGRESS_MSG, wrap=ids.SB_PROGRESS_WRAP,
             states=[State(ids.SB_MODE, "value"), State(ids.SB_MODEL_B, "value"), State(ids.SB_PATH_B, "value"),
                     State(ids.SB_TEXT_B, "value"), State(ids.STATE, "data")])
register_relay(ids.SB_JOB, ids.SB_STORE)


@callback(Output(ids.SB_SUMMARY, "children"), Output(ids.SB_DELTA, "figure"), Output(ids.SB_MATCH, "figure"),
          Output(ids.SB_TABLE, "figure"), Output(ids.SB_MAP_A, "figure"), Output(ids.SB_MAP_B, "figure"),
          Output(ids.SB_METRIC, "options"),
          Input(ids.SB_STORE, "data"), Input(ids.SB_METRIC, "value"), Input(ids.STATE, "data"))
def render_sidebyside(store, metric, state):
    if state and state.get("view") != "sidebyside":
        raise PreventUpdate
    stored = cj.get_sidebyside((store or {}).get("dk"))
    out = render(stored, metric, urlstate.head_of(state or urlstate.DEFAULTS))
    if store and stored is None:
        out = (notice("this comparison is no longer stored: press Compare again", "warn"), *out[1:])
    return out


select_head_on_click(ids.SB_DELTA)
select_head_on_click(ids.SB_MATCH)
