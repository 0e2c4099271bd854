"""Comparison helpers shared by the test files."""
import pytest
import torch

from kernels.stats_types import ROW_FIELDS

FLOAT_FIELDS = ("out", "lse", "entropy", "n_visible", "sink0", "sink_s", "top1_prob", "prev_mass",
                "local_mass", "exp_dist", "colsum", "n_queries", "pooled_mean", "pooled_max", "dist_hist",
                "maps", "retained")


def assert_stats_close(got, ref, tol=1e-5, fields=FLOAT_FIELDS, row_mask=None, where=""):
    """Every float field within tol, relative to the field's scale for large-valued ones (exp_dist,
    colsum, n_visible). row_mask [B,Nq] limits row statistics to those rows."""
    for name in fields:
        a, b = getattr(got, name), getattr(ref, name)
        if b is None:
            continue
        assert a is not None, f"{where}: {name} missing"
        a, b = a.double(), b.double()
        assert a.shape == b.shape, f"{where}: {name} shape {tuple(a.shape)} != {tuple(b.shape)}"
        if row_mask is not None and name in ROW_FIELDS:
            m = row_mask[:, None, :].expand_as(b)
            a, b = a[m], b[m]
        fin = torch.isfinite(b)
        assert torch.equal(fin, torch.isfinite(a)), f"{where}: {name} finiteness differs"
        if not fin.any():
            continue
        err = (a[fin] - b[fin]).abs().max().item()
        scale = max(1.0, b[fin].abs().max().item())
        assert err <= tol * scale, f"{where}: {name} max err {err:.3g} > {tol * scale:.3g}"


def eager_twin(lm):
    """The same weights with transformers' own eager attention (the reference for captured stats)."""
    if lm.info.source == "random":
        twin = type(lm.model)(lm.model.config)
        twin.load_state_dict(lm.model.state_dict())
        twin.set_attn_implementation("eager")
        return twin.eval()
    from transformers import AutoModel, AutoModelForCausalLM
    cls = AutoModelForCausalLM if lm.info.causal else AutoModel
    return cls.from_pretrained(lm.info.source, attn_implementation="eager", dtype=torch.float32).eval()


@pytest.fixture(scope="module", autouse=True)
def one_thread():
    """One intra-op thread for a module's small forwards: on a shared 2-core machine a second thread makes
    them several times slower. Import it into a test module to use it (autouse there)."""
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)
