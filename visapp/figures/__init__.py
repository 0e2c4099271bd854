"""Pure figure builders: numpy in, plotly Figure out, no Dash and no app state.

Every builder takes `template=` (visapp.templates.SCREEN in the app, PAPER for export), so the export
path renders exactly the figures the app shows.
"""
from .common import empty_figure, make_figure, show_token, token_label, token_labels
from .graphs import arc_diagram, head_similarity_graph
from .heatmap import SCALES, attention_heatmap, pooled_heatmap, zoom_window
from .overview import head_grid, layer_head_map
from .profiles import basin_curves, grouped_bars, layer_curves, query_profile, received_bars, threshold_curve
from .variants import difference_map, maps_side_by_side

__all__ = ["empty_figure", "make_figure", "show_token", "token_label", "token_labels", "arc_diagram", "head_similarity_graph",
           "SCALES", "attention_heatmap", "pooled_heatmap", "zoom_window", "head_grid",
           "layer_head_map", "basin_curves", "grouped_bars", "layer_curves", "query_profile", "received_bars",
           "threshold_curve", "difference_map", "maps_side_by_side"]
