"""Attention variants compared with softmax on a real model and text (issue 5).

    compare_variants(lm, text, specs, layers=None, heads=None, ...) -> dict   the one entry point (swap.py)
    list_variants() -> [dict]                                                the registry, for menus
    parse_spec / parse_specs                                                 spec strings -> VariantSpec
    layer_fidelity(call, spec, ...)                                          per-head metrics of one layer
    variant_map(call, spec, head, rows=None) -> np.ndarray [R, Nk]           a variant's map, on demand
    variant_maps(lm, text, specs, layer, head, rows=None) -> dict            maps side by side for the app
    fit_hedgehog(call, ...)                                                  Hedgehog attention transfer
See the modules for definitions: registry (catalogue), masking / linear / hedgehog / reweight (variants),
fidelity (metrics), swap (end to end), maps (capture cache for the app).
"""
from .fidelity import METRICS, FidelityOptions, layer_fidelity, reference_stats, variant_map
from .hedgehog import fit_hedgehog
from .maps import layer_call, variant_maps
from .registry import VARIANTS, VariantSpec, list_variants, parse_spec, parse_specs, split_specs
from .swap import compare_variants, to_jsonable

__all__ = ["METRICS", "FidelityOptions", "layer_fidelity", "reference_stats", "variant_map", "fit_hedgehog",
           "layer_call", "variant_maps", "VARIANTS", "VariantSpec", "list_variants", "parse_spec",
           "parse_specs", "split_specs", "compare_variants", "to_jsonable"]
