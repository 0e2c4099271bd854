"""What every page's callbacks share: the opening (the state's analysis, its cached result, a
placeholder while there is none) written once as `on_analysis`, and head selection by click.

Pages write selections into the shell's SELECT store (never into the URL or another page's
components): visapp.callbacks.sync_state merges them into the URL state, so no callback graph cycles.
"""
from __future__ import annotations

import time
from dataclasses import dataclass
from functools import wraps
from typing import Any, Callable, Optional
from urllib.parse import urlencode

from dash import Input, Output, callback
from dash.exceptions import PreventUpdate

from .. import ids, service, urlstate

PENDING = "analysing… (progress is shown under Analyze in the input panel)"
NOT_STORED = ("this link's analysis is not stored here; press Analyze to run it again (results expire after "
              "ATTNVIS_CACHE_TIMEOUT_S)")


@dataclass
class Analysis:
    """One cached analysis as a page callback sees it."""

    state: dict
    key: str
    res: Any
    summ: dict

    @property
    def head(self) -> tuple[int, int]:
        return urlstate.head_of(self.state)


def status(state: Optional[dict]) -> str:
    """Why a view has nothing to show: still analysing, or a link whose request is stored nowhere."""
    key = state.get("a") if isinstance(state, dict) else None
    if isinstance(key, str) and key and key != service.default_request().key() and service.get_request(key) is None:
        return NOT_STORED
    return PENDING


def current(state: Optional[dict]) -> Optional[Analysis]:
    """The state's analysis, or None while it is not cached."""
    if not isinstance(state, dict) or not isinstance(state.get("a"), str) or not state["a"]:
        return None
    try:
        res = service.get_result(state["a"])
    except service.NotCached:
        return None
    st = dict(state)
    st["head"] = urlstate.clamp_head(str(st.get("head", "0.0")), res.n_layers, res.n_heads)
    return Analysis(st, st["a"], res, service.summary(res))


def on_analysis(view: str, placeholder: Callable[[str], Any]):
    """Decorator for a page's render callback `fn(a: Analysis, *controls)`, called as
    `(state, *controls)`: a state of another view does nothing (the page is leaving or the state
    is about to follow the URL), no cached result gives `placeholder(status message)`."""
    def deco(fn):
        @wraps(fn)
        def wrapper(state, *controls):
            if not isinstance(state, dict) or state.get("view") != view:
                raise PreventUpdate
            a = current(state)
            return placeholder(status(state)) if a is None else fn(a, *controls)
        return wrapper
    return deco


def head_rows(res, key: str, l: int, h: int, service, zoom: Optional[dict]):
    """(z, q0, k0) of the attention rows available without a job: the full map, or a zoomed block."""
    full = service.head_map(key, l, h)
    if full is not None:
        return full, 0, 0
    if zoom and zoom.get("head") == [l, h] and zoom.get("z") is not None:
        return zoom["z"], zoom["q0"], zoom["k0"]
    return None, 0, 0


def head_from_click(click: Optional[dict]) -> Optional[tuple[int, int]]:
    """(layer, head) from a clickData of the overview grid, a layer x head map or the head graph."""
    if not click or not click.get("points"):
        return None
    p = click["points"][0]
    cd = p.get("customdata")
    try:
        if isinstance(cd, (list, tuple)) and len(cd) >= 2:
            return int(cd[0]), int(cd[1])
        if p.get("x") is not None and p.get("y") is not None:
            return int(round(float(p["y"]))), int(round(float(p["x"])))
    except (TypeError, ValueError):
        return None
    return None


def selection(**values) -> dict:
    """A SELECT store value (the time stamp makes a repeated selection a change)."""
    return {**values, "t": time.time()}


def changed(state: Optional[dict], **values) -> dict:
    """A selection of `values`, or PreventUpdate when the state holds them already (a page's controls
    report their values when the page is inserted: no second render for nothing)."""
    if isinstance(state, dict) and all(state.get(k) == v for k, v in values.items()):
        raise PreventUpdate
    return selection(**values)


def select_head_on_click(source: str) -> Callable:
    """Register: a click on `source` (a figure whose points carry a head) selects that head."""
    def select(click):
        sel = head_from_click(click)
        if sel is None:
            raise PreventUpdate
        return selection(head=f"{sel[0]}.{sel[1]}")
    select.__name__ = f"select_head_from_{source.replace('-', '_')}"
    return callback(Output(ids.SELECT, "data", allow_duplicate=True), Input(source, "clickData"),
                    prevent_initial_call=True)(select)


def query_state(view: str, query: dict) -> dict:
    """The URL state a page's layout is built with (Dash passes the query values as keywords)."""
    return urlstate.parse(f"/{view}", "?" + urlencode({k: v for k, v in query.items() if isinstance(v, str)}))
