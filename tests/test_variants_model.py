"""Variants on the real models: against the model's own attention and the kernels' fp64 oracle, the
end-to-end swap, Hedgehog fitting, the encoder path, maps for the app and the compare CLI."""
import json
import os
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import torch

from compute.engine import capture, next_token_loss, tokenize
from compute.errors import InputError
from compute.models import load_model
from compute.variants import (compare_variants, fit_hedgehog, layer_fidelity, parse_spec, to_jsonable,
                              variant_maps)
from compute.variants.hedgehog import identity_fit
from compute.variants.swap import make_swap_hook
from kernels import StatsConfig, attention_stats
from kernels.reference import attention_stats_dense

ROOT = Path(__file__).resolve().parents[1]
TEXT = ("The old lighthouse keeper climbed the stairs every evening. He lit the lamp, wound the clock, and "
        "wrote a line in his logbook about the weather, the ships, and the birds that rested on the railing. "
        "When the storm came in November, the keeper stayed awake all night, and in the morning he wrote "
        "only one word in the logbook: safe.")


from tests.helpers import one_thread  # noqa: E402,F401  (autouse fixture: one torch thread)


@pytest.fixture(scope="module")
def lm():
    return load_model("smollm2-135m")


@pytest.fixture(scope="module")
def calls(lm):
    ids = torch.tensor([tokenize(lm, TEXT, 4096)])
    seen = {}

    def hook(call, out):                      # the model's own attention output, per layer
        seen[call.layer] = out.detach().clone()
        return None
    sess, _ = capture(lm, ids, keep_qkv={2, 7}, layers=set(), output_hook=hook)
    return {layer: (sess.calls[layer], seen[layer]) for layer in (2, 7)}


def test_softmax_variant_equals_model_attention(calls):
    for call, model_out in calls.values():
        out = parse_spec("softmax").build().bind(call).output().out
        torch.testing.assert_close(out, model_out, atol=2e-5, rtol=1e-4)


@pytest.mark.parametrize("spec", ["sinks:4+window:16", "topk:8", "toptheta:8", "moba:block=16,blocks=2",
                                  "xattn:block=16,stride=4,tau=0.9"])
def test_masking_on_real_qkv_matches_kernel_oracle(calls, spec):
    call, _ = calls[7]
    var = parse_spec(spec).build()
    bound = var.bind(call, var.prepare(call))
    ref = attention_stats_dense(call.q, call.k, call.v, scale=call.scale, causal=True,
                                config=StatsConfig(full_maps=True), variant=bound.mask)
    vo = bound.output()
    torch.testing.assert_close(vo.out, ref.out, atol=2e-5, rtol=1e-4)
    n = call.q.shape[2]
    s = (call.q.double() @ call.k.double().repeat_interleave(3, 1).transpose(-1, -2)) * call.scale
    vis = torch.ones(n, n, dtype=torch.bool).tril()[None, None]
    w, _ = bound.weights(torch.arange(n), s, vis)
    torch.testing.assert_close(w, ref.maps.double(), atol=1e-5, rtol=0)
    # retained mass against the dense oracle's unmasked lse: KL = -log R
    full = attention_stats_dense(call.q, call.k, call.v, scale=call.scale, causal=True)
    m = layer_fidelity(call, spec)["metrics"]
    lse_var = ref.lse.double()
    r = torch.exp(lse_var - full.lse.double()).mean(2)[0].numpy()
    np.testing.assert_allclose(m["retained"], r, rtol=1e-4)


def test_toptheta_keeps_k_on_average_on_a_real_layer(calls):
    call, _ = calls[2]
    m = layer_fidelity(call, "toptheta:12")
    var = parse_spec("toptheta:12").build()
    vo = var.bind(call, var.prepare(call)).output()
    nvis = torch.arange(1, call.q.shape[2] + 1).double()
    kept = vo.kept[0].double()[:, nvis > 12].mean(-1)          # per head, rows with > k keys
    assert ((kept >= 12 - 1e-6) & (kept <= 14)).all(), kept
    assert (m["metrics"]["density"] < 1).all()


