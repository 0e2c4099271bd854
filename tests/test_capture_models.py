"""Capture on real and tiny random models: outputs unchanged, statistics equal to the model's own
fp32 eager attention weights, padding honoured."""
import math

import pytest
import torch
from transformers import (AutoModel, AutoModelForCausalLM, BertConfig, LlamaConfig)

from compute.capture import ATTN_IMPL, CaptureSession, register
from compute.engine import capture
from compute.models import LoadedModel, ModelInfo
from kernels import StatsConfig
from kernels.reference import stats_from_probs
from tests.helpers import assert_stats_close, eager_twin

TEXTS = ["The quick brown fox jumps over the lazy dog while the cat watches from the fence.",
         "Attention sinks appear in small models too."]
CFG = StatsConfig(pool_size=4, full_maps=True)
STAT_FIELDS = ("entropy", "n_visible", "sink0", "sink_s", "top1_prob", "prev_mass", "local_mass", "exp_dist",
               "colsum", "n_queries", "pooled_mean", "pooled_max", "dist_hist", "maps")


def _tiny(kind):
    register()
    torch.manual_seed(0)
    if kind == "llama":
        cfg = LlamaConfig(vocab_size=120, hidden_size=64, intermediate_size=96, num_hidden_layers=2,
                          num_attention_heads=4, num_key_value_heads=2, head_dim=20, max_position_embeddings=256)
        model = AutoModelForCausalLM.from_config(cfg, attn_implementation=ATTN_IMPL, dtype=torch.float32)
        info = ModelInfo("tiny-llama", "causal", 2, 4, 2, 20, 256, "random", "llama")
    else:
        cfg = BertConfig(vocab_size=120, hidden_size=48, intermediate_size=64, num_hidden_layers=2,
                         num_attention_heads=4, max_position_embeddings=256)
        model = AutoModel.from_config(cfg, attn_implementation=ATTN_IMPL, dtype=torch.float32)
        info = ModelInfo("tiny-bert", "encoder", 2, 4, 4, 12, 256, "random", "bert")
    return LoadedModel(model.eval(), None, info)


def _ids(lm, text):
    if lm.tokenizer is None:
        g = torch.Generator().manual_seed(len(text))
        return torch.randint(0, 120, (1, 37), generator=g)
    return lm.tokenizer(text, return_tensors="pt").input_ids


def _check_against_eager(lm, ids):
    sess, _ = capture(lm, ids, config=CFG)
    eager = eager_twin(lm)
    base = getattr(eager, eager.base_model_prefix, eager)
    with torch.no_grad():
        att = base(input_ids=ids, output_attentions=True).attentions
    assert len(att) == lm.info.n_layers == len(sess.results)
    kvalid = torch.ones(ids.shape, dtype=torch.bool)
    n = ids.shape[1]
    causal_vis = torch.ones(n, n, dtype=torch.bool).tril() if lm.info.causal else torch.ones(n, n, dtype=torch.bool)
    for layer, p in enumerate(att):
        vis = causal_vis.expand_as(p)
        ref = stats_from_probs(p.double(), vis, kvalid, CFG)
        got = sess.results[layer]
        assert_stats_close(got, ref, tol=1e-5, fields=STAT_FIELDS, where=f"{lm.info.name} layer {layer}")
        # argmax: the chosen key's weight equals the row max (ties allowed)
        chosen = p.gather(-1, got.top1_idx.unsqueeze(-1)).squeeze(-1)
        assert torch.allclose(chosen, p.amax(-1), atol=1e-5)


@pytest.mark.parametrize("kind", ["llama", "bert"])
def test_tiny_random_models_match_eager_and_sdpa(kind):
    lm = _tiny(kind)
    ids = _ids(lm, "x")
    _check_against_eager(lm, ids)
    m = lm.model
    with torch.no_grad():
        with CaptureSession():
            a = m(input_ids=ids)
        m.set_attn_implementation("sdpa")
        b = m(input_ids=ids)
        m.set_attn_implementation(ATTN_IMPL)
    key = "logits" if kind == "llama" else "last_hidden_state"
    assert torch.allclose(getattr(a, key), getattr(b, key), atol=1e-5, rtol=0)


