"""Query/key embedding (AttentionViz) of one head or every head of a layer, over the current text or the
last corpus run, and exBERT-style context search: the corpus tokens nearest to a token of the current
text by the head's query or the layer's hidden state (visapp.corpus_jobs)."""
from __future__ import annotations

from typing import Optional

from dash import Input, Output, State, callback, dcc, html, no_update
from dash.exceptions import PreventUpdate

from compute.embedding import DEFAULT_METHOD, MAX_POINTS, METHODS
from compute.errors import InputError, UserError

from .. import corpus_jobs as cj
from .. import ids, urlstate
from ..components import controls, graph, labelled, notice, plain_token, section
from ..dataset_ui import guarded, job_row, open_request, opened, register_job, register_relay
from ..figures import empty_figure
from ..figures.embedding import COLOR_BY, embedding_scatter, head_matrix
from ..figures.search import search_hits_table
from ..templates import SCREEN
from .common import current

ALL = -1                               # the head picker's "every head of the layer"
MIN_POINTS = 100
METHOD_LABELS = {"pca": "PCA (linear, deterministic, fast)",
                 "tsne": "t-SNE (clusters; slower: ~10-60 s for 4,000 points on a CPU)"}


def layout(**query) -> html.Div:
    st = urlstate.parse("/embedding", "?" + "&".join(f"{k}={v}" for k, v in query.items() if isinstance(v, str)))
    l, h = urlstate.head_of(st)
    return html.Div([
        section("Query/key embedding (AttentionViz)",
                controls(
                    labelled("Tokens of", dcc.RadioItems(id=ids.EM_SOURCE, value="text", inline=True, options=[
                        {"label": "the current text", "value": "text"},
                        {"label": "the last corpus run", "value": "corpus"}])),
                    labelled("Layer", dcc.Dropdown(id=ids.EM_LAYER, value=l, clearable=False, options=[],
                                                   style={"width": "90px"})),
                    labelled("Head", dcc.Dropdown(id=ids.EM_HEAD, value=h, clearable=False, options=[],
                                                  style={"width": "130px"})),
                    labelled("Method", dcc.RadioItems(id=ids.EM_METHOD, value=DEFAULT_METHOD, options=[
                        {"label": METHOD_LABELS.get(m, m), "value": m} for m in METHODS])),
                    labelled("Max points", dcc.Input(id=ids.EM_POINTS, type="number", min=MIN_POINTS,
                                                     max=MAX_POINTS, step=100, value=MAX_POINTS,
                                                     style={"width": "90px"})),
                    labelled("Colour by", dcc.Dropdown(id=ids.EM_COLOR, value="kind", clearable=False,
                                                       options=[{"label": c, "value": c} for c in COLOR_BY],
                                                       style={"width": "120px"}))),
                *job_row(ids.EM_RUN, ids.EM_CANCEL, ids.EM_PROGRESS, ids.EM_PROGRESS_MSG, ids.EM_PROGRESS_WRAP,
                         ids.EM_ERROR, "Embed"),
                html.Div(id=ids.EM_NOTE),
                graph(ids.EM_SCATTER, 560),
                html.Div(id=ids.EM_OPEN),
                help_text=f"Queries (circles) and keys (squares) as the attention function receives them (RoPE "
                          "applied), keys aligned as AttentionViz does (same mean norm, key centroid on the query "
                          f"centroid: neither changes any attention row). Sampled to at most {MAX_POINTS:,} points "
                          "(each sampled token with its query and key); WebGL. Click a point to open its text at that "
                          "head. Headless: python -m compute embed --corpus FILE.jsonl --layer L --head H --out DIR."),
        section("Context search (exBERT)",
                controls(
                    labelled("Token of the current text", dcc.Dropdown(id=ids.CS_TOKEN, options=[], value=None,
                                                                       style={"width": "260px"})),
                    labelled("Nearest by", dcc.RadioItems(id=ids.CS_BY, value="query", inline=True, options=[
                        {"label": "the head's query", "value": "query"},
                        {"label": "the layer's hidden state", "value": "hidden"}])),
                    labelled("Hits", dcc.Input(id=ids.CS_K, type="number", min=1, max=cj.SEARCH_MAX_K, step=1,
                                               value=cj.SEARCH_K, style={"width": "70px"}))),
                *job_row(ids.CS_RUN, ids.CS_CANCEL, ids.CS_PROGRESS, ids.CS_PROGRESS_MSG, ids.CS_PROGRESS_WRAP,
                         ids.CS_ERROR, "Search the corpus"),
                graph(ids.CS_TABLE, 300),
                help_text="The corpus of the last corpus run, searched by cosine similarity at the layer and head "
                          "above; each hit shows its context and where the head attends from it. Headless: "
                          "python -m compute search --corpus FILE.jsonl --layer L --head H --text T --position P "
                          "--by query|hidden --out DIR."),
    ], id=ids.view("embedding"), className="view")


