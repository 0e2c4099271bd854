"""Plotly templates (screen and paper) and the colour scales every figure uses.

Figure builders take `template=` and never hard-code fonts or colours, so the export path (issue 7)
renders the same figures with the paper template. Scales are colour-blind safe: viridis/cividis for
magnitudes, RdBu/PuOr (centred on 0) for signed differences, Okabe-Ito (then symbols) for categories.
"""
from __future__ import annotations

import copy

import plotly.graph_objects as go
import plotly.io as pio

SCREEN = "attnvis_screen"
PAPER = "attnvis_paper"

SEQUENTIAL = "Viridis"
SEQUENTIAL_ALT = "Cividis"
SEQUENTIAL_SCALES = ("Viridis", "Cividis", "Magma")
DIVERGING = "RdBu_r"          # red = variant above softmax, blue = below; always with zmid=0
DIVERGING_ALT = "PuOr_r"

# Okabe & Ito (2008), "Color Universal Design": distinguishable under the common colour-vision deficiencies.
OKABE_ITO = ["#E69F00", "#56B4E9", "#009E73", "#F0E442", "#0072B2", "#D55E00", "#CC79A7", "#000000"]
# More categories than colours: the next symbol with the same colours (no palette of more than ~8 hues
# stays distinguishable), so 8 x 6 = 48 categories get distinct (colour, symbol) pairs.
CATEGORY_SYMBOLS = ("circle", "square", "diamond", "triangle-up", "cross", "star")


def category_style(c: int) -> tuple[str, str]:
    """(colour, marker symbol) of category c: distinct for c < 48, cycling after."""
    c = int(c) % (len(OKABE_ITO) * len(CATEGORY_SYMBOLS))
    return OKABE_ITO[c % len(OKABE_ITO)], CATEGORY_SYMBOLS[c // len(OKABE_ITO)]

SCREEN_FONT = "DejaVu Sans, Liberation Sans, Arial, sans-serif"
PAPER_FONTS = {"serif": "Liberation Serif, DejaVu Serif, Times New Roman, serif",
               "sans": "Liberation Sans, DejaVu Sans, Arial, sans-serif"}
PX_PER_PT = 4 / 3              # kaleido: a PDF point is 0.75 px
PAPER_WIDTH_IN = {"single": 3.3, "double": 6.9}


def _screen() -> go.layout.Template:
    """A lean template (layout only): small, so figures stay cheap to build and serialise."""
    axis = dict(gridcolor="#EBF0F8", linecolor="#C8CCD6", zerolinecolor="#EBF0F8", automargin=True,
                ticks="", title=dict(standoff=8))
    return go.layout.Template(layout=dict(
        font=dict(family=SCREEN_FONT, size=13, color="#222"),
        colorway=OKABE_ITO, paper_bgcolor="white", plot_bgcolor="white",
        margin=dict(l=60, r=20, t=40, b=50),
        hoverlabel=dict(font=dict(family=SCREEN_FONT, size=12), align="left"),
        title=dict(font=dict(size=15), x=0.01, xanchor="left"),
        colorscale=dict(sequential=SEQUENTIAL, diverging="RdBu"),
        coloraxis=dict(colorbar=dict(thickness=14, outlinewidth=0)),
        legend=dict(font=dict(size=12)), xaxis=axis, yaxis=axis,
    ))


def paper_template(font: str = "sans", size_pt: float = 8.0) -> go.layout.Template:
    """Publication template: 8-10 pt text, thin axes, no grid clutter; apply at export time."""
    if font not in PAPER_FONTS:
        raise ValueError(f"font must be one of {', '.join(PAPER_FONTS)}")
    px = size_pt * PX_PER_PT
    t = copy.deepcopy(pio.templates["simple_white"])
    axis = dict(linewidth=0.6, tickwidth=0.6, ticklen=3, showgrid=False, title=dict(font=dict(size=px)),
                tickfont=dict(size=px * 0.9))
    t.layout.update(
        font=dict(family=PAPER_FONTS[font], size=px, color="#000"),
        colorway=OKABE_ITO,
        margin=dict(l=40, r=10, t=20, b=35),
        title=dict(font=dict(size=px * 1.1), x=0.0, xanchor="left"),
        xaxis=axis, yaxis=axis,
        coloraxis=dict(colorscale=SEQUENTIAL, colorbar=dict(thickness=8, outlinewidth=0, tickfont=dict(size=px * 0.9))),
        legend=dict(font=dict(size=px * 0.9)),
    )
    t.data.heatmap = [go.Heatmap(colorscale=SEQUENTIAL, colorbar=dict(thickness=8, outlinewidth=0))]
    return t


def paper_width_px(width: str | float) -> int:
    """'single' (3.3 in) or 'double' (6.9 in), or inches, as kaleido pixels (72 pt per inch)."""
    inches = PAPER_WIDTH_IN[width] if isinstance(width, str) else float(width)
    return int(round(inches * 72 * PX_PER_PT))


def register() -> None:
    pio.templates[SCREEN] = _screen()
    pio.templates[PAPER] = paper_template()


register()
