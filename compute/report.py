"""report.json: one record per (layer, head) plus whole-text numbers and analysis sections."""
from __future__ import annotations

from .result import AttentionResult
from .summary import head_summary, sink_rate


def head_records(res: AttentionResult) -> list[dict]:
    summ = head_summary(res)
    recs = []
    for layer in range(res.n_layers):
        for head in range(res.n_heads):
            rec = {"layer": layer, "head": head}
            rec.update({k: float(v[layer, head]) for k, v in summ.items()})
            recs.append(rec)
    return recs


def build_report(res: AttentionResult) -> dict:
    rep = {
        "model": res.model,
        "model_kind": res.model_kind,
        "causal": res.causal,
        "n_layers": res.n_layers,
        "n_heads": res.n_heads,
        "n_kv_heads": res.n_kv_heads,
        "n_tokens": res.n_tokens,
        "tokens": res.tokens,
        "backend": res.backend,
        "pool": res.pool,
        "loss": res.loss,
        "sink_rate": sink_rate(res),
        "heads": head_records(res),
        "meta": res.meta(),
    }
    # Analysis sections (sinks, entropy, graphs, basin, ...) merge into the top level; a head
    # record section ("head_fields": {"L.H": {...}}) adds fields to each head record.
    extra = dict(res.extras)
    head_fields = extra.pop("head_fields", {})
    for rec in rep["heads"]:
        rec.update(head_fields.get(f"{rec['layer']}.{rec['head']}", {}))
    rep.update(extra)
    rep["sections"] = sorted(extra)          # lets AttentionResult.load rebuild res.extras
    return rep
