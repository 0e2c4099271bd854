"""The app's export control: one per view (appended to the view by `with_export`), rendering
server-side with kaleido (visapp.export) and delivering through dcc.Download.

Figure: SVG, PDF or PNG (chosen DPI), single or double column, serif or sans, 7-10 pt. Data: the
figure's numbers as CSV (a zip of CSVs when it has several tables) or JSON with provenance.
The export renders the figure the view shows: same analysis, same selected head and controls, same
view function (visapp.export.registry), only with the paper template.

Component ids are {"type": "export-<kind>", "view": <view>}; each view gets its own callback
(`register`), whose States are the shell's URL state plus the controls its page module lists in
EXPORT_CONTROLS (a page's components exist only while it is shown). `export_download` is the plain
function behind it (tests call it directly).
"""
from __future__ import annotations

import logging
from typing import Optional

from dash import Input, Output, State, callback, ctx, dcc, html, no_update

from compute.errors import UserError

from . import export as ex
from . import ids, pages, service, urlstate
from .components import controls, labelled
from .export import registry as reg
from .urlstate import VIEWS

log = logging.getLogger(__name__)
KINDS = ("part", "fmt", "width", "font", "size", "dpi", "fig", "csv", "json", "download", "msg")


def eid(kind: str, view) -> dict:
    return {"type": f"export-{kind}", "view": view}


def control(view: str) -> html.Details:
    """The export block of one view."""
    return export_block(view, reg.specs(view), eid)


def export_block(view: str, parts, eid) -> html.Details:
    """The "Export for a paper" controls for a view's figure parts (objects with .part and .label);
    eid(kind, view) makes the component ids (the dataset views use their own id family)."""
    return html.Details([
        html.Summary("Export for a paper (figure SVG/PDF/PNG, data CSV/JSON)"),
        controls(
            labelled("Figure", dcc.Dropdown(id=eid("part", view), clearable=False, value=parts[0].part,
                                            options=[{"label": s.label, "value": s.part} for s in parts],
                                            style={"width": "250px"})),
            labelled("Format", dcc.RadioItems(id=eid("fmt", view), value="pdf", inline=True,
                                              options=[{"label": f.upper(), "value": f} for f in ex.FORMATS])),
            labelled("Width", dcc.RadioItems(id=eid("width", view), value="single", inline=True, options=[
                {"label": f"{w} column ({ex.PAPER_WIDTH_IN[w]} in)", "value": w} for w in ex.WIDTHS])),
            labelled("Font", dcc.RadioItems(id=eid("font", view), value="serif", inline=True,
                                            options=[{"label": f, "value": f} for f in ex.FONTS])),
            labelled("Size (pt)", dcc.Input(id=eid("size", view), type="number", min=ex.SIZE_PT_RANGE[0],
                                            max=ex.SIZE_PT_RANGE[1], step=0.5, value=8, style={"width": "70px"})),
            labelled("DPI (PNG)", dcc.Input(id=eid("dpi", view), type="number", min=ex.DPI_RANGE[0],
                                            max=ex.DPI_RANGE[1], step=1, value=300, style={"width": "80px"})),
            html.Button("Download figure", id=eid("fig", view), className="btn btn-small", n_clicks=0),
            html.Button("Data CSV", id=eid("csv", view), className="btn btn-small btn-secondary", n_clicks=0),
            html.Button("Data JSON", id=eid("json", view), className="btn btn-small btn-secondary", n_clicks=0),
        ),
        dcc.Loading(html.Div(id=eid("msg", view), className="help"), type="dot", delay_show=300),
        dcc.Download(id=eid("download", view)),
    ], className="card export")


def controls_for(view: str) -> list:
    """The export block under a page ([] for a view with no exportable figure)."""
    return [control(view)] if view in reg.REGISTRY else []


def settings_from(state: dict, controls_: dict) -> reg.ViewSettings:
    """The view's control values (URL state + components) as ViewSettings; None -> the app default."""
    d = reg.ViewSettings()
    c = {k: v for k, v in (controls_ or {}).items() if v is not None}
    return reg.ViewSettings(
        head=urlstate.head_of(state), metric=state.get("metric") or d.metric, scale=state.get("scale") or d.scale,
        size_by=c.get("size_by", d.size_by), colours=c.get("colours", d.colours), pool=c.get("pool", d.pool),
        eps=float(c.get("eps", d.eps)), head_threshold=float(c.get("head_threshold", d.head_threshold)),
        graph_threshold=float(c.get("graph_threshold", d.graph_threshold)),
        important=tuple(int(i) for i in c.get("important", ())), diff_variant=str(c.get("diff_variant") or ""))


