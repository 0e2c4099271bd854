"""Small Dash building blocks shared by the shell and the pages (no callbacks here, so any module
may import it: visapp.hardening takes `error_box` from here)."""
from __future__ import annotations

from typing import Any, Sequence

from dash import dcc, html

from .figures import empty_figure

GRAPH_CONFIG = {"displaylogo": False,
                "toImageButtonOptions": {"format": "svg", "filename": "attnvis", "scale": 1}}


def graph(id_: str, height: int = 320, **kw) -> dcc.Graph:
    return dcc.Graph(id=id_, figure=empty_figure("…", height=height), config=GRAPH_CONFIG,
                     style={"minHeight": f"{height}px"}, **kw)


def plain_token(tok: str) -> str:
    """A token for an HTML component (Dash renders strings as text, so nothing is escaped here,
    unlike visapp.figures.show_token for plotly): whitespace made visible."""
    return tok.replace("\n", "⏎").replace("\t", "⇥").replace("\r", "")


def notice(text: str, kind: str = "info") -> html.Div:
    return html.Div(text, className=f"notice notice-{kind}")


def error_box(message: str) -> html.Div:
    return html.Div([html.B("Error: "), message, html.Span(" (the previous results are still shown)",
                                                            className="help")], className="error")


def unavailable(what: str, reason: str | None = None) -> str:
    return f"{what}: not available yet" + (f" ({reason})" if reason else "")


def table(columns: Sequence[str], rows: Sequence[Sequence[Any]], cls: str = "data-table") -> html.Table:
    def cell(v):
        if isinstance(v, float):
            return f"{v:.4g}"
        return "" if v is None else str(v)
    return html.Table([html.Thead(html.Tr([html.Th(c) for c in columns])),
                       html.Tbody([html.Tr([html.Td(cell(v)) for v in r]) for r in rows])], className=cls)


def section(title: str, *children, help_text: str | None = None) -> html.Section:
    head = [html.H3(title)]
    if help_text:
        head.append(html.P(help_text, className="help"))
    return html.Section(head + list(children), className="card")


def controls(*children) -> html.Div:
    return html.Div(list(children), className="controls")


def labelled(label: str, component, width: str | None = None) -> html.Label:
    style = {"width": width} if width else None
    return html.Label([html.Span(label, className="ctl-label"), component], className="ctl", style=style)


def edge_threshold(component_id: str, value: float) -> html.Div:
    """The token graphs' edge-threshold slider (head view and graphs view alike)."""
    return controls(labelled("Edge threshold", dcc.Slider(id=component_id, min=0.02, max=0.5, step=0.01, value=value,
                                                          marks={0.1: "0.1", 0.25: "0.25", 0.5: "0.5"},
                                                          tooltip={"placement": "bottom"}), width="360px"))
