"""Pure figure builders: numpy in, plotly Figure out, no Dash and no app state.

Every builder takes `template=` (visapp.templates.SCREEN in the app, PAPER for export), so the export
path renders exactly the figures the app shows. Builders take user text (tokens, labels, names, titles)
as plain text and escape plotly's markup once (common.escape_markup).
"""
from .common import empty_figure, escape_markup, make_figure, show_token, token_label, token_labels
from .generation import generation_probabilities
from .graphs import arc_diagram, community_style, head_similarity_graph
from .heatmap import SCALES, attention_heatmap, pooled_heatmap, zoom_window
from .overview import head_grid, layer_head_map
from .profiles import (basin_curves, basin_item_names, grouped_bars, layer_curves, query_profile, received_bars,
                       threshold_curve)
from .variants import (difference_map, e2e_bars, fidelity_text, maps_side_by_side, pick_variant,
                       variant_difference_map)

__all__ = ["empty_figure", "escape_markup", "make_figure", "show_token", "token_label", "token_labels",
           "generation_probabilities", "arc_diagram", "community_style", "head_similarity_graph",
           "SCALES", "attention_heatmap", "pooled_heatmap", "zoom_window", "head_grid",
           "layer_head_map", "basin_curves", "basin_item_names", "grouped_bars", "layer_curves", "query_profile",
           "received_bars", "threshold_curve", "difference_map", "e2e_bars", "fidelity_text", "maps_side_by_side",
           "pick_variant", "variant_difference_map"]
