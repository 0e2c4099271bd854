"""Typed numpy results of one analysis: what compute/ hands to the CLI, the app and the tests.

Arrays are indexed [layer, head, ...] for a single text (batch of one). Definitions of each
statistic are in kernels/stats_types.py; per-head summaries are in compute/summary.py.
"""
from __future__ import annotations

import json
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any, Optional

import numpy as np

ARRAY_FIELDS = ("lse", "entropy", "n_visible", "sink0", "sink_s", "top1_idx", "top1_prob", "prev_mass",
                "local_mass", "exp_dist", "colsum", "n_queries", "pooled_mean", "pooled_max", "dist_hist",
                "maps", "token_nll", "token_top1")


@dataclass
class AttentionResult:
    model: str
    model_kind: str                    # 'causal' | 'encoder'
    causal: bool
    n_layers: int
    n_heads: int
    n_kv_heads: int
    tokens: list[str]                  # decoded token strings (display)
    token_ids: list[int]
    text: str
    options: dict
    backend: str
    pool: int                          # P of the pooled maps
    # [L, H, N] row statistics
    lse: np.ndarray
    entropy: np.ndarray
    n_visible: np.ndarray
    sink0: np.ndarray
    sink_s: np.ndarray
    top1_idx: np.ndarray
    top1_prob: np.ndarray
    prev_mass: np.ndarray
    local_mass: np.ndarray
    exp_dist: np.ndarray
    # [L, H, N] column statistics
    colsum: np.ndarray
    n_queries: np.ndarray
    # [L, H, M, M] pooled maps, [L, H, n_bins] distance histogram
    pooled_mean: np.ndarray
    pooled_max: np.ndarray
    dist_hist: np.ndarray
    maps: Optional[np.ndarray] = None          # [L, H, N, N] (float16) for short inputs
    token_nll: Optional[np.ndarray] = None     # [N-1] next-token NLL (causal LMs)
    token_top1: Optional[np.ndarray] = None    # [N-1] model's top-1 next-token id
    timings: dict = field(default_factory=dict)
    extras: dict = field(default_factory=dict)  # analysis sections (roles, sinks, basins...) as JSON-able

    @property
    def n_tokens(self) -> int:
        return len(self.token_ids)

    @property
    def loss(self) -> Optional[float]:
        return None if self.token_nll is None or len(self.token_nll) == 0 else float(np.mean(self.token_nll))

    def label(self, i: int) -> str:
        """'(i)tok' so repeated tokens stay distinct."""
        return f"({i}){self.tokens[i]}"

    def meta(self) -> dict:
        return {f.name: getattr(self, f.name) for f in fields(self)
                if f.name not in ARRAY_FIELDS and f.name != "extras"}

    def save(self, out_dir: str | Path, report: dict) -> None:
        out = Path(out_dir)
        out.mkdir(parents=True, exist_ok=True)
        arrays = {k: getattr(self, k) for k in ARRAY_FIELDS if getattr(self, k) is not None}
        _write_atomic(out / "stats.npz", lambda f: _write_npz(f, arrays))
        text = json.dumps(report, indent=1, default=_json_default)
        _write_atomic(out / "report.json", lambda f: f.write(text.encode("utf-8")))

    @classmethod
    def load(cls, out_dir: str | Path) -> "AttentionResult":
        out = Path(out_dir)
        report = json.loads((out / "report.json").read_text())
        arrays = dict(np.load(out / "stats.npz"))
        meta = {f.name: report["meta"][f.name] for f in fields(cls)
                if f.name in report["meta"]}
        extras = {k: report[k] for k in report.get("sections", []) if k in report}
        return cls(**meta, **{k: arrays.get(k) for k in ARRAY_FIELDS}, extras=extras)


# Deflated in stats.npz: the maps, half zeros under a causal mask (deflate is fast on zero runs). The row
# and column statistics are dense float32 that deflate shrinks little at a cost of ~1 s per 2k tokens,
# so they are stored as they are.
COMPRESSED = ("maps", "pooled_mean", "pooled_max")


def _write_npz(f, arrays: dict) -> None:
    """An .npz (np.load reads it; no pickles) with COMPRESSED arrays deflated at level 1."""
    import zipfile
    with zipfile.ZipFile(f, "w", zipfile.ZIP_DEFLATED, compresslevel=1) as zf:
        for name, a in arrays.items():
            zf.compression = zipfile.ZIP_DEFLATED if name in COMPRESSED else zipfile.ZIP_STORED   # per entry
            with zf.open(f"{name}.npy", "w", force_zip64=True) as out:
                np.lib.format.write_array(out, np.asanyarray(a), allow_pickle=False)


def _write_atomic(path: Path, write) -> None:
    """Write to a temporary file beside path, then rename: a failed write (disk full) leaves no partial
    file, and the temporary file is removed."""
    import os
    import tempfile
    fd, tmp = tempfile.mkstemp(prefix=path.name + ".", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as f:
            write(f)
        os.replace(tmp, path)
    except BaseException:
        try:
            os.unlink(tmp)
        except OSError:
            pass
        raise


def _json_default(o: Any):
    if isinstance(o, np.generic):
        return o.item()
    if isinstance(o, np.ndarray):
        return o.tolist()
    raise TypeError(f"not JSON serialisable: {type(o)}")
