"""Attention analysis on top of the engine's statistics: sinks, entropy, head roles (with probes,
syntax and the text's own repeats), head importance, head graphs and basins over structured items.
sections.py documents every section; plan.py and reductions.py what the one forward fills for them.

Names load lazily (PEP 562): the settings import without torch (option parsers, the web app)."""
from importlib import import_module

_WHERE = {"run_analysis": "sections", "attach": "sections", "make_plan": "plan", "Plan": "plan",
          "AnalysisSettings": "settings", "DEFAULT_ROLE_THRESHOLDS": "settings", "ROLES": "settings",
          "PROBES": "settings"}
__all__ = list(_WHERE)


def __getattr__(name):
    if name in _WHERE:
        return getattr(import_module(f"{__name__}.{_WHERE[name]}"), name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
