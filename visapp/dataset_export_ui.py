"""The "Export for a paper" block of the dataset views (corpus, Q/K embedding, side by side): the same
controls as visapp.export_ui's, with ids {"type": "dexport-<kind>", "view": view}, and one callback per
view that reads the view's stored result and controls and exports through visapp.export.datasets."""
from __future__ import annotations

import logging

from dash import Input, Output, State, callback, ctx, dcc, html, no_update

from compute.errors import UserError

from . import corpus_jobs as cj
from . import export as ex
from . import ids, urlstate
from .export_ui import export_block
from .export.datasets import DATASET_REGISTRY, DatasetData, export

log = logging.getLogger(__name__)
WHAT = {"dexport-fig": "figure", "dexport-csv": "csv", "dexport-json": "json"}


def eid(kind: str, view: str) -> dict:
    return {"type": f"dexport-{kind}", "view": view}


def control(view: str) -> html.Details:
    return export_block(view, DATASET_REGISTRY[view], eid)


def controls_for(view: str) -> list:
    return [control(view)] if view in DATASET_REGISTRY else []


def data_for(view: str, store: dict | None, control_value, extra, state: dict | None) -> DatasetData:
    """The view's stored result and control values (what its page shows)."""
    head = urlstate.head_of(state or urlstate.DEFAULTS)
    if view == "corpus":
        return DatasetData(view, cj.get_run((store or {}).get("run")), {"metric": control_value, "head": head})
    if view == "embedding":
        from .pages.embedding import groups_of
        emb = cj.get_embedding((store or {}).get("ek"))
        return DatasetData(view, emb, {"color_by": control_value, "groups": groups_of(emb)},
                           search=cj.get_search((extra or {}).get("sk")))
    return DatasetData(view, cj.get_sidebyside((store or {}).get("dk")), {"metric": control_value, "head": head})


def dataset_download(view, what, *, part, fmt="pdf", width="single", font="serif", size_pt=8, dpi=300,
                     store=None, control_value=None, extra=None, state=None):
    """(dcc.Download data or no_update, message); never a traceback."""
    try:
        d = data_for(view, store, control_value, extra, state)
        opts = ex.ExportOptions(fmt=fmt or "pdf", width=width or "single", font=font or "serif",
                                size_pt=float(size_pt if size_pt is not None else 8),
                                dpi=int(dpi if dpi is not None else 300))
        content, name, msg = export(d, part, what, opts)
        return dcc.send_bytes(content, name), msg
    except UserError as exc:
        return no_update, f"export failed: {exc}"
    except Exception as exc:
        log.exception("export failed")
        return no_update, f"export failed: internal error ({exc.__class__.__name__}: {exc})"


SOURCES = {"corpus": (ids.CP_RESULT, ids.CP_METRIC, None), "embedding": (ids.EM_STORE, ids.EM_COLOR, ids.CS_STORE),
           "sidebyside": (ids.SB_STORE, ids.SB_METRIC, None)}


def register(view: str) -> None:
    store, control_id, extra = SOURCES[view]

    def click(n_fig, n_csv, n_json, part, fmt, width, font, size_pt, dpi, state, store_v, control_v, extra_v=None):
        trig = ctx.triggered_id
        if not isinstance(trig, dict) or trig.get("type") not in WHAT:
            return no_update, no_update
        return dataset_download(view, WHAT[trig["type"]], part=part, fmt=fmt, width=width, font=font,
                                size_pt=size_pt, dpi=dpi, store=store_v, control_value=control_v, extra=extra_v,
                                state=state)

    click.__name__ = f"dataset_export_{view}"
    states = [State(store, "data"), State(control_id, "value")] + ([State(extra, "data")] if extra else [])
    callback(Output(eid("download", view), "data"), Output(eid("msg", view), "children"),
             Input(eid("fig", view), "n_clicks"), Input(eid("csv", view), "n_clicks"),
             Input(eid("json", view), "n_clicks"),
             *[State(eid(k, view), "value") for k in ("part", "fmt", "width", "font", "size", "dpi")],
             State(ids.STATE, "data"), *states, prevent_initial_call=True)(click)


for _view in DATASET_REGISTRY:
    register(_view)