def source_of(kind: str, state: Optional[dict], corpus_result: Optional[dict]) -> dict:
    if kind == "corpus":
        return {"kind": "corpus", "run": (corpus_result or {}).get("run")}
    return {"kind": "text", "a": (state or {}).get("a")}


def grid_of(kind: str, state: Optional[dict], corpus_result: Optional[dict]) -> Optional[tuple[int, int]]:
    """(layers, heads) of the chosen source's model."""
    if kind == "corpus":
        run = cj.get_run((corpus_result or {}).get("run"))
        return (run["overview"]["n_layers"], run["overview"]["n_heads"]) if run else None
    a = current(state)
    return (a.res.n_layers, a.res.n_heads) if a else None


def render(emb: Optional[dict], color_by: str, groups: Optional[dict] = None, template: str = SCREEN):
    """(figure, note) of a stored embedding."""
    if emb is None:
        return empty_figure("choose a layer and head and press Embed", template), ""
    if emb.get("heads") is not None:
        fig = head_matrix(emb, template=template)
    else:
        if color_by == "group" and not groups:
            color_by = "text"
        fig = embedding_scatter(emb, color_by, groups=groups, template=template)
    red = (emb.get("reduction") or (emb.get("heads") or [{}])[0].get("reduction") or {})
    bits = [f"{emb['method'].upper()} of {emb.get('n_points', len(emb['points']))} points from "
            f"{emb['n_tokens']:,} tokens of {(emb.get('source') or {}).get('label', '')} "
            f"(at most {emb['max_points']:,} points)"]
    if red.get("explained_variance_ratio"):
        bits.append("variance explained by the two axes: " +
                    " + ".join(f"{100 * v:.1f}%" for v in red["explained_variance_ratio"]))
    return fig, notice("; ".join(bits))


def groups_of(emb: Optional[dict]) -> Optional[dict]:
    """{text id: kind} of the embedded corpus (colour by group), or None."""
    src = (emb or {}).get("source") or {}
    run = cj.get_run(src.get("run")) if src.get("kind") == "corpus" else None
    if not run or not any(run.get("kinds") or []):
        return None
    return dict(zip(run["ids"], run["kinds"]))


def head_value(head) -> Optional[int]:
    return None if head is None or int(head) == ALL else int(head)


# ---------------------------------------------------------------- callbacks

@callback(Output(ids.EM_LAYER, "options"), Output(ids.EM_HEAD, "options"), Output(ids.CS_TOKEN, "options"),
          Output(ids.EM_LAYER, "value"), Output(ids.EM_HEAD, "value"),
          Input(ids.EM_SOURCE, "value"), Input(ids.STATE, "data"), State(ids.CP_RESULT, "data"))
def pickers(kind, state, corpus_result):
    """The layer / head / token choices of the source's model; the pickers follow the selected head (a
    dropdown drops a value its options do not hold, so the values come with the options)."""
    if state and state.get("view") != "embedding":
        raise PreventUpdate
    grid = grid_of(kind, state, corpus_result)
    a = current(state)
    tokens = [{"label": f"({i}){plain_token(t)}", "value": i} for i, t in enumerate(a.res.tokens[:2048])] if a else []
    if grid is None:
        return [], [], tokens, None, None
    L, H = grid
    l, h = urlstate.head_of({"head": urlstate.clamp_head((state or {}).get("head", "0.0"), L, H)})
    return ([{"label": str(l), "value": l} for l in range(L)],
            [{"label": "all (matrix)", "value": ALL}] + [{"label": str(h), "value": h} for h in range(H)], tokens,
            l, h)


def embed_body(progress, kind, layer, head, method, max_points, state, corpus_result):
    if layer is None or head is None:
        raise InputError("choose a layer and a head")
    try:
        mp = int(max_points)
    except (TypeError, ValueError):
        raise InputError(f"max points must be a whole number between {MIN_POINTS} and {MAX_POINTS}") from None
    if not MIN_POINTS <= mp <= MAX_POINTS:
        raise InputError(f"max points must be between {MIN_POINTS} and {MAX_POINTS:,}")
    src = source_of(kind, state, corpus_result)
    return {"ek": cj.run_embedding(src, int(layer), head_value(head), method or DEFAULT_METHOD, mp, progress)}


