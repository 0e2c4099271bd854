"""Tracing on real models: logit lens against the model's own logits, contributions summing to the
logit, the neuron view against the engine's maps, RoPE before/after, encoders saying what is missing."""
import numpy as np
import pytest
import torch

from compute.engine import tokenize
from compute.options import AnalysisOptions
from compute.pipeline import analyze as analyze_text
from compute.tracing.contributions import head_contributions
from compute.tracing.forward import run_forward
from compute.tracing.trace import build_trace, trace_text

TEXT = "The capital of France is Paris. The capital of Germany is"


@pytest.fixture(scope="module")
def traced(smollm):
    ids = tokenize(smollm, TEXT, 64)
    with torch.no_grad():
        logits = smollm.model(torch.tensor([ids])).logits[0].float()
    return ids, logits, build_trace(smollm, ids, neuron=(5, 4, 3))


def test_logit_lens_last_layer_is_the_models_output(smollm, traced):
    ids, logits, tr = traced
    P = len(ids) - 1
    assert tr["position"] == P and len(tr["logit_lens"]) == smollm.info.n_layers
    probs = torch.softmax(logits[P], -1)
    top = tr["logit_lens"][-1]["top"][0]
    assert top["id"] == int(probs.argmax()) and top["token"] == smollm.tokenizer.decode([top["id"]])
    assert top["prob"] == pytest.approx(float(probs.max()), abs=1e-4)
    assert tr["prediction"]["logit"] == pytest.approx(float(logits[P, top["id"]]), abs=1e-4)
    for rec in tr["logit_lens"]:
        p = [t["prob"] for t in rec["top"]]
        assert p == sorted(p, reverse=True) and 0 < sum(p) <= 1 + 1e-6
    assert tr["next_token"] is None and "next_token_rank" not in tr["logit_lens"][0]


def test_logit_lens_rank_of_the_next_token(smollm, traced):
    ids, logits, _ = traced
    P = 3
    tr = build_trace(smollm, ids, P)
    nxt = ids[P + 1]
    last = tr["logit_lens"][-1]
    assert tr["next_token"]["id"] == nxt
    assert last["next_token_rank"] == int((logits[P] > logits[P, nxt]).sum()) + 1
    assert last["next_token_prob"] == pytest.approx(float(torch.softmax(logits[P], -1)[nxt]), abs=1e-5)
    assert len(tr["rollout"]) == P + 1 and len(tr["flow"]) == P + 1


def test_contributions_sum_to_the_logit(smollm, traced):
    _, _, tr = traced
    L, H = smollm.info.n_layers, smollm.info.n_heads
    c = np.array(tr["contributions"])
    assert c.shape == (L, H)
    total = c.sum() + tr["contribution_rest"]
    assert total == pytest.approx(tr["prediction"]["logit"], rel=1e-3)
    parts = tr["contribution_parts"]
    rest = parts["embedding"] + sum(parts["mlp"]) + sum(parts["attention_bias"]) + parts["unembedding_bias"]
    assert rest == pytest.approx(tr["contribution_rest"], rel=1e-9)
    assert np.abs(c).max() > 0.1                        # heads do contribute
    imp = tr["head_importance"]
    assert imp["available"] and np.array_equal(np.array(imp["importance"]), np.abs(c))