def test_smollm2_statistics_equal_eager(smollm):
    assert (smollm.info.n_layers, smollm.info.n_heads, smollm.info.n_kv_heads) == (30, 9, 3)
    _check_against_eager(smollm, _ids(smollm, TEXTS[0]))


def test_minilm_statistics_equal_eager(minilm):
    assert (minilm.info.n_layers, minilm.info.n_heads, minilm.info.causal) == (6, 12, False)
    _check_against_eager(minilm, _ids(minilm, TEXTS[0]))


def test_smollm2_logits_unchanged(smollm):
    # fp32 noise floor: sdpa and eager themselves differ by ~2e-6 of the logit scale on this model,
    # so "unchanged" is checked relative to the logit scale.
    ids = _ids(smollm, TEXTS[0])
    m = smollm.model
    with torch.no_grad():
        with CaptureSession():
            a = m(input_ids=ids).logits
        m.set_attn_implementation("sdpa")
        b = m(input_ids=ids).logits
        m.set_attn_implementation(ATTN_IMPL)
    assert (a - b).abs().max() <= 1e-5 * b.abs().max()


@pytest.mark.parametrize("side", ["right", "left"])
@pytest.mark.parametrize("which", ["smollm", "minilm"])
def test_padded_batch_equals_unpadded_rows(which, side, request):
    lm = request.getfixturevalue(which)
    tok = lm.tokenizer
    rows = [tok(t).input_ids for t in TEXTS]
    n = max(map(len, rows))
    pad_id = tok.pad_token_id if tok.pad_token_id is not None else 0
    ids = torch.full((2, n), pad_id)
    mask = torch.zeros(2, n, dtype=torch.long)
    for b, r in enumerate(rows):
        sl = slice(0, len(r)) if side == "right" else slice(n - len(r), n)
        ids[b, sl] = torch.tensor(r)
        mask[b, sl] = 1
    kw = {"position_ids": (mask.cumsum(-1) - 1).clamp(min=0)}     # left padding keeps positions
    cfg = StatsConfig(pool_size=1)
    sess, _ = capture(lm, ids, mask, config=cfg, **kw)
    for b, r in enumerate(rows):
        single, _ = capture(lm, torch.tensor([r]), config=cfg)
        sl = slice(0, len(r)) if side == "right" else slice(n - len(r), n)
        for layer in (0, lm.info.n_layers // 2, lm.info.n_layers - 1):
            got, ref = sess.results[layer], single.results[layer]
            for name in ("entropy", "sink0", "sink_s", "top1_prob", "prev_mass", "local_mass", "exp_dist", "lse"):
                a = getattr(got, name)[b][:, sl]
                e = getattr(ref, name)[0]
                assert torch.allclose(a, e, atol=2e-5, rtol=1e-5), (which, side, layer, name)
            assert torch.allclose(got.colsum[b][:, sl], ref.colsum[0], atol=2e-5)
            assert torch.equal(got.n_queries[b][:, sl], ref.n_queries[0])
            assert torch.equal(got.top1_idx[b][:, sl] - sl.start, ref.top1_idx[0])


def test_invariants_on_real_model(smollm):
    ids = _ids(smollm, TEXTS[0])
    sess, _ = capture(smollm, ids, config=StatsConfig())
    n = ids.shape[1]
    for layer, st in sess.results.items():
        assert torch.allclose(st.colsum.sum(-1), torch.full_like(st.colsum.sum(-1), n), rtol=1e-5)
        assert (st.entropy >= -1e-6).all()
        assert (st.entropy <= torch.log(st.n_visible) + 1e-5).all()
        assert torch.allclose(st.dist_hist.sum(-1), torch.full_like(st.dist_hist.sum(-1), n), rtol=1e-5)
        assert (st.pooled_mean >= 0).all() and (st.pooled_max <= 1 + 1e-6).all()