register_job(guarded(embed_body, "embedding"), store=ids.EM_JOB, error=ids.EM_ERROR, run=ids.EM_RUN,
             cancel=ids.EM_CANCEL, progress=ids.EM_PROGRESS, msg=ids.EM_PROGRESS_MSG, wrap=ids.EM_PROGRESS_WRAP,
             states=[State(ids.EM_SOURCE, "value"), State(ids.EM_LAYER, "value"), State(ids.EM_HEAD, "value"),
                     State(ids.EM_METHOD, "value"), State(ids.EM_POINTS, "value"), State(ids.STATE, "data"),
                     State(ids.CP_RESULT, "data")])
register_relay(ids.EM_JOB, ids.EM_STORE)


@callback(Output(ids.EM_SCATTER, "figure"), Output(ids.EM_NOTE, "children"),
          Input(ids.EM_STORE, "data"), Input(ids.EM_COLOR, "value"))
def render_embedding(store, color_by):
    emb = cj.get_embedding((store or {}).get("ek"))
    if store and emb is None:
        return empty_figure("this embedding is no longer stored: press Embed again"), ""
    return render(emb, color_by or "kind", groups_of(emb))


def open_point(click, store, state):
    """A click on a point: the head view of its head, on its text (a corpus text is analysed first)."""
    if not click or not click.get("points"):
        raise PreventUpdate
    cd = click["points"][0].get("customdata")
    emb = cj.get_embedding((store or {}).get("ek"))
    if not isinstance(cd, list) or len(cd) < 3 or emb is None:
        raise PreventUpdate
    tid, pos, kind = str(cd[0]), int(cd[1]), cd[2]
    head = int(cd[3]) if len(cd) > 3 else int(emb["head"])
    from .common import selection
    sel = selection(head=f"{emb['layer']}.{head}")
    what = f"{kind} of token ({pos}) in {tid}: head {emb['layer']}.{head}"
    src = emb.get("source") or {}
    if src.get("kind") != "corpus":
        return no_update, "/head", sel, opened(f"opened the head view at the {what}")
    try:
        model, text = cj.run_text(src.get("run"), tid)
    except UserError as exc:
        return no_update, no_update, no_update, opened(str(exc), ok=False)
    # the path stays: a path change in the same update cancels the analysis job (see pages.corpus.open_text)
    return open_request(model, text), no_update, sel, opened(f"opening the {what}: analysing its text (progress "
                                                             "under Analyze), then see Head detail")


callback(Output(ids.AUTORUN, "data", allow_duplicate=True), Output(ids.URL, "pathname", allow_duplicate=True),
         Output(ids.SELECT, "data", allow_duplicate=True), Output(ids.EM_OPEN, "children"),
         Input(ids.EM_SCATTER, "clickData"), State(ids.EM_STORE, "data"), State(ids.STATE, "data"),
         prevent_initial_call=True)(open_point)


def search_body(progress, position, by, k, layer, head, state, corpus_result):
    if position is None:
        raise InputError("choose a token of the current text")
    if layer is None or head_value(head) is None:
        raise InputError("context search needs one head: choose a head (not 'all')")
    run = (corpus_result or {}).get("run")
    if not run:
        raise UserError("no corpus run yet: run one on the Corpus page first")
    try:
        k = int(k)
    except (TypeError, ValueError):
        raise InputError(f"hits must be a whole number between 1 and {cj.SEARCH_MAX_K}") from None
    return {"sk": cj.run_search((state or {}).get("a"), int(position), run, int(layer), head_value(head),
                                by or "query", k, progress)}


register_job(guarded(search_body, "context search"), store=ids.CS_JOB, error=ids.CS_ERROR, run=ids.CS_RUN,
             cancel=ids.CS_CANCEL, progress=ids.CS_PROGRESS, msg=ids.CS_PROGRESS_MSG, wrap=ids.CS_PROGRESS_WRAP,
             states=[State(ids.CS_TOKEN, "value"), State(ids.CS_BY, "value"), State(ids.CS_K, "value"),
                     State(ids.EM_LAYER, "value"), State(ids.EM_HEAD, "value"), State(ids.STATE, "data"),
                     State(ids.CP_RESULT, "data")])
register_relay(ids.CS_JOB, ids.CS_STORE)


def render_search(result: Optional[dict], template: str = SCREEN):
    if result is None:
        return empty_figure("choose a token and press Search the corpus", template)
    return search_hits_table(result, template=template)


@callback(Output(ids.CS_TABLE, "figure"), Input(ids.CS_STORE, "data"))
def show_search(store):
    res = cj.get_search((store or {}).get("sk"))
    if store and res is None:
        return empty_figure("this search is no longer stored: search again")
    return render_search(res)
