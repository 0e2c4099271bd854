"""compute.generate: token probabilities against the model's own logits, the strongest non-sink key
against a brute-force reference, and bounded parameters. SmolLM2-135M, a short prompt, 4 new tokens."""
import subprocess
import sys

import numpy as np
import pytest
import torch

from compute import generate as G
from compute.errors import InputError

PROMPT = "The capital of France is"


@pytest.fixture(scope="module")
def gen(smollm):
    return G.generate_text(smollm, PROMPT, max_new_tokens=4, top_k=3)


def test_probabilities_are_the_softmax_of_the_models_logits(smollm, gen):
    ids = smollm.tokenizer(PROMPT, add_special_tokens=True)["input_ids"]
    assert gen.prompt_tokens == len(ids) and gen.new_tokens == len(gen.steps) == 4
    new = [s["token_id"] for s in gen.steps]
    for t, step in enumerate(gen.steps):
        x = torch.tensor([ids + new[:t]])
        with torch.no_grad():                    # a fresh forward over the whole prefix (no KV cache)
            logits = smollm.model(x, attention_mask=torch.ones_like(x)).logits[0, -1].float()
        p = torch.softmax(logits.double(), -1)
        assert step["prob"] == pytest.approx(float(p[step["token_id"]]), rel=2e-3, abs=1e-6)
        top_p, top_i = p.topk(3)
        assert [a["token_id"] for a in step["top"]] == top_i.tolist()
        np.testing.assert_allclose([a["prob"] for a in step["top"]], top_p.numpy(), rtol=2e-3, atol=1e-6)
        assert step["top"][0]["token_id"] == step["token_id"]          # greedy: the chosen one is the argmax
        assert step["token"] == smollm.tokenizer.decode([step["token_id"]])
    rec = gen.record()
    assert rec["steps"] == gen.steps and rec["prompt_tokens"] == gen.prompt_tokens


def test_generation_parameters_are_bounded(smollm):
    with pytest.raises(InputError, match="top-k"):
        G.generate_text(smollm, PROMPT, 2, top_k=1000)
    with pytest.raises(InputError, match="tokens to generate"):
        G.generate_text(smollm, PROMPT, 10 ** 6)
    with pytest.raises(InputError, match="tokens to generate"):
        G.generate_text(smollm, PROMPT, True)


def brute_strongest(a, q0, k0, sinks, exclude_self):
    out = []
    for r, row in enumerate(a):
        best, w = None, 0.0
        for c, v in enumerate(row):
            k = k0 + c
            if k in sinks or (exclude_self and k == q0 + r):
                continue
            if v > w:
                best, w = k, v
        out.append((best, w, sum(v for c, v in enumerate(row) if k0 + c in sinks)))
    return out


@pytest.mark.parametrize("exclude_self", [False, True])
def test_strongest_key_leaves_the_sinks_out(exclude_self):
    rng = np.random.default_rng(3)
    n, q0 = 12, 7
    a = rng.random((n - q0, n))
    a[:, 0] += 20.0                                     # a strong sink: the plain argmax is token 0 everywhere
    a[:, 5] += 4.0 * (np.arange(n - q0) % 2)            # a hidden sink on odd rows
    a[np.arange(n)[None, :] > np.arange(q0, n)[:, None]] = 0.0
    a /= a.sum(1, keepdims=True)
    got = G.strongest_keys(a, q0, sinks=(0, 5), exclude_self=exclude_self)
    ref = brute_strongest(a, q0, 0, {0, 5}, exclude_self)
    assert [(g["key"], g["query"]) for g in got] == [(r[0], q0 + i) for i, r in enumerate(ref)]
    np.testing.assert_allclose([g["weight"] for g in got], [r[1] for r in ref])
    np.testing.assert_allclose([g["sink_mass"] for g in got], [r[2] for r in ref])
    assert all(g["top_is_sink"] for g in got) and all(g["key"] not in (0, 5) for g in got)
    only_sink = G.strongest_keys(np.array([[1.0, 0.0]]), 0)                 # nothing but the sink: no key
    assert only_sink[0]["key"] is None and only_sink[0]["sink_mass"] == 1.0
    block = G.strongest_keys(a[:, 3:], q0, k_start=3, sinks=(0, 5))         # a key window that misses token 0
    assert [g["key"] for g in block] == [r[0] for r in brute_strongest(a[:, 3:], q0, 3, {0, 5}, False)]


def test_sink_positions_per_head():
    hidden = [{"index": 9, "heads": ["2.1", "3.0"]}, {"index": 4, "heads": ["0.0"]}]
    assert G.sink_positions(hidden, 2, 1) == [0, 9]
    assert G.sink_positions(hidden, 1, 1, first=4) == [0, 1, 2, 3]


def test_pure_parts_import_without_torch():
    code = "import sys, compute.generate; print('torch' in sys.modules)"
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert r.returncode == 0 and r.stdout.strip() == "False", r.stderr[-2000:]


def test_probabilities_figure_from_a_real_generation(gen):
    from visapp.figures import generation_probabilities
    fig = generation_probabilities(gen.steps, start=gen.prompt_tokens)
    np.testing.assert_allclose(np.asarray(fig.data[0].y, float), [s["prob"] for s in gen.steps], rtol=1e-6)
    assert list(fig.data[0].x) == list(range(gen.prompt_tokens, gen.prompt_tokens + gen.new_tokens))


def test_generation_stops_on_cancel_or_time_limit(smollm):
    """cancel() is checked after every generated token: Cancel and the time limit stop generation."""
    from compute.errors import Cancelled
    from compute.generate import generate_text
    from compute.limits import Deadline, TimeLimitExceeded
    calls = []

    def cancel():
        calls.append(1)
        return len(calls) >= 2
    with pytest.raises(Cancelled):
        generate_text(smollm, "Once upon a time", 30, cancel=cancel)
    assert len(calls) == 2
    with pytest.raises(TimeLimitExceeded):
        generate_text(smollm, "Once upon a time", 30, cancel=Deadline(1e-9))