def test_end_to_end_softmax_swap_reproduces_baseline(lm):
    res = compare_variants(lm, TEXT, "softmax,window:8,sinks:2+window:8", layers=[0, 5, 11])
    base = res["baseline"]
    ids = torch.tensor([tokenize(lm, TEXT, 4096)])
    _, hidden = capture(lm, ids, layers=set(), return_hidden=True)
    nll, _ = next_token_loss(lm, hidden, ids)
    assert base["loss"] == pytest.approx(float(nll.mean()), rel=1e-6)
    assert base["perplexity"] == pytest.approx(np.exp(base["loss"]), rel=1e-9)
    sm = res["variants"]["softmax"]["e2e"]
    assert sm["loss"] == pytest.approx(base["loss"], abs=1e-4)
    assert sm["top1_agreement"] == 1.0 and sm["logit_kl"] < 1e-6
    w = res["variants"]["window:8"]["e2e"]
    st = res["variants"]["sinks:2+window:8"]["e2e"]
    assert w["loss"] > base["loss"] + 1e-3 and w["top1_agreement"] < 1
    assert w["perplexity"] == pytest.approx(np.exp(w["loss"]))
    assert st["loss"] < w["loss"]                                  # sinks rescue the window (StreamingLLM)
    fid = res["variants"]["window:8"]["fidelity"]
    assert fid["kl"].shape == (3, 9) and np.isfinite(fid["kl"]).all()
    assert res["layers"] == [0, 5, 11] and res["rows"]["mode"] == "all"
    json.dumps(to_jsonable(res), allow_nan=False)

    # the swap hook itself: window on layer 5 head 3 only, checked against a manual swap
    var = parse_spec("window:8").build()
    hook = make_swap_hook(var, {5: None}, [3])
    _, h_var = capture(lm, ids, layers=set(), output_hook=hook, return_hidden=True)
    nll_var, _ = next_token_loss(lm, h_var, ids)

    def manual(call, out):
        if call.layer != 5:
            return None
        o = out.clone()
        o[:, 3] = attention_stats(call.q, call.k, call.v, scale=call.scale, causal=True,
                                  variant=__import__("kernels").VariantMask(window=8)).out[:, 3]
        return o
    _, h_man = capture(lm, ids, layers=set(), output_hook=manual, return_hidden=True)
    nll_man, _ = next_token_loss(lm, h_man, ids)
    np.testing.assert_allclose(nll_var, nll_man, rtol=1e-5, atol=1e-5)
    assert abs(float(nll_var.mean()) - base["loss"]) > 1e-5


def test_progress_and_cancel(lm):
    from compute.errors import Cancelled
    seen = []
    compare_variants(lm, TEXT, "topk:4", layers=[0, 1], progress=lambda f, m: seen.append(f))
    assert seen[0] == 0.0 and seen[-1] == pytest.approx(1.0) and seen == sorted(seen)
    with pytest.raises(Cancelled):
        compare_variants(lm, TEXT, "topk:4,hedgehog", layers=[0, 1], cancel=lambda: len(seen) > 0)


def test_bad_layers_and_heads(lm):
    with pytest.raises(InputError, match="layer 30 out of range"):
        compare_variants(lm, TEXT, "elu", layers=[30])
    with pytest.raises(InputError, match="head 9 out of range"):
        compare_variants(lm, TEXT, "elu", layers=[0], heads=[9])
    with pytest.raises(InputError, match="unknown variant"):
        compare_variants(lm, TEXT, "elu,nonsense", layers=[0])


def test_hedgehog_fit_lowers_kl_and_is_cached(calls):
    call, _ = calls[7]
    fit = fit_hedgehog(call, steps=25, rows=64, budget_s=0, use_cache=True)
    assert fit.steps == 25 and not fit.stopped_early
    assert fit.kl_after < 0.6 * fit.kl_before
    assert fit.loss_after < fit.loss_before
    assert all(a < b for a, b in zip(fit.kl_after_heads, fit.kl_before_heads))
    t = time.perf_counter()
    again = fit_hedgehog(call, steps=25, rows=64, budget_s=0, use_cache=True)
    assert again.cached and time.perf_counter() - t < 1.0
    torch.testing.assert_close(again.wq, fit.wq)
    # the fidelity metric agrees: fitted maps beat their identity initialisation
    kl_fit = layer_fidelity(call, "hedgehog", state=fit)["metrics"]["kl"]
    kl_init = layer_fidelity(call, "hedgehog", state=identity_fit(call))["metrics"]["kl"]
    np.testing.assert_allclose(kl_fit, fit.kl_after_heads, rtol=1e-3)
    np.testing.assert_allclose(kl_init, fit.kl_before_heads, rtol=1e-3)
    assert (kl_fit < kl_init).all()


def test_hedgehog_default_fit_of_one_layer_under_a_minute(lm):
    ids = torch.tensor([tokenize(lm, " ".join([TEXT] * 6), 4096)])
    sess, _ = capture(lm, ids, keep_qkv={2}, layers=set())
    call = sess.calls[2]
    assert call.q.shape[2] > 400
    progress = []
    fit = fit_hedgehog(call, use_cache=False, progress=lambda f, m: progress.append(f))
    print(f"\nHedgehog default fit, layer 2, {fit.tokens} tokens: {fit.seconds:.1f} s, {fit.steps} steps, "
          f"KL {fit.kl_before:.3f} -> {fit.kl_after:.3f}")
    assert fit.seconds < 60
    assert fit.kl_after < fit.kl_before
    assert progress and progress == sorted(progress)


