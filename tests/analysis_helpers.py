"""Build an AttentionResult from hand-written attention maps (for the analysis metric tests)."""
import numpy as np
import torch

from compute.result import AttentionResult
from kernels import StatsConfig
from kernels.reference import stats_from_probs


def result_from_maps(A, tokens=None, causal=True, local_window=8, pool_size=1, text=None, token_ids=None):
    """A [L, H, N, N] rows summing to 1 (zeros where invisible) -> AttentionResult (lse left 0)."""
    A = np.asarray(A, dtype=np.float64)
    L, H, N, _ = A.shape
    p = torch.tensor(A)
    vis = (torch.ones(N, N, dtype=torch.bool).tril() if causal else torch.ones(N, N, dtype=torch.bool)).expand(L, H, N, N)
    kvalid = torch.ones(L, N, dtype=torch.bool)
    cfg = StatsConfig(local_window=local_window, pool_size=pool_size, full_maps=True)
    st = stats_from_probs(p, vis, kvalid, cfg)
    arr = {f: getattr(st, f).numpy() for f in ("entropy", "n_visible", "sink0", "sink_s", "top1_prob", "prev_mass",
                                              "local_mass", "exp_dist", "colsum", "n_queries", "pooled_mean",
                                              "pooled_max", "dist_hist")}
    tokens = tokens or [f"t{i}" for i in range(N)]
    return AttentionResult(
        model="hand", model_kind="causal" if causal else "encoder", causal=causal, n_layers=L, n_heads=H,
        n_kv_heads=H, tokens=tokens, token_ids=token_ids or list(range(N)), text=text or " ".join(tokens),
        options={"local_window": local_window}, backend="hand", pool=pool_size,
        lse=np.zeros((L, H, N)), top1_idx=st.top1_idx.numpy().astype(np.int32), maps=A.astype(np.float16), **arr)


def causal_rows(rng, L, H, N, boost0=0.0):
    """Random causal attention maps [L, H, N, N]; boost0 adds weight on token 0."""
    A = np.zeros((L, H, N, N))
    for i in range(N):
        w = rng.random((L, H, i + 1))
        w[..., 0] += boost0
        A[..., i, :i + 1] = w / w.sum(-1, keepdims=True)
    return A
