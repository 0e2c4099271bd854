"""Corpus: many texts through the pipeline (visapp.corpus_jobs.run_corpus), Dodrio's dataset overview
(per-head mean glyph with spread, role mode and role stability), sink-rate and entropy distributions over
the texts; a click on a text opens it as the current analysis (Head overview)."""
from __future__ import annotations

from typing import Optional

from dash import Input, Output, State, callback, dcc, html, no_update
from dash.exceptions import PreventUpdate

from compute.errors import UserError

from .. import corpus_jobs as cj
from .. import ids
from ..components import controls, error_box, graph, labelled, notice, section
from ..dataset_ui import job_row, open_request, opened, register_job, register_relay, guarded
from ..figures import empty_figure
from ..figures.corpus import corpus_head_grid, corpus_spread_map, role_stability_map, text_distributions
from ..templates import SCREEN
from .common import select_head_on_click

DEFAULT_METRIC = "sink_metric"
CLI = "python -m compute analyze --corpus FILE.jsonl --out DIR"


def layout(**query) -> html.Div:
    return html.Div([
        section("Corpus",
                controls(
                    labelled("Texts", dcc.RadioItems(id=ids.CP_SOURCE, value="mixed", inline=True, options=[
                        *[{"label": label, "value": name} for name, (label, _) in cj.SHIPPED.items()],
                        {"label": "an uploaded JSONL file", "value": "upload"}])),
                    dcc.Upload(id=ids.CP_UPLOAD, children=html.Div(["Drop or ", html.A("choose"),
                                                                    " a .jsonl file"]),
                               className="upload", max_size=cj.MAX_UPLOAD_BYTES, accept=".jsonl,.json,.txt",
                               style={"border": "1px dashed #888", "padding": "6px 12px", "cursor": "pointer"})),
                html.Div(id=ids.CP_UPLOAD_INFO, role="status"),
                *job_row(ids.CP_RUN, ids.CP_CANCEL, ids.CP_PROGRESS, ids.CP_PROGRESS_MSG, ids.CP_PROGRESS_WRAP,
                         ids.CP_ERROR, "Run corpus"),
                help_text=f"One {{\"id\": ..., \"text\": ...}} per line; {cj.limits_text()}. Runs on the input "
                          "panel's model, text by text (on the Celery workers when REDIS_URL is set); finished "
                          f"texts are cached, so a re-run reuses them. Headless: {CLI} (writes corpus.json with "
                          "role_stability and role_mode per head)."),
        html.Div(id=ids.CP_SUMMARY),
        section("Dataset overview (per head over the texts)",
                controls(labelled("Metric", dcc.Dropdown(id=ids.CP_METRIC, value=DEFAULT_METRIC, clearable=False,
                                                         options=list(cj.HEAD_METRICS), style={"width": "300px"}))),
                graph(ids.CP_GRID, 520),
                help_text="Colour = mean over the texts; symbol = the head's most frequent role; size = role "
                          "stability (share of texts on which the head has that role); the hover gives the std. "
                          "Click a head to select it everywhere."),
        html.Div([section("Spread over texts", graph(ids.CP_SPREAD, 420)),
                  section("Role stability", graph(ids.CP_STABILITY, 420))], className="grid2"),
        section("Per-text distributions", graph(ids.CP_DIST, 380), html.Div(id=ids.CP_OPEN),
                help_text="One point per text. Click a point to open that text as the current analysis."),
    ], id=ids.view("corpus"), className="view")


def metric_options(run: dict) -> list[dict]:
    return [{"label": m, "value": m} for m in run["overview"]["metrics"]]


def kinds_of(run: dict) -> Optional[list]:
    kinds = run.get("kinds") or []
    return [k or "(none)" for k in kinds] if any(kinds) else None


def render(run: Optional[dict], metric: Optional[str], selected=None, template: str = SCREEN):
    """(summary, head grid, spread map, role-stability map, distributions) of a finished run."""
    if run is None:
        e = empty_figure("choose a corpus and press Run corpus", template)
        return "", e, e, e, e
    ov = run["overview"]
    metric = metric if metric in ov["metrics"] else DEFAULT_METRIC
    failed = run.get("failed") or {}
    bits = [f"{ov['n_texts']} texts on {run['model']} ({run['label']})",
            f"{sum(run.get('n_tokens', {}).values()):,} tokens", f"{ov['n_layers']}×{ov['n_heads']} heads",
            f"run {run['mode']}"]
    if run.get("reused"):
        bits.append(f"{run['reused']} texts reused from the cache")
    summary = [notice(" · ".join(bits))]
    if failed:
        summary.append(notice(f"{len(failed)} texts failed: " + "; ".join(f"{t}: {e}" for t, e in
                                                                          list(failed.items())[:5]), "warn"))
    return (html.Div(summary), corpus_head_grid(ov, metric, selected=selected, template=template),
            corpus_spread_map(ov, metric, selected=selected, template=template),
            role_stability_map(ov, selected=selected, template=template),
            text_distributions(ov, kinds=kinds_of(run), template=template))


