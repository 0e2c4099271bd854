"""Typed options: one place for every default, bound and help text of an analysis.

A field declared with `opt(...)` carries its CLI flag, help, bounds and choices in its metadata, so
  * `add_flags(parser, AnalysisOptions)` writes the CLI flags (analyze, the export CLI, corpus mode),
  * `from_args(AnalysisOptions, args)` reads them back,
  * `check(obj)` validates every bound in one place (CLI, app, Celery tasks and the pipeline call it),
and the app's input panel and URL state read their defaults from the same dataclasses.
"""
from __future__ import annotations

import argparse
import math
from dataclasses import MISSING, asdict, dataclass, field, fields, replace
from typing import Any, Optional

from kernels.names import BACKENDS

from .errors import InputError

MAX_TOKENS_DEFAULT = 8192


def opt(default: Any, help: str, *, lo: Optional[float] = None, hi: Optional[float] = None,
        choices: Optional[tuple] = None, flag: Optional[str] = None, cli: bool = True, label: Optional[str] = None):
    """A dataclass field whose metadata gives its flag, help, bounds [lo, hi], choices and the name a
    message uses (label: the app's word for it; default the field name in words)."""
    meta = {"help": help, "lo": lo, "hi": hi, "choices": choices, "flag": flag, "cli": cli, "label": label}
    if isinstance(default, (dict, list, set)):
        return field(default_factory=lambda: type(default)(default), metadata=meta)
    return field(default=default, metadata=meta)


def flag_name(f) -> str:
    return f.metadata.get("flag") or "--" + f.name.replace("_", "-")


def check(obj) -> None:
    """Raise InputError for any field outside its declared bounds or choices; the message names the
    option in words and, in brackets, its CLI flag (one message for the app and the CLI)."""
    for f in fields(obj):
        m, v = f.metadata, getattr(obj, f.name)
        if not m:
            continue
        name, flag = m.get("label") or f.name.replace("_", " "), flag_name(f)
        if m.get("choices") is not None and v not in m["choices"]:
            raise InputError(f"{name} must be one of {', '.join(map(str, m['choices']))}, got {v!r} ({flag})")
        if m.get("lo") is None and m.get("hi") is None:
            continue
        if isinstance(v, bool) or not isinstance(v, (int, float)):
            raise InputError(f"{name} must be a number, got {v!r} ({flag})")
        if isinstance(f.default, int) and not isinstance(f.default, bool) and not float(v).is_integer():
            raise InputError(f"{name} must be a whole number, got {v!r} ({flag})")
        if not math.isfinite(v) or (m["lo"] is not None and v < m["lo"]) or (m["hi"] is not None and v > m["hi"]):
            lo = "-inf" if m["lo"] is None else f"{m['lo']:,}"
            hi = "inf" if m["hi"] is None else f"{m['hi']:,}"
            raise InputError(f"{name} must be between {lo} and {hi}, got {v!r} ({flag})")


def add_flags(parser, cls, skip: tuple = ()) -> None:
    """One argparse flag per opt() field of cls (bools as --x/--no-x)."""
    for f in fields(cls):
        m = f.metadata
        if not m or not m.get("cli") or f.name in skip:
            continue
        default = f.default if f.default is not MISSING else f.default_factory()
        kw: dict = {"dest": f.name, "default": default}
        if isinstance(default, bool):
            parser.add_argument(flag_name(f), action=argparse.BooleanOptionalAction,
                                help=f"{m['help']} (default {'on' if default else 'off'})", **kw)
            continue
        if m.get("choices") is not None:
            kw["choices"] = list(m["choices"])
        kw["type"] = type(default) if isinstance(default, (int, float)) else str
        parser.add_argument(flag_name(f), help=f"{m['help']} (default {default})", **kw)


def from_args(cls, args, **override):
    """cls built from the parsed flags that add_flags declared (others keep their defaults)."""
    kw = {f.name: getattr(args, f.name) for f in fields(cls)
          if f.metadata.get("cli") and hasattr(args, f.name)}
    kw.update(override)
    return cls(**kw)


def defaults(cls) -> dict:
    return asdict(cls())


@dataclass(frozen=True)
class AnalysisOptions:
    """The engine's options: what the one instrumented forward computes and keeps."""

    backend: str = opt("auto", "statistics backend: triton (GPU, or CPU interpreter with TRITON_INTERPRET=1), "
                       "torch (exact chunked CPU/GPU path), auto (triton on GPU, else torch)", choices=BACKENDS)
    sink_tokens: int = opt(4, "S in 'mass on the first S tokens'", lo=1, hi=64, label="sink count")
    local_window: int = opt(8, "keys within this distance count as local", lo=1, hi=4096)
    max_tokens: int = opt(MAX_TOKENS_DEFAULT, "refuse longer texts", lo=1, hi=1 << 20)
    full_map_max: int = opt(1024, "store every head's full map up to this many tokens", lo=0, hi=8192)
    pool_cells: int = opt(128, "pooled maps have about this many cells per side", lo=2, hi=1024)
    mem_budget_mb: int = opt(256, "transient memory per query chunk in MiB", lo=1, hi=65536)
    compute_loss: bool = opt(True, "next-token loss", flag="--loss")

    def validate(self) -> None:
        check(self)

    def with_(self, **kw) -> "AnalysisOptions":
        return replace(self, **kw)

    def stats_config(self, n_tokens: int):
        from kernels import StatsConfig            # torch: only where a forward runs
        return StatsConfig(sink_tokens=self.sink_tokens, local_window=self.local_window,
                           pool_cells=self.pool_cells, full_maps=n_tokens <= self.full_map_max,
                           mem_budget_mb=self.mem_budget_mb)
