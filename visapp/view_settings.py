"""The view options: one typed place for what each view's controls hold, their defaults and bounds.

The app's controls start from these defaults, the URL state falls back to them, and the export CLI's
view flags are generated from the same fields (compute.options: opt/add_flags/check), so no default is
written twice.
"""
from __future__ import annotations

from dataclasses import dataclass, fields

from compute.options import check, opt

from .templates import SEQUENTIAL_SCALES

METRICS = {
    "sink_metric": "sink mass (mean attention on token 0)",
    "first_token_mass": "first-token mass (queries ≥ 1)",
    "entropy_norm_mean": "normalised entropy",
    "entropy_mean": "entropy (nats)",
    "prev_token_mean": "previous-token mass",
    "local_mean": "local mass",
    "exp_dist_mean": "mean attention distance",
    "top1_prob_mean": "top-1 weight",
    "role:induction": "induction score (the text's repeats, else the probe)",
    "role:retrieval": "retrieval score (probe)",
    "role:syntactic": "syntactic score (parse)",
    "role:delimiter": "delimiter score",
    "role:broad": "broad score",
    "importance": "importance (gradients, or a trace's head contributions)",
}
SCALES = ("log", "linear", "split")
POOLS = ("max", "mean")
SIZES = ("importance", "none")


@dataclass(frozen=True)
class ViewSettings:
    """The control values a view renders with (the app reads them from its components, the export CLI
    from its flags). Defaults are the app's defaults."""

    head: tuple[int, int] = (0, 0)
    metric: str = opt("sink_metric", "overview colour metric", choices=tuple(METRICS))
    size_by: str = opt("importance", "overview glyph size", choices=SIZES)
    colours: str = opt("Viridis", "overview colour scale", choices=SEQUENTIAL_SCALES)
    scale: str = opt("log", "head map colour scale", choices=SCALES)
    pool: str = opt("max", "pooled blocks of long texts", choices=POOLS)
    eps: float = opt(0.3, "sink threshold (sinks view)", lo=0.01, hi=0.99)
    head_threshold: float = opt(0.1, "edge threshold of the head view's token graph", lo=0.01, hi=0.99,
                                flag="--threshold")
    graph_threshold: float = opt(0.1, "edge threshold of the graph view's token graph", lo=0.01, hi=0.99)
    important: tuple[int, ...] = ()      # basin items marked important
    diff_variant: str = ""               # variants view: the difference map's variant ('' = the first)

    def validate(self) -> "ViewSettings":
        check(self)
        return self

    def public(self) -> dict:
        d = {f.name: getattr(self, f.name) for f in fields(self)}
        d["head"] = f"{self.head[0]}.{self.head[1]}"
        d["important"] = list(self.important)
        return d


DEFAULT = ViewSettings()
