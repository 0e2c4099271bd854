"""Plan an analysis before its forward: which exact reductions the requested sections need.

make_plan reads the text (spaCy parse, items, repeats) and builds the reductions (reductions.py) that
the engine's single forward fills from its own probability blocks: dependency-linked pairs and their
offsets for syntax, the query region's column sums for basins, induction and duplicate-token pairs
for the roles measured on the text. Nothing here runs the model.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Optional

import numpy as np

from ..errors import InputError
from .reductions import Observer, PairMass, RegionColsum, union_rows
from .settings import AnalysisSettings


@dataclass
class Plan:
    settings: AnalysisSettings
    n_tokens: int
    char_spans: Optional[np.ndarray] = None
    syntax_info: Optional[dict] = None          # {available, reason | n_words, ...}
    related: Optional[list] = None
    syntax_mass: Optional[PairMass] = None
    syntax_offsets: Optional[object] = None     # reductions.DiagonalProfile
    dependency: Optional[dict] = None           # {available, edges | reason}
    layout: Optional[object] = None             # basins.Layout
    important: list = field(default_factory=list)
    basin: Optional[RegionColsum] = None
    basin_reason: Optional[str] = None
    induction: Optional[PairMass] = None
    duplicate: Optional[PairMass] = None
    induction_rows: Optional[np.ndarray] = None
    duplicate_rows: Optional[np.ndarray] = None

    @property
    def reductions(self) -> list:
        return [r for r in (self.syntax_mass, self.syntax_offsets, self.basin, self.induction, self.duplicate)
                if r is not None]

    def observer(self) -> Optional[Observer]:
        return Observer(self.reductions) if self.reductions else None

    def rows(self) -> Optional[tuple[int, int]]:
        return union_rows(self.reductions)


def make_plan(text: str, token_ids: list[int], char_spans: Optional[np.ndarray], causal: bool,
              n_layers: int, n_heads: int, s: AnalysisSettings, offsets_reason: Optional[str] = None) -> Plan:
    """char_spans: token_char_spans of the text (None with offsets_reason when the tokenizer has none)."""
    from . import basins, syntax, text_roles

    n = len(token_ids)
    plan = Plan(settings=s, n_tokens=n, char_spans=char_spans)
    L, H = n_layers, n_heads
    if s.roles and s.syntax:
        if char_spans is None:
            plan.syntax_info = {"available": False, "reason": offsets_reason or "no character offsets"}
        elif n > s.syntax_max_tokens:
            plan.syntax_info = {"available": False, "reason": f"the text is {n} tokens; syntactic alignment "
                                f"runs up to {s.syntax_max_tokens} (syntax_max_tokens)"}
        else:
            related, info, edges = syntax.prepare(text, causal, char_spans)
            plan.syntax_info = {"available": related is not None, **info}
            plan.dependency = ({"available": True, "edges": edges, "model": syntax.SPACY_MODEL} if related is not None
                               else {"available": False, "reason": f"no parse: {info.get('reason')}"})
            if related is not None:
                plan.related = related
                plan.syntax_mass, plan.syntax_offsets = syntax.syntax_reductions(related, L, H)
    elif s.roles:
        plan.syntax_info = {"available": False, "reason": "switched off"}
    if s.items is not None:
        if char_spans is None:
            if s.items != "auto":
                raise InputError(f"items need character offsets: {offsets_reason}")
            plan.basin_reason = offsets_reason
        else:
            try:
                plan.layout, important = basins.resolve_layout(text, char_spans, s.items)
            except InputError as exc:
                if s.items != "auto":          # an explicit spec that does not fit is the user's error
                    raise
                plan.basin_reason = str(exc)
            if plan.layout is not None:
                plan.important = sorted(set(important) | set(s.important_items))
                if any(k >= plan.layout.n_items for k in plan.important):
                    raise InputError(f"important item {max(plan.important)} is not an item "
                                     f"(0..{plan.layout.n_items - 1})")
                plan.basin = RegionColsum(*plan.layout.query, L, H, n)
    if s.roles and causal:
        r, c = text_roles.induction_pairs(token_ids)
        plan.induction, plan.induction_rows = PairMass(r, c, L, H, n), r
        r, c = text_roles.duplicate_pairs(token_ids)
        plan.duplicate, plan.duplicate_rows = PairMass(r, c, L, H, n), r
    return plan