def test_head_outputs_are_attention_times_values(smollm, traced):
    """The o_proj input split per head (what contributions use) equals sum_j a_Pj v_j of that head."""
    ids, _, _ = traced
    P, layer = len(ids) - 1, 7
    from compute.engine import capture
    sess, _ = capture(smollm, torch.tensor([ids]), layers=set(), keep_qkv={layer})
    v = sess.calls[layer].v[0]                          # [Hkv, N, D]
    ft = run_forward(smollm, ids, P)
    g = smollm.info.n_heads // smollm.info.n_kv_heads
    for h in range(smollm.info.n_heads):
        want = ft.head_rows[layer, h] @ v[h // g, :P + 1].numpy()
        np.testing.assert_allclose(ft.head_out[layer, h], want, atol=2e-4, rtol=1e-3)


def test_neuron_view_matches_the_engine_maps(smollm, traced):
    ids, _, tr = traced
    P = len(ids) - 1
    res = analyze_text(smollm, TEXT, AnalysisOptions(backend="torch", max_tokens=64, compute_loss=False))
    nv = tr["neuron"]
    layer, head, key = 5, 4, 3
    assert nv["kv_head"] == head // 3
    engine_row = res.maps[layer, head, P, :P + 1].astype(np.float64)
    np.testing.assert_allclose(nv["row_probs"], engine_row, atol=2e-3)       # maps are stored as float16
    assert nv["prob"] == pytest.approx(float(engine_row[key]), abs=2e-3)
    lse = float(np.log(np.exp(np.array(nv["row_logits"])).sum()))
    assert lse == pytest.approx(float(res.lse[layer, head, P]), abs=1e-4)   # the logits themselves, exactly
    assert nv["logit"] == pytest.approx(nv["dot"] * nv["scale"]) and nv["dot"] == pytest.approx(sum(nv["product"]))
    np.testing.assert_allclose(np.array(tr["head_rows"])[layer, head], engine_row, atol=2e-3)


def test_rope_before_and_after(smollm, traced):
    ids, _, _ = traced
    P = len(ids) - 1
    ft = run_forward(smollm, ids, P)
    # position 0 is not rotated; every position keeps the norm of each rotated pair (i, i + D/2)
    np.testing.assert_allclose(ft.k_pre[:, :, 0], ft.k[:, :, 0], atol=1e-5)
    half = ft.k.shape[-1] // 2
    pair = lambda x: np.hypot(x[..., :half], x[..., half:])  # noqa: E731
    np.testing.assert_allclose(pair(ft.k_pre), pair(ft.k), atol=1e-4)
    np.testing.assert_allclose(pair(ft.q_pre), pair(ft.q), atol=1e-4)
    assert not np.allclose(ft.q_pre, ft.q, atol=1e-3)
    # and the rotation is the model's own: rotary cos/sin at P applied to the pre-rotation query
    rot = smollm.model.model.rotary_emb
    cos, sin = rot(torch.zeros(1), torch.tensor([[P]]))
    qp = torch.from_numpy(ft.q_pre)
    rotated = qp * cos[0, 0] + torch.cat([-qp[..., half:], qp[..., :half]], -1) * sin[0, 0]
    np.testing.assert_allclose(rotated.numpy(), ft.q, atol=1e-4)


def test_rollout_rows_and_layer_graph(smollm, traced):
    ids, _, tr = traced
    n = len(ids)
    by = np.array(tr["rollout_by_layer"])
    assert by.shape == (smollm.info.n_layers + 1, n)
    np.testing.assert_allclose(by.sum(-1), 1.0, atol=1e-6)
    assert tr["rollout"] == by[0].tolist()
    f = np.array(tr["flow"])
    assert f.shape == (n,) and np.all(f >= 0) and np.all(f <= 1 + 1e-9)


def test_tiny_llama_with_biases_decomposes():
    """o_proj and MLP biases and an untied unembedding go into the rest, and still sum to the logit."""
    from transformers import AutoModelForCausalLM, LlamaConfig

    from compute.capture import ATTN_IMPL, register
    from compute.models import LoadedModel, ModelInfo
    register()
    torch.manual_seed(0)
    cfg = LlamaConfig(vocab_size=120, hidden_size=64, intermediate_size=96, num_hidden_layers=3,
                      num_attention_heads=4, num_key_value_heads=2, head_dim=16, max_position_embeddings=256,
                      attention_bias=True, mlp_bias=True, tie_word_embeddings=False)
    model = AutoModelForCausalLM.from_config(cfg, attn_implementation=ATTN_IMPL, dtype=torch.float32).eval()
    with torch.no_grad():
        for layer in model.model.layers:
            layer.self_attn.o_proj.bias.normal_(0, 0.5)
    lm = LoadedModel(model, None, ModelInfo("tiny-llama", "causal", 3, 4, 2, 16, 256, "random", "llama"))
    ids = torch.randint(0, 120, (20,), generator=torch.Generator().manual_seed(1)).tolist()
    ft = run_forward(lm, ids, 11)
    with torch.no_grad():
        logits = model(torch.tensor([ids])).logits[0, 11]
    t = int(logits.argmax())
    d = head_contributions(lm, ft, t)
    assert d["logit"] == pytest.approx(float(logits[t]), abs=1e-5)
    assert np.sum(d["contributions"]) + d["contribution_rest"] == pytest.approx(d["logit"], rel=1e-4, abs=1e-5)
    assert any(abs(b) > 1e-3 for b in d["parts"]["attention_bias"])
    tr = build_trace(lm, ids, 11)
    assert tr["tokens"][0] == f"<{ids[0]}>" and tr["contribution_target"]["id"] == t


def test_encoder_says_what_is_unavailable(minilm):
    tr = trace_text(minilm, "the cat sat on the mat", position=2, neuron=(1, 3, 4))
    n = len(tr["tokens"])
    assert "unembedding" in tr["omitted"]["logit_lens"] and "contributions" in tr["omitted"]
    assert "logit_lens" not in tr and "contributions" not in tr
    assert len(tr["rollout"]) == n and len(tr["flow"]) == n      # bidirectional: every token reaches P
    np.testing.assert_allclose(sum(tr["rollout"]), 1.0, atol=1e-6)
    assert "positions" in tr["neuron"]["pre_note"] and tr["neuron"]["kv_head"] == 3


def test_bad_positions_and_long_flow(smollm):
    from compute.errors import InputError
    with pytest.raises(InputError, match="outside the text"):
        trace_text(smollm, "a short text", position=99)
    with pytest.raises(InputError, match="outside the text"):
        trace_text(smollm, "a short text", position=-1)
    seen = []
    tr = trace_text(smollm, "one two three four five six", flow_max_tokens=3, progress=lambda f, m: seen.append(f))
    assert "flow" not in tr and "3 tokens" in tr["omitted"]["flow"]
    assert len(tr["rollout"]) == len(tr["tokens"])
    assert seen == sorted(seen) and seen[-1] == 1.0 and len(seen) == smollm.info.n_layers + 1
    with pytest.raises(InputError, match="not visible"):
        trace_text(smollm, "one two three", position=1, neuron=(0, 0, 2))
    with pytest.raises(InputError, match="no head 30.0"):
        trace_text(smollm, "one two three", neuron=(30, 0, 0))
    from compute.errors import Cancelled
    with pytest.raises(Cancelled):
        trace_text(smollm, "one two three four five six", cancel=lambda: True)


def test_concurrent_forward_on_the_shared_model_does_not_leak_in(smollm, traced):
    """Module hooks are global to the cached model: another thread's forward while a trace runs must not
    write into the trace (the app serves several requests per process)."""
    import threading

    from compute.engine import capture
    ids, _, _ = traced
    P = len(ids) - 1
    clean = run_forward(smollm, ids, P)
    other = tokenize(smollm, "Completely different words appear here, in a longer sentence than that.", 64)
    fired = []

    def meddle():
        if not fired:
            fired.append(1)
            t = threading.Thread(target=lambda: capture(smollm, torch.tensor([other]), layers=set()))
            t.start()
            t.join()
        return False

    mixed = run_forward(smollm, ids, P, cancel=meddle)
    assert fired
    for name in ("hidden", "head_out", "mlp_out", "embed", "q_pre", "k_pre"):
        np.testing.assert_array_equal(getattr(mixed, name), getattr(clean, name), err_msg=name)


def test_unknown_final_norm_omits_contributions_but_keeps_the_lens():
    """A final norm the decomposition cannot freeze (here: a wrapped RMSNorm of another class name) gives the
    lens as usual and omits the contributions with the reason, instead of failing the trace."""
    from transformers import AutoModelForCausalLM, LlamaConfig

    from compute.capture import ATTN_IMPL, register
    from compute.models import LoadedModel, ModelInfo
    register()
    torch.manual_seed(0)
    cfg = LlamaConfig(vocab_size=50, hidden_size=32, intermediate_size=48, num_hidden_layers=2,
                      num_attention_heads=4, num_key_value_heads=4, max_position_embeddings=64)
    model = AutoModelForCausalLM.from_config(cfg, attn_implementation=ATTN_IMPL, dtype=torch.float32).eval()

    class OddNorm(torch.nn.Module):
        def __init__(self, inner):
            super().__init__()
            self.inner = inner

        def forward(self, x):
            return self.inner(x)

    model.model.norm = OddNorm(model.model.norm)
    lm = LoadedModel(model, None, ModelInfo("tiny-odd", "causal", 2, 4, 4, 8, 64, "random", "llama"))
    ids = list(range(3, 15))
    tr = build_trace(lm, ids)
    with torch.no_grad():
        logits = model(torch.tensor([ids])).logits[0, -1]
    assert tr["prediction"]["id"] == int(logits.argmax())
    assert tr["prediction"]["logit"] == pytest.approx(float(logits.max()), abs=1e-5)
    assert "OddNorm" in tr["omitted"]["contributions"] and "contributions" not in tr
