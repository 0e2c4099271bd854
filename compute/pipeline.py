"""One analysis, one pipeline: the only entry that the CLI, corpus mode, the Celery tasks, the app's
service and the export CLI call.

    lm = load(name)                                     # the server's loading rules (compute.limits)
    res = analyze(lm, text, options, sections, progress=..., cancel=...)

analyze applies every limit (text size, ATTNVIS_MAX_TOKENS, the memory estimate, the time limit: a
cooperative deadline after each layer and a hard alarm in the main thread), tokenises once, plans the
reductions the sections need (analysis/plan.py), runs the model over the text exactly once with the
instrumented attention filling statistics and reductions in the same pass (engine.forward_stats), and
builds the sections (analysis.run_analysis). Only the probes' synthetic inputs, the basin calibration
prompts and importance's differentiable passes (opt-in) run forwards of their own.
"""
from __future__ import annotations

from typing import Callable, Optional

from kernels import resolve_backend
from kernels.backend import BackendUnavailable

from .errors import UserError
from .limits import Deadline, check_memory, check_text_size, hard_time_limit, limited_options, load_model_limited
from .options import AnalysisOptions

Progress = Callable[[float, str], None]

load = load_model_limited

# Share of the progress bar the forward takes when sections follow (they are mostly cheap; probes and
# importance report their own steps inside the rest).
FORWARD_SHARE = 0.85


def _scaled(progress: Optional[Progress], lo: float, hi: float) -> Optional[Progress]:
    if progress is None:
        return None
    return lambda f, m: progress(lo + (hi - lo) * max(0.0, min(1.0, f)), m)


def analyze(lm, text: str, options: Optional[AnalysisOptions] = None, sections=None, *,
            progress: Optional[Progress] = None, cancel: Optional[Callable[[], bool]] = None,
            time_limit_s: Optional[float] = None):
    """The full analysis of one text -> AttentionResult (sections in res.extras when asked for).
    sections: compute.analysis.AnalysisSettings or None (statistics only). Raises UserError."""
    from .analysis.plan import make_plan
    from .analysis.sections import attach, run_analysis
    from .analysis.tokens import spans_from_offsets
    from .engine import encode, forward_stats

    options = limited_options(options or AnalysisOptions())
    options.validate()
    if sections is not None:
        sections.validate()
    try:
        backend = resolve_backend(options.backend, lm.device)
    except BackendUnavailable as exc:
        raise UserError(str(exc)) from None
    check_text_size(text)
    deadline = Deadline(time_limit_s, cancel)
    hard = deadline.seconds * 1.5 + 5 if deadline.seconds else None
    with hard_time_limit(hard):
        ids, offsets = encode(lm, text, options.max_tokens)
        check_memory(lm, len(ids), options)
        plan = None
        if sections is not None:
            if progress is not None:
                progress(0.0, "planning (parse, items, repeats)")
            spans = spans_from_offsets(text, offsets) if offsets is not None else None
            reason = None if offsets is not None else f"{lm.info.name}'s tokenizer gives no character offsets"
            plan = make_plan(text, ids, spans, lm.info.causal, lm.info.n_layers, lm.info.n_heads, sections, reason)
        share = FORWARD_SHARE if sections is not None else 1.0
        res = forward_stats(lm, ids, text, options, backend, progress=_scaled(progress, 0.0, share),
                            cancel=deadline, row_observer=plan.observer() if plan else None,
                            observer_rows=plan.rows() if plan else None)
        if sections is not None:
            attach(res, run_analysis(lm, res, sections, plan, progress=_scaled(progress, share, 1.0),
                                     cancel=deadline))
    if progress is not None:
        progress(1.0, "done")
    return res
