"""Settings of the attention analysis (thresholds, probes, items). Plain values: CLI and app share them.

Every threshold is documented next to the metric that uses it (sinks.py, entropy.py, roles.py,
probes.py, basins.py) and can be changed here, from the CLI (`--role-threshold NAME=VALUE`, ...)
or from the app.
"""
from __future__ import annotations

from dataclasses import dataclass, field, replace
from typing import Optional

from ..errors import InputError
from ..options import check, opt

# Role -> threshold on its score (roles.py documents each score). A head's label is the role whose
# score / threshold is largest among the roles with score >= threshold; 'mixed' when none passes.
DEFAULT_ROLE_THRESHOLDS: dict[str, float] = {
    "sink": 0.5,             # mean attention on token 0 (queries >= 1)
    "previous-token": 0.4,   # mean attention on the previous token (queries >= 2)
    "local": 0.6,            # mean attention within the local window, token 0 excluded
    "broad": 0.8,            # mean normalised entropy of rows seeing >= local_window keys
    "induction": 0.3,        # induction probe: attention to the token after the earlier occurrence
    "retrieval": 0.1,        # needle probe copy score (Wu et al.: > 0.1 is a retrieval head)
    "delimiter": 0.3,        # mean attention on punctuation / separator / special tokens (j >= 1)
    "syntactic": 0.1,        # attention on dependency-linked tokens beyond the head's offset profile
}
ROLES = tuple(DEFAULT_ROLE_THRESHOLDS)
PROBES = ("induction", "retrieval")


@dataclass(frozen=True)
class AnalysisSettings:
    """The analysis sections and their thresholds; opt() fields are also the CLI flags (compute.options)."""
    # sinks.py
    sink_eps: float = opt(0.3, "sink rate threshold on token-0 attention", lo=0, hi=1)
    hidden_sink_tau: float = opt(0.1, "hidden sink: mean received attention above this (as ACT)", lo=0, hi=1)
    hidden_min_query_frac: float = 0.25   # ... and seen by >= this fraction of the query rows
    hidden_uniform_ratio: float = 3.0     # ... and above this multiple of what uniform attention gives
    # entropy.py
    collapse_threshold: float = opt(0.1, "entropy collapse: mean normalised entropy below this", lo=0, hi=1)
    # roles.py
    roles: bool = opt(True, "head roles")
    syntax: bool = opt(True, "spaCy dependency alignment for the syntactic role (skipped above --syntax-max-tokens)")
    syntax_max_tokens: int = opt(8192, "longest text for the syntactic alignment", lo=1, hi=1 << 20)
    role_thresholds: dict = field(default_factory=lambda: dict(DEFAULT_ROLE_THRESHOLDS))
    text_induction_min_queries: int = 8   # repeated-bigram queries the text needs for its own induction score
    # probes.py
    probes: tuple = ()                    # subset of PROBES
    probe_seed: int = 0
    induction_length: int = 40            # T: random tokens, repeated once (2T tokens)
    induction_batch: int = 4              # random sequences averaged
    retrieval_trials: int = 3             # needle depths (0.2 .. 0.8 of the haystack)
    retrieval_require_correct: bool = True  # count a copy only where the model predicts the needle token
    # importance.py
    importance: bool = opt(False, "head importance |dL/dgate| and, up to --ablation-max-tokens, the loss change "
                           "when each head is ablated (causal LMs; its own differentiable forwards)")
    ablation: bool = opt(True, "with --importance: ablate each head")
    ablation_max_tokens: int = opt(256, "ablate all layers only up to this many tokens", lo=1, hi=1 << 20)
    ablation_layers: Optional[tuple] = None
    importance_max_tokens: int = 1024     # gradient pass limit (the backward pass keeps every layer's
                                          # n x n attention of the differentiable path)
    # basins.py
    items: object = None                  # None | 'auto' | dict spec (see basins.items_from_spec)
    important_items: tuple = ()           # 0-based item indices the user marks as important
    calibration: str = opt("shipped", "positional preference for the suggested order: shipped prompts or this "
                           "prompt", choices=("shipped", "self"))
    per_token: bool = opt(False, "basin: also the mass on every token of each item")
    # graphs.py
    graphs: bool = opt(True, "head graph")
    graph_source: str = opt("pooled", "head distance from pooled maps or received-attention profiles",
                            choices=("pooled", "received"))
    graph_cells: int = 32                 # pooled maps are coarsened to at most this many cells per side
    graph_knn: int = opt(4, "neighbours per head in the head graph", lo=1, hi=64)
    graph_seed: int = 0
    # live reductions
    mem_budget_mb: int = 256

    def with_(self, **kw) -> "AnalysisSettings":
        return replace(self, **kw)

    def validate(self) -> None:
        check(self)
        for name in ("sink_eps", "hidden_sink_tau", "hidden_min_query_frac", "collapse_threshold"):
            v = getattr(self, name)
            if not 0.0 <= v <= 1.0:
                raise InputError(f"{name.replace('_', ' ')} must be in [0, 1], got {v}")
        unknown = set(self.role_thresholds) - set(ROLES)
        if unknown:
            raise InputError(f"unknown role(s) {', '.join(sorted(unknown))}; roles are {', '.join(ROLES)}")
        for k, v in self.role_thresholds.items():
            if not (isinstance(v, (int, float)) and v > 0):
                raise InputError(f"the threshold of role {k!r} must be a positive number, got {v!r}")
        bad = set(self.probes) - set(PROBES)
        if bad:
            raise InputError(f"unknown probe(s) {', '.join(sorted(bad))}; probes are {', '.join(PROBES)}")
        if self.hidden_uniform_ratio < 0:
            raise InputError("hidden uniform ratio must be >= 0")
        if self.induction_length < 4 or self.induction_batch < 1 or self.retrieval_trials < 1:
            raise InputError("induction length must be >= 4, and probe batch / trials >= 1")
        if self.graph_source not in ("pooled", "received"):
            raise InputError("graph source must be 'pooled' or 'received'")
        if self.graph_cells < 2 or self.graph_knn < 1:
            raise InputError("graph cells must be >= 2 and graph knn >= 1")
        if self.calibration not in ("shipped", "self"):
            raise InputError("calibration must be 'shipped' or 'self'")
        if any((not isinstance(i, int)) or i < 0 for i in self.important_items):
            raise InputError("important items are 0-based item indices")
        if (self.ablation_max_tokens < 1 or self.importance_max_tokens < 2 or self.mem_budget_mb < 1
                or self.syntax_max_tokens < 1):
            raise InputError("token limits and memory budget must be positive")

    def thresholds(self) -> dict[str, float]:
        t = dict(DEFAULT_ROLE_THRESHOLDS)
        t.update(self.role_thresholds)
        return t
