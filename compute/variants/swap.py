"""Variants side by side on a real model and text: per-head fidelity and end-to-end swap.

compare_variants() is the one entry point for the CLI and the app:
  1. one softmax forward keeps q/k/v of the chosen layers and the final hidden states (baseline loss);
  2. per layer and variant: calibration/fit on the softmax q/k/v (prepare), then fidelity metrics per head
     (fidelity.layer_fidelity);
  3. per variant: one forward with the variant's head outputs swapped in (CaptureSession.output_hook) in
     the chosen layers/heads; calibrated state from step 2, dynamic selections from the swapped run's own
     q/k. Causal LMs: next-token loss, perplexity, top-1 agreement and next-token KL against the softmax
     model. Encoders (MiniLM has no masked-LM head in its package): loss is reported unavailable, with
     the reason, and the cosine similarity of the final hidden states and of the mean-pooled sentence
     embedding to the softmax model's is given instead.
"""
from __future__ import annotations

import math
import time
from typing import Callable, Optional, Sequence

import numpy as np
import torch

from kernels import BackendUnavailable, resolve_backend

from ..capture import check_cancel
from ..engine import capture, next_token_loss, token_strings, tokenize
from ..errors import InputError, UserError
from .fidelity import METRICS, FidelityOptions, layer_fidelity, reference_stats
from .registry import parse_specs

Progress = Callable[[float, str], None]


def _check_layers(layers, n_layers: int) -> list[int]:
    if layers is None:
        return list(range(n_layers))
    out = []
    for layer in layers:
        try:
            li = int(layer)
        except (TypeError, ValueError):
            raise InputError(f"layer {layer!r} is not an integer") from None
        if not 0 <= li < n_layers:
            raise InputError(f"layer {li} out of range: the model has layers 0..{n_layers - 1}")
        if li not in out:
            out.append(li)
    if not out:
        raise InputError("no layers chosen")
    return sorted(out)


def _check_heads(heads, n_heads: int) -> Optional[list[int]]:
    if heads is None:
        return None
    out = []
    for hd in heads:
        try:
            hi = int(hd)
        except (TypeError, ValueError):
            raise InputError(f"head {hd!r} is not an integer") from None
        if not 0 <= hi < n_heads:
            raise InputError(f"head {hi} out of range: the model has heads 0..{n_heads - 1}")
        if hi not in out:
            out.append(hi)
    if not out:
        raise InputError("no heads chosen")
    return sorted(out)


def make_swap_hook(variant, states: dict, heads: Optional[list[int]], backend: str = "torch",
                   cancel=None):
    """CaptureSession output hook replacing the outputs of `heads` (all when None) in the layers of
    `states` ({layer: prepared state}) by the variant's."""

    def hook(call, out):
        if call.layer not in states:
            return None
        check_cancel(cancel)
        new = variant.bind(call, states[call.layer]).output(backend=backend).out.to(out.dtype)
        if heads is None:
            return new
        out = out.clone()
        out[:, heads] = new[:, heads]
        return out
    return hook


def _logit_kl(lm, h_ref: torch.Tensor, h_var: torch.Tensor, chunk: int = 256) -> float:
    """Mean over positions of KL(softmax model's next-token distribution || variant model's)."""
    head = lm.model.get_output_embeddings()
    tot, n = 0.0, 0
    with torch.no_grad():
        for a in range(0, h_ref.shape[1] - 1, chunk):
            e = min(h_ref.shape[1] - 1, a + chunk)
            lr = torch.log_softmax(head(h_ref[0, a:e]).float(), -1)
            lv = torch.log_softmax(head(h_var[0, a:e]).float(), -1)
            tot += float((lr.exp() * (lr - lv)).sum())
            n += e - a
    return max(0.0, tot / max(n, 1))          # >= 0; tiny negatives are rounding


def _cosines(h_ref: torch.Tensor, h_var: torch.Tensor) -> tuple[float, float]:
    hr, hv = h_ref[0].double(), h_var[0].double()
    tok = torch.nn.functional.cosine_similarity(hr, hv, dim=-1).mean()
    emb = torch.nn.functional.cosine_similarity(hr.mean(0), hv.mean(0), dim=0)
    return float(tok), float(emb)


