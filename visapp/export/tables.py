"""The numbers behind a figure: generic extraction from its traces, matrices and edge lists, and
CSV / JSON / zip bytes."""
from __future__ import annotations

import csv
import io
import json
import re
import zipfile
from dataclasses import dataclass
from typing import Optional, Sequence

import numpy as np
import plotly.graph_objects as go

from compute.errors import InputError

from ..figures.common import plain_text

from .options import DATA_FORMATS


# ---------------------------------------------------------------- tables

@dataclass
class Table:
    columns: list[str]
    rows: list[list]

    def to_csv(self) -> str:
        buf = io.StringIO()
        w = csv.writer(buf, lineterminator="\n")
        w.writerow(self.columns)
        for r in self.rows:
            w.writerow(["" if v is None else (f"{v:.7g}" if isinstance(v, float) else v) for v in r])
        return buf.getvalue()

    def to_json(self) -> dict:
        return {"columns": list(self.columns), "rows": [[_json_scalar(v) for v in r] for r in self.rows]}


def _json_scalar(v):
    if isinstance(v, float) and not np.isfinite(v):
        return None
    return v


def py(v):
    """numpy scalar / None / NaN -> plain Python (NaN -> None); text read back from a figure -> plain
    text (figures escape user text for plotly, a table holds it as typed)."""
    if v is None:
        return None
    if isinstance(v, str):
        return plain_text(v)
    if isinstance(v, (np.generic,)):
        v = v.item()
    if isinstance(v, float) and not np.isfinite(v):
        return None
    return v


def _arr(v) -> Optional[np.ndarray]:
    if v is None:
        return None
    a = np.asarray(v, dtype=object) if not isinstance(v, np.ndarray) else v
    return a


def matrix_table(z, row_labels: Sequence, col_labels: Sequence, corner: str = "query \\ key") -> Table:
    z = np.asarray(z, dtype=float)
    return Table([corner] + [str(c) for c in col_labels],
                 [[str(row_labels[i])] + [py(float(x)) for x in z[i]] for i in range(z.shape[0])])


def _axis_title(fig: go.Figure, axis: str, default: str) -> str:
    try:
        t = fig.layout[axis].title.text
    except (KeyError, AttributeError):
        t = None
    return py(t) or default


def _heatmap_values(tr) -> np.ndarray:
    """The numbers a heatmap shows: its customdata when that holds the raw values (log-coloured maps
    colour log10 a but carry a itself), else z."""
    z = np.asarray(tr.z, dtype=float)
    cd = tr.customdata
    if cd is not None:
        c = np.asarray(cd)
        if c.shape == z.shape and c.dtype.kind in "fiu":
            return c.astype(float)
    return z


def heatmap_tables(fig: go.Figure, names: Optional[Sequence[str]] = None, corner: str = "query \\ key",
                   concat: bool = False) -> dict[str, Table]:
    """One matrix table per heatmap trace (named by `names`, the trace name or its position), or one
    table with the traces' columns side by side (concat: token 0 apart from the other keys)."""
    hms = [tr for tr in fig.data if isinstance(tr, go.Heatmap)]
    if not hms:
        return {}
    parts = []
    for tr in hms:
        z = _heatmap_values(tr)
        ys = list(tr.y) if tr.y is not None else list(range(z.shape[0]))
        xs = list(tr.x) if tr.x is not None else list(range(z.shape[1]))
        parts.append((z, [py(v) for v in ys], [py(v) for v in xs]))
    if concat and len(parts) > 1 and all(p[1] == parts[0][1] for p in parts):
        z = np.concatenate([p[0] for p in parts], 1)
        return {"matrix": matrix_table(z, parts[0][1], sum((p[2] for p in parts), []), corner)}
    out = {}
    for i, (z, ys, xs) in enumerate(parts):
        name = (names[i] if names and i < len(names) else None) or py(hms[i].name) or (
            "matrix" if len(parts) == 1 else f"panel{i + 1}")
        out[_safe(name)] = matrix_table(z, ys, xs, corner)
    return out


def _safe(name: str) -> str:
    return re.sub(r"[^A-Za-z0-9._+-]+", "_", str(name)).strip("_") or "table"


def _plain_list(v) -> Optional[list]:
    if v is None:
        return None
    return [py(x) for x in (v.tolist() if isinstance(v, np.ndarray) else list(v))]


def trace_tables(fig: go.Figure) -> dict[str, Table]:
    """Scatter/bar traces as one table: wide (x + one column per trace) when they share x, else long
    (series, x, y). Legend-only traces, None-separated line segments and selection marks are left out."""
    series = []
    for i, tr in enumerate(fig.data):
        if not isinstance(tr, (go.Scatter, go.Bar)):
            continue
        x, y = _plain_list(tr.x), _plain_list(tr.y)
        if not x or not y or all(v is None for v in x) or None in x:
            continue
        if tr.hoverinfo == "skip":         # selection ring, legend entries, edges
            continue
        labels = None
        cd = tr.customdata
        if cd is not None and np.ndim(cd) == 1 and len(cd) == len(x) and all(isinstance(c, str) for c in cd):
            labels = [py(c) for c in cd]
        series.append((py(tr.name) or f"series{i + 1}", x, y, labels))
    if not series:
        return {}
    xt = _axis_title(fig, "xaxis", "x")
    yt = _axis_title(fig, "yaxis", "y")
    same_x = all(s[1] == series[0][1] for s in series)
    if same_x:
        labels = next((s[3] for s in series if s[3] is not None), None)
        cols = [xt] + (["label"] if labels else []) + [s[0] for s in series]
        rows = []
        for j, xv in enumerate(series[0][1]):
            rows.append([xv] + ([labels[j]] if labels else []) + [s[2][j] for s in series])
        return {"data": Table(cols, rows)}
    rows = []
    for name, x, y, labels in series:
        rows += [[name, xv, (labels[j] if labels else None), y[j]] for j, xv in enumerate(x)]
    return {"data": Table(["series", xt, "label", yt], rows)}


def figure_tables(fig: go.Figure) -> dict[str, Table]:
    """Default: heatmaps as matrices, plus curves/bars."""
    out = heatmap_tables(fig)
    out.update(trace_tables(fig))
    return out


def edge_table(edges, tokens: Sequence[str], src: str = "query", dst: str = "key") -> Table:
    from ..figures import show_token
    return Table([src, f"{src}_token", dst, f"{dst}_token", "weight"],
                 [[int(a), show_token(tokens[int(a)]), int(b), show_token(tokens[int(b)]), py(w)]
                  for a, b, w in edges])



def data_bytes(tables: dict, fmt: str, prov: Optional[dict] = None) -> tuple[bytes, str]:
    """(content, file extension): JSON with every table (+ provenance); CSV for one table, or a zip of
    CSVs when the figure has several (a graph's nodes and edges)."""
    if fmt not in DATA_FORMATS:
        raise InputError(f"data format must be one of {', '.join(DATA_FORMATS)}")
    if not tables:
        raise InputError("this figure has no data table")
    if fmt == "json":
        doc = {"tables": {k: t.to_json() for k, t in tables.items()}}
        if prov is not None:
            doc["provenance"] = prov
        return json.dumps(doc, ensure_ascii=False, allow_nan=False).encode("utf-8"), "json"
    if len(tables) == 1:
        return next(iter(tables.values())).to_csv().encode("utf-8"), "csv"
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w", zipfile.ZIP_DEFLATED) as z:
        for k, t in tables.items():
            z.writestr(f"{k}.csv", t.to_csv())
    return buf.getvalue(), "zip"
