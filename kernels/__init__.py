"""Instrumented attention: exact statistics without materialising n x n. Knows nothing of models.

Names load lazily (PEP 562), so `kernels.names` (plain values for option parsers and the web app)
imports without torch."""
from importlib import import_module

_WHERE = {"BACKENDS": "names", "BackendUnavailable": "backend", "attention_stats": "backend",
          "resolve_backend": "backend", "supports_observer": "backend", "AttentionStats": "stats_types",
          "StatsConfig": "stats_types", "VariantMask": "stats_types", "auto_pool_size": "stats_types",
          "dist_bin_edges": "stats_types"}
__all__ = list(_WHERE)


def __getattr__(name):
    if name in _WHERE:
        return getattr(import_module(f"{__name__}.{_WHERE[name]}"), name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