def export_download(view: str, what: str, *, part: Optional[str], fmt: str = "pdf", width: str = "single",
                    font: str = "serif", size_pt=8, dpi=300, state: Optional[dict] = None,
                    controls_: Optional[dict] = None):
    """(dcc.Download data or no_update, message). what: 'figure' | 'csv' | 'json'."""
    try:
        if not state or not state.get("a"):
            raise UserError("nothing to export yet: analyse a text first")
        c = dict(controls_ or {})
        zoom_store, cmp_store = c.pop("zoom", None), c.pop("compare", None)
        trace = {k: c.pop(k) for k in ("trace", "trace_key") if k in c}     # the trace view's controls
        zoom = service.get_zoom(zoom_store.get("zk")) if zoom_store else None
        cmp = service.get_comparison(cmp_store.get("ck")) if cmp_store and cmp_store.get("a") == state["a"] else None
        context = reg.make_context(state["a"], settings_from(state, c), zoom=zoom, comparison=cmp, trace=trace)
        sp = reg.spec(view, part)
        opts = ex.ExportOptions(fmt=fmt or "pdf", width=width or "single", font=font or "serif",
                                size_pt=float(size_pt if size_pt is not None else 8),
                                dpi=int(dpi if dpi is not None else 300)).validate()
        stem = ex.file_stem(context, sp)
        if what == "figure":
            out = ex.export_figure(context, sp, opts)
            name = f"{stem}.{opts.fmt}"
            w, h = out.fig.layout.width / ex.CSS_PX_PER_IN, out.fig.layout.height / ex.CSS_PX_PER_IN
            return dcc.send_bytes(out.content, name), f"exported {name} ({w:.2f} × {h:.2f} in)"
        if what not in ex.DATA_FORMATS:
            raise UserError(f"unknown export {what!r}")
        tables = ex.tables_of(context, sp)
        prov = ex.provenance(context, sp, opts) if what == "json" else None
        content, ext = ex.data_bytes(tables, what, prov)
        name = f"{stem}.data.{ext}"
        return dcc.send_bytes(content, name), f"exported {name} ({', '.join(tables)})"
    except service.NotCached as exc:
        return no_update, f"export: {exc}"
    except UserError as exc:
        return no_update, f"export failed: {exc}"
    except Exception as exc:  # never a traceback in the page
        log.exception("export failed")
        return no_update, f"export failed: internal error ({exc.__class__.__name__}: {exc})"


WHAT = {"export-fig": "figure", "export-csv": "csv", "export-json": "json"}


def register(view: str) -> None:
    """The export callback of one view: its buttons, its export options, its page's controls."""
    states = tuple(getattr(pages.module(view), "EXPORT_CONTROLS", ()))

    def export_click(n_fig, n_csv, n_json, part, fmt, width, font, size_pt, dpi, state, *control_values):
        trig = ctx.triggered_id
        if not isinstance(trig, dict) or trig.get("type") not in WHAT:
            return no_update, no_update
        controls_ = {name: v for (name, _, _), v in zip(states, control_values)}
        return export_download(view, WHAT[trig["type"]], part=part, fmt=fmt, width=width, font=font,
                               size_pt=size_pt, dpi=dpi, state=state, controls_=controls_)

    export_click.__name__ = f"export_{view}"
    callback(Output(eid("download", view), "data"), Output(eid("msg", view), "children"),
             Input(eid("fig", view), "n_clicks"), Input(eid("csv", view), "n_clicks"),
             Input(eid("json", view), "n_clicks"),
             *[State(eid(k, view), "value") for k in ("part", "fmt", "width", "font", "size", "dpi")],
             State(ids.STATE, "data"), *[State(cid, prop) for _, cid, prop in states],
             prevent_initial_call=True)(export_click)


for _view in VIEWS:
    if _view in reg.REGISTRY:
        register(_view)
