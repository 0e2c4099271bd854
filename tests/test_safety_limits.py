"""Issue 15 item 2: work a browser (or a CLI user) asks for is bounded on the server: variant parameter
caps, the zoom window, the number of variants and the comparison's time limit, and the AUTORUN store
validated like the input panel. Real SmolLM2, the app's real store in a tmp folder."""
from __future__ import annotations

import subprocess
import sys
import time
from copy import copy

import numpy as np
import pytest

from compute.errors import InputError
from compute.limits import TimeLimitExceeded
from compute.variants.registry import parse_spec
from visapp import service, state


@pytest.mark.parametrize("spec, message", [
    ("performer:m=100000000", "m must be >= 1 and <= 4096, got 100000000 (the cap"),
    ("hedgehog:steps=100000000", "steps must be >= 1 and <= 2000, got 100000000 (the cap"),
    ("hedgehog:tokens=99999999", "tokens must be >= 2 and <= 8192"),
    ("hedgehog:budget=1e9", "budget must be >= 0 and <= 600"),
    ("temperature:inf", "t must be finite"),
    ("temperature:-inf", "t must be finite"),
    ("temperature:1e300", "t must be > 0 and <= 1000000"),
    ("window:99999999999", "w must be >= 1 and <= 1048576"),
    ("topk:10000000", "k must be >= 1 and <= 1048576"),
    ("moba:block=64,blocks=99999999", "blocks must be >= 0 and <= 1048576"),
    ("zerotuning:inf", "gamma must be finite"),
])
def test_variant_parameters_are_capped(spec, message):
    with pytest.raises(InputError, match=message.replace("(", r"\(")):
        parse_spec(spec)


def test_every_variant_parameter_has_a_cap():
    from compute.variants.registry import VARIANTS
    uncapped = [f"{v.name}:{p.name}" for v in VARIANTS.values() for p in v.params if p.hi is None]
    assert uncapped == []
    for v in VARIANTS.values():                 # the examples and the defaults stay valid
        parse_spec(v.example)


@pytest.mark.parametrize("spec", ["performer:m=100000000", "hedgehog:steps=100000000", "temperature:inf"])
def test_cli_compare_rejects_capped_variants_before_loading_a_model(tmp_path, spec):
    t0 = time.monotonic()
    r = subprocess.run([sys.executable, "-m", "compute", "compare", "--text", "a short text", "--variants", spec,
                        "--out", str(tmp_path / "out")], capture_output=True, text=True, timeout=60)
    assert r.returncode == 2, r.stderr[-500:]
    lines = [l for l in r.stderr.strip().splitlines() if l.strip()]
    assert len(lines) == 1 and lines[0].startswith("error: ") and "Traceback" not in r.stderr
    assert time.monotonic() - t0 < 10


# ---------------------------------------------------------------- the app's jobs

@pytest.fixture(scope="module")
def analysed(smollm, tmp_path_factory):
    """A real analysis in the app's store (file-system cache in a tmp folder); its key."""
    import os
    from compute.options import AnalysisOptions
    from compute.pipeline import analyze as analyze_text
    d = tmp_path_factory.mktemp("store")
    old = {k: os.environ.get(k) for k in ("ATTNVIS_CACHE_DIR", "REDIS_URL", "ATTNVIS_SECRET_KEY")}
    os.environ.update(ATTNVIS_CACHE_DIR=str(d), ATTNVIS_SECRET_KEY="limits-test")
    os.environ.pop("REDIS_URL", None)
    state.reset()
    text = "The cat sat on the mat. " * 12
    req = service.Request(text=text, max_tokens=512)
    res = analyze_text(smollm, text, AnalysisOptions(full_map_max=0))
    service._store_result(req.key(), req, res)
    yield req.key(), res
    state.reset()
    for k, v in old.items():
        if v is None:
            os.environ.pop(k, None)
        else:
            os.environ[k] = v