# ---------------------------------------------------------------- callbacks

@callback(Output(ids.CP_CORPUS, "data"), Output(ids.CP_UPLOAD_INFO, "children"),
          Input(ids.CP_SOURCE, "value"), Input(ids.CP_UPLOAD, "contents"), State(ids.CP_UPLOAD, "filename"))
def choose_corpus(source, contents, filename):
    """Store the chosen corpus (a bad upload: one message naming the line)."""
    try:
        if source == "upload":
            if not contents:
                return None, notice("choose a .jsonl file to upload")
            ck = cj.uploaded_corpus(contents, filename)
        else:
            ck = cj.shipped_corpus(source or "mixed")
    except UserError as exc:
        return None, error_box(str(exc))
    c = cj.get_corpus(ck)
    return {"ck": ck}, notice(f"{c['label']}: {len(c['items'])} texts")


def corpus_body(progress, chosen, model, path):
    if not chosen or not chosen.get("ck"):
        raise UserError("choose a corpus first (a bad upload is named above)")
    return {"run": cj.run_corpus(chosen["ck"], (path or "").strip() or model, progress=progress)}


register_job(guarded(corpus_body, "corpus run"), store=ids.CP_JOB, error=ids.CP_ERROR, run=ids.CP_RUN,
             cancel=ids.CP_CANCEL, progress=ids.CP_PROGRESS, msg=ids.CP_PROGRESS_MSG, wrap=ids.CP_PROGRESS_WRAP,
             states=[State(ids.CP_CORPUS, "data"), State(ids.MODEL, "value"), State(ids.MODEL_PATH, "value")])
register_relay(ids.CP_JOB, ids.CP_RESULT)


@callback(Output(ids.CP_SUMMARY, "children"), Output(ids.CP_GRID, "figure"), Output(ids.CP_SPREAD, "figure"),
          Output(ids.CP_STABILITY, "figure"), Output(ids.CP_DIST, "figure"), Output(ids.CP_METRIC, "options"),
          Input(ids.CP_RESULT, "data"), Input(ids.CP_METRIC, "value"), Input(ids.STATE, "data"))
def render_corpus(result, metric, state):
    if state and state.get("view") != "corpus":
        raise PreventUpdate
    run = cj.get_run((result or {}).get("run"))
    sel = None
    if run is not None and state and state.get("head"):
        from ..urlstate import clamp_head, head_of
        sel = head_of({"head": clamp_head(state["head"], run["overview"]["n_layers"], run["overview"]["n_heads"])})
    out = render(run, metric, sel)
    if result and run is None:
        out = (notice("this corpus run is no longer stored: press Run corpus again", "warn"), *out[1:])
    return (*out, metric_options(run) if run else list(cj.HEAD_METRICS))


def open_text(click, result):
    """A click on a text's point: (AUTORUN request, path, notice) that open it as the current analysis. The
    page stays (a path change in the same update cancels the analysis job in Dash 4.4's renderer); when the
    analysis is done every other view shows it (the navigation carries its key)."""
    if not click or not click.get("points"):
        raise PreventUpdate
    tid = click["points"][0].get("customdata")
    if isinstance(tid, list):
        tid = tid[0] if tid else None
    if tid is None:
        raise PreventUpdate
    try:
        model, text = cj.run_text((result or {}).get("run"), str(tid))
        return open_request(model, text), no_update, opened(
            f"opening text {tid}: analysing it (progress under Analyze); then every view shows it, e.g. Head overview")
    except UserError as exc:
        return no_update, no_update, opened(str(exc), ok=False)


callback(Output(ids.AUTORUN, "data", allow_duplicate=True), Output(ids.URL, "pathname", allow_duplicate=True),
         Output(ids.CP_OPEN, "children"), Input(ids.CP_DIST, "clickData"), State(ids.CP_RESULT, "data"),
         prevent_initial_call=True)(open_text)

select_head_on_click(ids.CP_GRID)
select_head_on_click(ids.CP_SPREAD)
select_head_on_click(ids.CP_STABILITY)
