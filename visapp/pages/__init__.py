"""The views as Dash pages: one module per view (`visapp.pages.<view>`), each holding its layout
(`layout(**query)`, the URL's query values as keyword arguments, as Dash pages pass them) and its
callbacks; the figures stay pure in visapp.figures.

Adding a view: one new module here plus its entry in visapp.urlstate.VIEW_TITLES (which orders the
navigation). Page modules import no other page module and nothing from the export package, so the
export registry may import them.
"""
from __future__ import annotations

import importlib
from types import ModuleType

from ..urlstate import VIEW_TITLES, VIEWS


def module(view: str) -> ModuleType:
    return importlib.import_module(f"{__name__}.{view}")


def register_all() -> None:
    """Register every view with Dash pages (after `dash.Dash(use_pages=True)`; imports the modules,
    which registers their callbacks)."""
    import dash
    for order, view in enumerate(VIEWS):
        mod = module(view)
        dash.register_page(mod.__name__, path=f"/{view}", name=VIEW_TITLES[view], title=f"attnvis · {VIEW_TITLES[view]}",
                           order=order, layout=mod.layout)