def test_encoder_reports_no_loss_and_gives_cosines():
    enc = load_model("minilm-l6")
    res = compare_variants(enc, TEXT, "softmax,window:4,elu", layers=[0, 3])
    assert res["kind"] == "encoder"
    base = res["baseline"]
    assert base["loss"] is None and "masked-LM head" in base["loss_unavailable"]
    sm, w = res["variants"]["softmax"]["e2e"], res["variants"]["window:4"]["e2e"]
    assert sm["loss"] is None and sm["top1_agreement"] is None and "masked-LM head" in sm["loss_unavailable"]
    assert sm["hidden_cosine"] == pytest.approx(1.0, abs=1e-6)
    assert sm["embedding_cosine"] == pytest.approx(1.0, abs=1e-6)
    assert w["hidden_cosine"] < 0.9999 and w["embedding_cosine"] < 1
    fid = res["variants"]["window:4"]["fidelity"]
    assert fid["kl"].shape == (2, 12) and (fid["kl"] > 0).all()
    assert np.allclose(res["variants"]["softmax"]["fidelity"]["kl"], 0, atol=1e-9)


def test_variant_maps_for_the_app(lm):
    out = variant_maps(lm, TEXT, "topk:8,elu", layer=3, head=2)
    n = len(out["tokens"])
    sm = out["softmax"]
    assert sm.shape == (n, n) and sm.dtype == np.float32
    ids = torch.tensor([tokenize(lm, TEXT, 4096)])
    sess, _ = capture(lm, ids, config=StatsConfig(full_maps=True), layers={3})
    np.testing.assert_allclose(sm, sess.results[3].maps[0, 2].numpy(), atol=1e-5)
    for spec in ("topk:8", "elu"):
        mp = out["maps"][spec]
        np.testing.assert_allclose(mp.sum(-1), 1.0, atol=1e-4)
        assert np.all(np.triu(mp, 1) == 0)
    assert ((out["maps"]["topk:8"] > 0).sum(-1) <= np.minimum(np.arange(1, n + 1), 8)).all()
    with pytest.raises(InputError, match="head 9 out of range"):
        variant_maps(lm, TEXT, "elu", layer=3, head=9)


def test_python_m_compute_variants_lists_the_registry():
    env = {**os.environ, "PYTHONPATH": str(ROOT), "OMP_NUM_THREADS": "1"}
    r = subprocess.run([sys.executable, "-m", "compute", "variants", "--json"], cwd=ROOT, env=env,
                       capture_output=True, text=True, timeout=120)
    assert r.returncode == 0, r.stderr
    names = [v["name"] for v in json.loads(r.stdout)]
    assert {"softmax", "streaming", "topk", "hedgehog", "performer", "act", "zerotuning"} <= set(names)


def test_compare_cli_end_to_end(tmp_path, capsys, lm):
    """The whole CLI path in-process (the model is already loaded here; a subprocess would spend most of
    its time importing and loading)."""
    from compute.cli import main
    tf = tmp_path / "t.txt"
    tf.write_text(TEXT)
    rc = main(["compare", "--model", "smollm2-135m", "--text-file", str(tf), "--variants",
               "softmax,sinks:4+window:16,topk:8", "--variants", "elu", "--layers", "1", "3-4", "--heads", "0-8",
               "--out", str(tmp_path / "o"), "--quiet"])
    err = capsys.readouterr().err
    assert rc == 0, err
    data = json.loads((tmp_path / "o" / "compare.json").read_text())
    assert list(data["variants"]) == ["softmax", "sinks:4+window:16", "topk:8", "elu"]
    assert data["layers"] == [1, 3, 4] and data["heads"] == list(range(9))
    base = data["baseline"]["loss"]
    assert base > 0
    assert data["variants"]["softmax"]["e2e"]["loss"] == pytest.approx(base, abs=1e-4)
    for spec, v in data["variants"].items():
        e = v["e2e"]
        assert {"loss", "perplexity", "top1_agreement"} <= set(e)
        assert e["perplexity"] == pytest.approx(np.exp(e["loss"]), rel=1e-6)
        assert 0 <= e["top1_agreement"] <= 1
        assert np.array(v["fidelity"]["out_rel_l2"], dtype=float).shape == (3, 9)
        assert v["description"] and v["paper"]
    assert data["variants"]["topk:8"]["fidelity"]["retained"][0][0] <= 1
    assert data["variants"]["elu"]["fidelity"]["retained"][0][0] is None      # not a masking variant
    assert "softmax: loss" in err



@pytest.mark.parametrize("args, message", [
    (["--variants", "window:x"], "error: window: w must be an integer, got 'x'"),
    (["--variants", "elu", "--layers", "2-1"], "error: --layers: empty range '2-1'"),
    (["--variants", "elu", "--heads", "a"], "error: --heads: 'a' is not an index or a range a-b"),
    (["--variants", "elu", "--layers", "99"], "error: layer 99 out of range: the model has layers 0..29"),
    (["--variants", "elu", "--row-sample", "0"], "error: --row-sample must be at least 1"),
])
def test_compare_cli_bad_input(tmp_path, capsys, lm, args, message):
    from compute.cli import main
    tf = tmp_path / "t.txt"
    tf.write_text(TEXT)
    assert main(["compare", "--text-file", str(tf), "--out", str(tmp_path / "o"), "--quiet", *args]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert err[-1] == message
    assert not (tmp_path / "o").exists()
