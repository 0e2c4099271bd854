"""Paper-ready export (a package: options, registry of figures, render, tables, provenance, bundle,
cli; `python -m visapp.export` runs cli): the app's figures restyled for a two-column paper and rendered server-side
with kaleido (system Chromium), their numbers as CSV/JSON, and a caption with provenance.

    python -m visapp.export --model smollm2-135m --text-file t.txt --figure head:3.4 --format pdf --out f.pdf

Pipeline (app and CLI alike): registry builds the view's figure with the paper template (the
same view function the app calls) -> paper_figure() fixes size, fonts, line widths and labels ->
render() turns it into SVG/PDF/PNG bytes.

Rendering notes (dash-ecosystem.md section 4):
  * kaleido drives a headless Chromium; the browser is found via BROWSER_PATH or `chromium` on PATH
    (never downloaded). One browser per process, started lazily on the first export (so after a
    gunicorn fork), and every render holds EXPORT_LOCK: kaleido's shared server is not thread-safe.
  * kaleido's MathJax comes from a CDN, so it is switched off; TeX in labels ($a_{ij}$) is turned into
    plotly's own <sub>/<sup>/<i> markup (tex_to_html), which renders offline and stays text in SVG/PDF.
  * Size: kaleido works in CSS pixels (96 per inch; a PDF point is 0.75 px), so 3.3 in = 316.8 px; PNG
    scale = dpi / 96, so the PNG is exactly width x dpi pixels wide (and carries a pHYs DPI chunk).
"""
from __future__ import annotations

from .options import (CSS_PX_PER_IN, DATA_FORMATS, DPI_RANGE, FONTS, FORMATS, SIZE_PT_RANGE, WIDTHS,  # noqa: F401
                      ExportError, ExportOptions)
from ..templates import PAPER_WIDTH_IN  # noqa: F401
from .render import (_RENDERER, EXPORT_LOCK, browser_path, paper_figure, paper_label, paper_template_name, render,  # noqa: F401
                     shutdown, tex_to_html)
from .tables import Table, data_bytes, figure_tables  # noqa: F401
from .provenance import caption_text, provenance, reproduce_command, software_versions, text_sha256  # noqa: F401
from .bundle import Exported, export_figure, figure_of, file_stem, tables_of, write_bundle  # noqa: F401