@pytest.mark.parametrize("window, message", [
    ((0, 0, 0, 1501, 0, 1501), "inside the text"),        # the forged 1501 x 1501 block of the issue
    ((0, 0, 0, 60, 0, 60), "at most 42 x 42"),            # wider than zoom_span (85 tokens: 42)
    ((0, 0, -5, 10, 0, 10), "inside the text"),
    ((0, 0, 10, 5, 0, 10), "inside the text"),
    ((0, 0, 0, 10, 0, 10_000), "inside the text"),
    ((99, 0, 0, 10, 0, 10), "no head 99.0"),
    ((0, 99, 0, 10, 0, 10), "no head 0.99"),
    ((0, 0, "a", 10, 0, 10), "whole numbers"),
    ((0, 0, 0.5, 10, 0, 10), "whole numbers"),
    ((0, 0, None, 10, 0, 10), "whole numbers"),
])
def test_zoom_window_is_checked_on_the_server(analysed, window, message):
    key, res = analysed
    with pytest.raises(InputError, match=message):
        service.compute_zoom(key, *window)
    assert not list(state.store()._b._list_dir()) or state.store().get(f"{key}:qk:0") is None


def test_a_valid_zoom_is_exact(analysed, smollm):
    key, res = analysed
    span = service.zoom_span(res.n_tokens)
    zk = service.compute_zoom(key, 2, 3, 8, 8 + span, 0, span)
    z = service.get_zoom(zk)["z"]
    assert z.shape == (span, span)
    from compute.ondemand import head_block, layer_qk
    ref = head_block(layer_qk(smollm, res.token_ids, 2), 3, 8, 8 + span, 0, span)
    np.testing.assert_allclose(z, ref, atol=1e-6)
    rows = z.sum(axis=1)                                           # a causal row's mass inside [0, span)
    assert np.all(rows <= 1 + 1e-5) and np.all(z >= 0)


def test_comparison_is_bounded(analysed, monkeypatch):
    key, res = analysed
    with pytest.raises(InputError, match="at most 8 variants"):
        service.run_comparison(key, [f"window:{w}" for w in range(1, 11)], [0], (0, 0))
    with pytest.raises(InputError, match="cap"):
        service.run_comparison(key, ["hedgehog:steps=100000000"], [0], (0, 0))
    with pytest.raises(InputError, match="no head"):
        service.run_comparison(key, ["elu"], [0], (0, 99))
    monkeypatch.setenv("ATTNVIS_TIME_LIMIT_S", "0.05")
    t0 = time.monotonic()
    with pytest.raises(TimeLimitExceeded, match="ATTNVIS_TIME_LIMIT_S"):
        service.run_comparison(key, ["hedgehog:steps=2000"], None, (0, 0))
    assert time.monotonic() - t0 < 30


@pytest.mark.parametrize("forged, message", [
    ({"text": "hi", "sink_tokens": 10**9}, "sink count"),
    ({"text": "hi", "max_tokens": 10**12}, "max tokens"),
    ({"text": "hi", "items": "xyz"}, "items must be one of"),
    ({"text": "hi", "probes": ["rm -rf"]}, "unknown probe"),
    ({"text": "hi", "generate": 10**6}, "tokens to generate"),
    ({"text": "hi", "model": "/etc"}, ""),
    ({"text": ""}, "the text is empty"),
])
def test_forged_autorun_store_is_validated(forged, message):
    import app  # noqa: F401  (registers the callbacks)
    from visapp import callbacks, ids
    out = callbacks.analysis_job(lambda v: None, None, None, {"request": forged}, *([None] * 9),
                                 trigger=ids.AUTORUN)
    box = str(out[1])
    assert "Error" in box and message in box, box
    assert out[0] is not None and "key" not in str(out[0])


def test_a_link_older_than_the_ttl_says_why(analysed):
    """Every key expires (:req included): a link whose request is gone says in one line why it cannot
    be re-run, instead of silently showing another analysis or an endless spinner."""
    import app  # noqa: F401
    from visapp import callbacks
    from visapp.pages.common import NOT_STORED
    key, _ = analysed
    gone = "0123456789abcdef01234567"
    assert service.get_request(gone) is None and service.get_request(key) is not None
    autorun, note = callbacks.boot("/overview", f"?a={gone}", None)
    assert autorun is callbacks.no_update and NOT_STORED in str(note)
