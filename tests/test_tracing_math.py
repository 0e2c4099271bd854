"""Rollout and flow against hand-computed small cases (no model)."""
import numpy as np
import pytest

from compute.tracing.flow import FLOW_MAX_TOKENS, attention_flow, flow_limit_reason, layer_graph
from compute.tracing.rollout import residual_mix, rollout_by_layer, rollout_edges, rollout_matrix

# Two layers, three tokens, causal head-mean maps.
A1 = np.array([[1, 0, 0], [0.5, 0.5, 0], [0.2, 0.3, 0.5]])
A2 = np.array([[1, 0, 0], [0.8, 0.2, 0], [0.6, 0.2, 0.2]])
MAPS = np.stack([A1, A2])


def test_residual_mix_by_hand():
    m = residual_mix(MAPS)
    np.testing.assert_allclose(m[0], [[1, 0, 0], [0.25, 0.75, 0], [0.1, 0.15, 0.75]])
    np.testing.assert_allclose(m[1], [[1, 0, 0], [0.4, 0.6, 0], [0.3, 0.1, 0.6]])
    # rows that do not sum to 1 (a block of rows cut from a map) are renormalised
    np.testing.assert_allclose(residual_mix(np.array([[[2.0, 0], [1, 1]]])).sum(-1), 1.0)


def test_rollout_hand_computed():
    m = residual_mix(MAPS)
    # R = Ã2 Ã1; row 2 = 0.3 [1,0,0] + 0.1 [.25,.75,0] + 0.6 [.1,.15,.75]
    r = rollout_matrix(MAPS)
    np.testing.assert_allclose(r[2], [0.385, 0.165, 0.45])
    np.testing.assert_allclose(r[1], [0.55, 0.45, 0.0])
    np.testing.assert_allclose(r.sum(-1), 1.0)
    by = rollout_by_layer(MAPS, 2)
    np.testing.assert_allclose(by[0], r[2])
    np.testing.assert_allclose(by[2], [0, 0, 1])
    np.testing.assert_allclose(by[1], m[1][2])          # one layer down: P's mixed row


def test_rollout_rows_sum_to_one_random():
    rng = np.random.default_rng(0)
    a = np.tril(rng.random((6, 9, 9)))
    a /= a.sum(-1, keepdims=True)
    by = rollout_by_layer(a, 7)
    np.testing.assert_allclose(by.sum(-1), 1.0)
    assert np.all(by[:, 8] == 0)                        # causal: nothing flows from a later token
    np.testing.assert_allclose(by[0], rollout_matrix(a)[7])


def test_rollout_edges_carry_the_layer_mass():
    by = rollout_by_layer(MAPS, 2)
    edges = rollout_edges(MAPS, by, max_edges=100)
    w = np.array([e[3] for e in edges])
    assert np.all(np.diff(w) <= 0)                     # strongest first
    for l in (1, 2):
        assert sum(e[3] for e in edges if e[0] == l) == pytest.approx(1.0)
    # edge (layer 2, token 2 <- token 1) carries v_2[2] * Ã_2[2, 1] = 0.1
    assert [2, 2, 1, pytest.approx(0.1)] in edges
    assert len(rollout_edges(MAPS, by, max_edges=3)) == 3


def test_flow_hand_computed():
    # Paths into (2, 2): from b0 cap .3, b1 cap .1, b2 cap .6 (see the module's graph definition).
    # a0: min(1,.3) + min(.25,.1) + min(.1,.6) = .5; a1: min(.75,.1) + min(.15,.6) = .25; a2: min(.75,.6) = .6
    f = attention_flow(MAPS, 2)
    np.testing.assert_allclose(f, [0.5, 0.25, 0.6], atol=1e-12)
    g = layer_graph(MAPS)
    assert g.number_of_nodes() == 9 and g[(0, 1)][(1, 2)]["capacity"] == pytest.approx(0.15)
    assert not g.has_edge((0, 2), (1, 0))              # zero weights are no edges


def test_flow_is_bounded():
    assert flow_limit_reason(FLOW_MAX_TOKENS) is None
    why = flow_limit_reason(FLOW_MAX_TOKENS + 1)
    assert str(FLOW_MAX_TOKENS + 1) in why and str(FLOW_MAX_TOKENS) in why
    with pytest.raises(ValueError):
        attention_flow(MAPS, 2, limit=2)


def test_flow_matches_networkx_default_max_flow():
    """Same values as networkx's default algorithm (preflow-push) on random causal and bidirectional maps."""
    import networkx as nx
    rng = np.random.default_rng(7)
    for a in (np.tril(rng.random((3, 7, 7)) ** 3), rng.random((2, 5, 5))):
        a /= a.sum(-1, keepdims=True)
        g = layer_graph(a)
        L, n = a.shape[0], a.shape[1]
        for P in (n - 1, 2):
            want = [nx.maximum_flow_value(g, (0, j), (L, P)) for j in range(n)]
            np.testing.assert_allclose(attention_flow(a, P), want, atol=1e-12)