def encoder_loss_reason(lm) -> str:
    return (f"{lm.info.name} is an encoder without a masked-LM head in its package, so no token loss can be "
            "computed; see hidden_cosine and embedding_cosine instead")


def baseline_metrics(lm, ids, hidden) -> dict:
    nll, top1 = next_token_loss(lm, hidden, ids) if lm.info.causal else (None, None)
    if nll is None:
        reason = encoder_loss_reason(lm) if not lm.info.causal else "the text has fewer than 2 tokens"
        return {"loss": None, "perplexity": None, "loss_unavailable": reason, "token_nll": None, "_top1": None}
    loss = float(np.mean(nll))
    return {"loss": loss, "perplexity": math.exp(loss), "loss_unavailable": None, "token_nll": nll,
            "_top1": top1}


def end_to_end(lm, ids, hidden_ref, base: dict, hidden_var) -> dict:
    """End-to-end numbers of one swapped run against the softmax run."""
    tok_cos, emb_cos = _cosines(hidden_ref, hidden_var)
    res = {"loss": None, "perplexity": None, "top1_agreement": None, "logit_kl": None, "delta_loss": None,
           "loss_unavailable": base["loss_unavailable"], "token_nll": None,
           "hidden_cosine": tok_cos, "embedding_cosine": emb_cos}
    if base["loss"] is None:
        return res
    nll, top1 = next_token_loss(lm, hidden_var, ids)
    loss = float(np.mean(nll))
    res.update(loss=loss, perplexity=math.exp(min(loss, 700.0)), delta_loss=loss - base["loss"],
               top1_agreement=float(np.mean(top1 == base["_top1"])), token_nll=nll,
               logit_kl=_logit_kl(lm, hidden_ref, hidden_var))
    return res


