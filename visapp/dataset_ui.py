"""What the dataset pages (visapp.pages.corpus, embedding, sidebyside) share: a job's Run / Cancel /
progress row, the background callback that runs a visapp.corpus_jobs function with progress and cancel
(the analyses' manager), and opening a text as the current analysis. No page module imports another,
so this lives outside visapp.pages."""
from __future__ import annotations

import logging
import time
from typing import Callable, Optional

from dash import Input, Output, callback, html, no_update

from compute.errors import UserError

from . import service
from .components import error_box
from .state import background_manager

log = logging.getLogger(__name__)


def job_row(run: str, cancel: str, progress: str, msg: str, wrap: str, error: str, label: str = "Run") -> list:
    return [html.Div([html.Button(label, id=run, className="btn", n_clicks=0),
                      html.Button("Cancel", id=cancel, className="btn btn-secondary", disabled=True)],
                     className="buttons"),
            html.Div([html.Progress(id=progress, max="100", value="0"), html.Span(id=msg, className="progress-msg")],
                     className="progress-row", id=wrap, style={"display": "none"}),
            html.Div(id=error, role="alert")]


def guarded(fn: Callable[..., dict], what: str) -> Callable:
    """A job body `fn(progress, *args) -> store value` as (store, error box): a UserError becomes its
    message, anything else one line (never a traceback in the page)."""
    def job(set_progress, n_clicks, *args):
        if not n_clicks:
            return no_update, no_update
        try:
            service.job_setup()
            out = fn(lambda f, m: set_progress((str(int(round(100 * max(0.0, min(1.0, f))))), m)), *args)
            return {**out, "t": time.time()}, ""
        except UserError as exc:
            return no_update, error_box(str(exc))
        except MemoryError:
            return no_update, error_box(f"{what}: out of memory: use fewer or shorter texts")
        except Exception as exc:
            log.exception("%s failed", what)
            return no_update, error_box(f"{what}: internal error ({exc.__class__.__name__}: {exc})")
    job.__name__ = f"{what.replace(' ', '_')}_job"
    return job


def register_job(body: Callable, *, store: str, error: str, run: str, cancel: str, progress: str, msg: str,
                 wrap: str, states: list) -> Callable:
    """The background callback: Run -> body(progress, *states) in a job -> store; Cancel stops it."""
    callback(Output(store, "data"), Output(error, "children"), Input(run, "n_clicks"), *states,
             background=True, manager=background_manager(), interval=500, prevent_initial_call=True,
             progress=[Output(progress, "value"), Output(msg, "children")],
             running=[(Output(run, "disabled"), True, False), (Output(cancel, "disabled"), False, True),
                      (Output(wrap, "style"), {"display": "flex"}, {"display": "none"})],
             cancel=[Input(cancel, "n_clicks")])(body)
    return body


def register_relay(source: str, target: str) -> None:
    """Background output -> the store the page and its export read (see visapp.ids.ZOOM_JOB)."""
    def relay(data):
        return data
    relay.__name__ = f"relay_{source.replace('-', '_')}"
    callback(Output(target, "data"), Input(source, "data"), prevent_initial_call=True)(relay)


def open_request(model: str, text: str) -> dict:
    """The AUTORUN value that analyses `text` on `model` as the current analysis (the shell's job)."""
    from .corpus_jobs import open_request as req
    return {"request": req(model, text).to_dict(), "t": time.time()}


def opened(what: str, ok: bool = True) -> Optional[html.Div]:
    return html.Div(what, className="notice notice-info" if ok else "notice notice-warn")
