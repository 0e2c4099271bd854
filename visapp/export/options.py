"""Export options: formats, paper widths, fonts, sizes and DPI, validated with one-line messages."""
from __future__ import annotations

from dataclasses import dataclass
from typing import Optional


from compute.errors import InputError, UserError

from ..templates import PAPER_FONTS, PAPER_WIDTH_IN, PX_PER_PT

FORMATS = ("svg", "pdf", "png")
DATA_FORMATS = ("csv", "json")
WIDTHS = tuple(PAPER_WIDTH_IN)               # single (3.3 in), double (6.9 in)
FONTS = tuple(PAPER_FONTS)                   # serif, sans
CSS_PX_PER_IN = 96.0
SIZE_PT_RANGE = (7.0, 10.0)
DPI_RANGE = (72, 1200)
SELECTION_COLOUR = "#d00"                    # the app's selected-head marks (UI state, not data)
RENDER_TIMEOUT_S = 90.0
LOCK_TIMEOUT_S = 120.0


class ExportError(UserError):
    """The figure could not be rendered (no browser, render failure, busy)."""


@dataclass(frozen=True)
class ExportOptions:
    fmt: str = "pdf"
    width: str = "single"
    dpi: int = 300
    font: str = "serif"
    size_pt: float = 8.0
    height_in: Optional[float] = None        # None: the figure's own aspect ratio
    title: bool = False                      # in-figure title (papers put it in the caption)
    highlight: bool = False                  # keep the app's selected-head marks

    def validate(self) -> "ExportOptions":
        if self.fmt not in FORMATS:
            raise InputError(f"format must be one of {', '.join(FORMATS)}")
        if self.width not in WIDTHS:
            raise InputError(f"width must be one of {', '.join(WIDTHS)}")
        if self.font not in FONTS:
            raise InputError(f"font must be one of {', '.join(FONTS)}")
        try:
            dpi = int(self.dpi)
        except (TypeError, ValueError):
            raise InputError("dpi must be a whole number") from None
        if not DPI_RANGE[0] <= dpi <= DPI_RANGE[1]:
            raise InputError(f"dpi must be between {DPI_RANGE[0]} and {DPI_RANGE[1]}")
        if not SIZE_PT_RANGE[0] <= float(self.size_pt) <= SIZE_PT_RANGE[1]:
            raise InputError(f"font size must be between {SIZE_PT_RANGE[0]:g} and {SIZE_PT_RANGE[1]:g} pt")
        if self.height_in is not None and not 0.5 <= float(self.height_in) <= 12:
            raise InputError("height must be between 0.5 and 12 inches")
        return self

    @property
    def width_in(self) -> float:
        return PAPER_WIDTH_IN[self.width]

    @property
    def width_px(self) -> float:
        # rounded so that width x dpi/96 is exactly width_in x dpi (3.3 * 96 is 316.79999...)
        return round(self.width_in * CSS_PX_PER_IN, 6)

    @property
    def font_px(self) -> float:
        return float(self.size_pt) * PX_PER_PT

    def png_size(self, height_px: float) -> tuple[int, int]:
        s = int(self.dpi) / CSS_PX_PER_IN
        return int(round(self.width_px * s)), int(round(height_px * s))