def compare_variants(lm, text: str, specs, layers: Optional[Sequence[int]] = None,
                     heads: Optional[Sequence[int]] = None, *, e2e: bool = True, max_tokens: int = 8192,
                     backend: str = "torch", options: FidelityOptions = FidelityOptions(),
                     progress: Optional[Progress] = None, cancel: Optional[Callable[[], bool]] = None) -> dict:
    """Compare attention variants with softmax on `text`.

    specs: spec strings ("window:64,topk:32" or a list) or VariantSpecs (registry.py).
    layers: layers to measure and swap (default all); heads: heads swapped end to end (default all; the
    fidelity metrics cover every head of the chosen layers). e2e=False skips the swapped forwards.
    progress(frac, message); cancel() -> True raises compute.errors.Cancelled.

    Returns a dict (numpy arrays inside; to_jsonable() for JSON):
      model, kind ('causal'|'encoder'), n_tokens, tokens [str], layers [int], heads [int]|None, n_heads,
      metrics [names], rows {mode 'all'|'sample', count, spearman},
      baseline {loss, perplexity, loss_unavailable, token_nll [N-1]|None},
      variants {canonical spec: {spec, name, family, description, paper, params {..},
                fidelity {metric: ndarray [len(layers), n_heads]}, fidelity_mean {metric: float},
                e2e {loss, perplexity, delta_loss, top1_agreement, logit_kl, hidden_cosine, embedding_cosine,
                     loss_unavailable, token_nll}|None,
                fits {layer: Hedgehog fit summary} (fitted variants), seconds}},
      timings {reference_s, total_s}
    Metric definitions: fidelity.py. Raises InputError on bad specs, layers, heads or text.
    """
    t_start = time.perf_counter()
    try:
        backend = resolve_backend(backend, lm.device)
    except BackendUnavailable as exc:
        raise UserError(str(exc)) from None
    parsed = parse_specs(specs)
    info = lm.info
    layers = _check_layers(layers, info.n_layers)
    heads = _check_heads(heads, info.n_heads)
    ids = tokenize(lm, text, max_tokens)
    input_ids = torch.tensor([ids])
    variants = [(sp, sp.build()) for sp in parsed]

    # progress units: a fidelity step 1, a Hedgehog fit 10, a swapped forward 2 + the reference 2
    units = 2 + sum(len(layers) * (10 if sp.family == "fitted" else 1) + (2 if e2e else 0) for sp, _ in variants)
    done = [0.0]

    def tick(w: float, msg: str) -> None:
        done[0] += w
        if progress is not None:
            progress(min(1.0, done[0] / units), msg)

    def sub(w: float):
        start = done[0]

        def cb(frac: float, msg: str) -> None:
            check_cancel(cancel)
            if progress is not None:
                progress(min(1.0, (start + w * frac) / units), msg)
        return cb

    if progress is not None:
        progress(0.0, f"{len(ids)} tokens: softmax reference")
    t0 = time.perf_counter()
    sess, hidden_ref = capture(lm, input_ids, keep_qkv=set(layers), layers=set(), return_hidden=True)
    base = baseline_metrics(lm, input_ids, hidden_ref)
    t_ref = time.perf_counter() - t0
    tick(2, "softmax reference done")

    out_vars = {}
    for sp, var in variants:
        out_vars[sp.text] = {"spec": sp.text, "name": sp.name, "family": sp.family,
                             "description": sp.info.description, "paper": sp.info.paper,
                             "params": dict(sp.params), "fidelity": {m: np.full((len(layers), info.n_heads), np.nan)
                                                                     for m in METRICS},
                             "e2e": None, "fits": {} if sp.family == "fitted" else None, "seconds": 0.0}
    states = {sp.text: {} for sp, _ in variants}
    rows_info = None
    for li, layer in enumerate(layers):
        call = sess.calls.pop(layer)
        ref = reference_stats(call, backend)
        for sp, var in variants:
            check_cancel(cancel)
            t1 = time.perf_counter()
            w = 10 if sp.family == "fitted" else 1
            state = var.prepare(call, progress=sub(w * 0.9), cancel=cancel)
            states[sp.text][layer] = state
            res = layer_fidelity(call, sp, state=state, ref=ref, options=options, backend=backend, variant=var)
            rows_info = {"mode": res["rows_mode"], "count": res["rows"], "spearman": res["spearman_rows"]}
            for m in METRICS:
                out_vars[sp.text]["fidelity"][m][li] = res["metrics"][m]
            if sp.family == "fitted" and hasattr(state, "summary"):
                out_vars[sp.text]["fits"][layer] = state.summary()
            out_vars[sp.text]["seconds"] += time.perf_counter() - t1
            tick(w, f"layer {layer}: {sp.text}")
        del call, ref

    for sp, var in variants:
        ov = out_vars[sp.text]
        with np.errstate(all="ignore"):
            ov["fidelity_mean"] = {m: (float(np.nanmean(v)) if np.isfinite(v).any() else None)
                                   for m, v in ov["fidelity"].items()}
        if not e2e:
            continue
        check_cancel(cancel)
        t1 = time.perf_counter()
        hook = make_swap_hook(var, states[sp.text], heads, backend, cancel)
        _, hidden_var = capture(lm, input_ids, layers=set(), output_hook=hook, return_hidden=True)
        ov["e2e"] = end_to_end(lm, input_ids, hidden_ref, base, hidden_var)
        ov["seconds"] += time.perf_counter() - t1
        tick(2, f"end to end: {sp.text}")

    baseline = {k: v for k, v in base.items() if not k.startswith("_")}
    return {"model": info.name, "kind": info.kind, "n_tokens": len(ids), "tokens": token_strings(lm, ids),
            "layers": layers, "heads": heads, "n_heads": info.n_heads, "metrics": list(METRICS),
            "rows": rows_info, "baseline": baseline, "variants": out_vars,
            "timings": {"reference_s": t_ref, "total_s": time.perf_counter() - t_start}}


def to_jsonable(obj):
    """numpy -> lists, NaN/inf -> None, dict keys -> str: ready for json.dumps(allow_nan=False)."""
    if isinstance(obj, dict):
        return {str(k): to_jsonable(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [to_jsonable(v) for v in obj]
    if isinstance(obj, np.ndarray):
        return to_jsonable(obj.tolist())
    if isinstance(obj, (np.floating, float)):
        f = float(obj)
        return f if math.isfinite(f) else None
    if isinstance(obj, (np.integer,)):
        return int(obj)
    if isinstance(obj, np.bool_):
        return bool(obj)
    return obj
