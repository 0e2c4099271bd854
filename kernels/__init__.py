"""Instrumented attention: exact statistics without materialising n x n. Knows nothing of models."""
from .backend import BACKENDS, BackendUnavailable, attention_stats, resolve_backend
from .stats_types import AttentionStats, StatsConfig, VariantMask, auto_pool_size, dist_bin_edges

__all__ = ["BACKENDS", "BackendUnavailable", "attention_stats", "resolve_backend", "AttentionStats",
           "StatsConfig", "VariantMask", "auto_pool_size", "dist_bin_edges"]
