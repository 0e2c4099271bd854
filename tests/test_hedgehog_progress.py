"""Hedgehog fits report an estimate before fitting on and one progress call per layer, in order; their
parameters are capped before any work. SmolLM2-135M, a short text (< 64 tokens), a few Adam steps."""
import re
import time

import pytest
import torch

from compute.engine import capture, tokenize
from compute.errors import InputError
from compute.variants import compare_variants, parse_spec
from compute.variants import hedgehog as HH
from compute.variants.registry import VARIANTS

TEXT = "The keeper lit the lamp, wound the clock and wrote about the ships and the birds in his logbook."
LAYERS = (0, 3, 5)


from tests.helpers import one_thread  # noqa: E402,F401  (autouse fixture: one torch thread)


@pytest.fixture(scope="module")
def calls(smollm):
    ids = torch.tensor([tokenize(smollm, TEXT, 64)])
    assert ids.shape[1] < 64
    sess, _ = capture(smollm, ids, keep_qkv=set(LAYERS), layers=set())
    return [sess.calls[layer] for layer in LAYERS]


def test_fit_layers_estimates_first_then_reports_each_layer_in_order(calls):
    events = []
    done = []
    fits = HH.fit_layers(calls, steps=4, rows=16, budget_s=0, use_cache=False,
                         progress=lambda f, m: events.append((f, m)),
                         layer_done=lambda i, n, fit, eta: done.append((i, n, fit.layer, eta)))
    assert [d[:3] for d in done] == [(0, 3, 0), (1, 3, 3), (2, 3, 5)]         # once per layer, in order
    assert done[-1][3] == 0.0 and all(d[3] > 0 for d in done[:-1])           # seconds left, down to 0
    assert list(fits) == list(LAYERS)
    first = events[0][1]
    assert re.match(r"Hedgehog: about [\d.]+ s per layer \(4 steps x \d+ ms\), about \d+ s for 3 layers", first)
    fitted = [m for _, m in events if "fitted" in m]
    assert [re.search(r"layer (\d+) fitted \((\d)/3\)", m).groups() for m in fitted] == \
        [("0", "1"), ("3", "2"), ("5", "3")]
    assert events.index((events[0][0], first)) < min(i for i, (_, m) in enumerate(events) if "fitted" in m)
    fr = [f for f, _ in events]
    assert fr == sorted(fr) and fr[-1] == pytest.approx(1.0)
    for fit in fits.values():                   # the estimate is recorded with the fit it predicted
        assert fit.estimate_s is not None and fit.summary()["estimate_s"] == fit.estimate_s


def test_estimate_is_setup_plus_steps_times_first_step(calls):
    got = []
    fit = HH.fit_hedgehog(calls[0], steps=3, rows=16, budget_s=0, use_cache=False, on_estimate=got.append)
    (est,) = got
    assert est.layer == 0 and est.steps == 3
    assert est.per_layer_s == pytest.approx(est.setup_s + 3 * est.step_s)
    assert est.setup_s + est.step_s <= fit.seconds                            # measured inside this fit
    assert est.total_s(30) == pytest.approx(30 * est.per_layer_s)
    msgs = []                                   # no on_estimate: the estimate is the first progress message
    HH.fit_hedgehog(calls[1], steps=6, rows=16, budget_s=0, use_cache=False, progress=lambda f, m: msgs.append(m))
    assert msgs[0].startswith("Hedgehog: about") and "(layer 3)" in msgs[0]
    assert all(m.startswith("Hedgehog layer 3: step") for m in msgs[1:]) and len(msgs) == 3
    capped = HH.FitEstimate(layer=0, setup_s=1.0, step_s=2.0, steps=100, budget_s=45.0)
    assert capped.per_layer_s == 46.0 and "capped by the time budget" in capped.message(2)


def test_variant_reports_k_of_n_layers_across_prepare_calls(calls):
    var = parse_spec("hedgehog:steps=3,rows=16,budget=0").build()
    var.plan(LAYERS)
    msgs = []
    for call in calls:
        var.prepare(call, progress=lambda f, m: msgs.append(m))
    assert "for 3 layers" in msgs[0] and msgs[0].startswith("Hedgehog: about")
    assert sum("for 3 layers" in m for m in msgs) == 1                        # the estimate comes once
    fitted = [re.search(r"\((\d)/3\)", m).group(1) for m in msgs if "fitted" in m]
    assert fitted == ["1", "2", "3"]


def test_comparison_reports_hedgehog_layers_in_order(smollm):
    msgs = []
    compare_variants(smollm, TEXT, "hedgehog:steps=3,rows=16,budget=0", layers=[1, 2], e2e=False,
                     progress=lambda f, m: msgs.append(m))
    est = [i for i, m in enumerate(msgs) if m.startswith("Hedgehog: about")]
    fitted = [(i, re.search(r"layer (\d+) fitted", m).group(1)) for i, m in enumerate(msgs) if "fitted" in m]
    assert est and [layer for _, layer in fitted] == ["1", "2"] and est[0] < fitted[0][0]


@pytest.mark.parametrize("kw", [dict(steps=100_000_000), dict(steps=0), dict(tokens=10 ** 9), dict(rows=-1),
                                dict(rows=10 ** 9), dict(budget_s=1e9), dict(budget_s=float("nan"))])
def test_parameters_are_capped_before_any_work(calls, kw):
    t = time.perf_counter()
    with pytest.raises(InputError, match=r"^hedgehog: \w+ must be between"):
        HH.fit_hedgehog(calls[0], use_cache=False, **kw)
    assert time.perf_counter() - t < 0.5


def test_caps_agree_with_the_registry(calls):
    for p in VARIANTS["hedgehog"].params:
        if p.hi is not None and p.name in HH.CAPS:
            assert p.hi == HH.CAPS[p.name], p.name
    # whichever layer catches it (the spec parser's cap, or the fit's), the huge step count never runs
    with pytest.raises(InputError, match="steps"):
        parse_spec("hedgehog:steps=100000000").build().prepare(calls[0])
