"""`python -m compute analyze` end to end, and its one-line errors on bad input."""
import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

ROOT = Path(__file__).resolve().parents[1]


def run_cli(*args, timeout=300):
    env = dict(os.environ, PYTHONPATH=str(ROOT))
    return subprocess.run([sys.executable, "-m", "compute", *args], cwd=ROOT, env=env, capture_output=True,
                          text=True, timeout=timeout)


def assert_one_line_error(proc, needle):
    assert proc.returncode == 2, proc.stderr
    lines = [l for l in proc.stderr.strip().splitlines() if l.strip()]
    assert "Traceback" not in proc.stderr
    assert lines[-1].startswith("error: ") and needle in lines[-1], proc.stderr


def test_analyze_writes_report_and_stats(tmp_path):
    text = tmp_path / "t.txt"
    text.write_text("The cat sat on the mat. The dog sat on the log.")
    out = tmp_path / "out"
    proc = run_cli("analyze", "--model", "smollm2-135m", "--text-file", str(text), "--out", str(out), "--quiet")
    assert proc.returncode == 0, proc.stderr
    rep = json.loads((out / "report.json").read_text())
    assert rep["model"] == "smollm2-135m" and rep["n_layers"] == 30 and rep["n_heads"] == 9
    assert rep["tokens"][0] == "The" and len(rep["tokens"]) == rep["n_tokens"]
    assert len(rep["heads"]) == 270
    st = np.load(out / "stats.npz")
    n = rep["n_tokens"]
    assert st["entropy"].shape == (30, 9, n) and st["maps"].shape == (30, 9, n, n)
    for rec in rep["heads"][:20]:
        l, h = rec["layer"], rec["head"]
        assert abs(rec["entropy_mean"] - st["entropy"][l, h].mean()) < 1e-5
        assert abs(rec["sink_mass_mean"] - st["sink0"][l, h, 1:].mean()) < 1e-5
        assert abs(rec["sink_metric"] - st["colsum"][l, h, 0] / st["n_queries"][l, h, 0]) < 1e-5
        assert 0 <= rec["entropy_norm_mean"] <= 1
    # round trip through AttentionResult.load
    from compute.result import AttentionResult
    res = AttentionResult.load(out)
    assert res.n_tokens == n and res.model == "smollm2-135m"


def test_help_documents_every_option():
    proc = run_cli("analyze", "--help")
    assert proc.returncode == 0
    for opt in ("--model", "--text-file", "--out", "--backend", "--device", "--max-tokens", "--sink-tokens"):
        assert opt in proc.stdout


@pytest.mark.parametrize("case,needle", [
    ("empty", "empty"), ("missing", "not found"), ("binary", "binary"), ("model", "unknown model"),
    ("latin1", "UTF-8"),
])
def test_bad_input_one_line_error(tmp_path, case, needle):
    f = tmp_path / "t.txt"
    model = "smollm2-135m"
    if case == "empty":
        f.write_text("  \n\t ")
    elif case == "binary":
        f.write_bytes(b"\x7fELF\x00\x01\x02" * 100)
    elif case == "latin1":
        f.write_bytes("caf\xe9".encode("latin-1"))
    elif case == "model":
        f.write_text("hello")
        model = "no-such-model"
    path = str(f) if case != "missing" else str(tmp_path / "nope.txt")
    proc = run_cli("analyze", "--model", model, "--text-file", path, "--out", str(tmp_path / "o"))
    assert_one_line_error(proc, needle)


def test_text_longer_than_context_is_refused(tmp_path):
    f = tmp_path / "long.txt"
    f.write_text("word " * 700)                         # > 512 positions of MiniLM
    proc = run_cli("analyze", "--model", "minilm-l6", "--text-file", str(f), "--out", str(tmp_path / "o"))
    assert_one_line_error(proc, "reads at most 512")


def test_triton_backend_without_gpu_or_interpreter_is_refused(tmp_path):
    env_free = {k: v for k, v in os.environ.items() if k != "TRITON_INTERPRET"}
    proc = subprocess.run([sys.executable, "-m", "compute", "analyze", "--text", "hi there", "--backend", "triton",
                           "--out", str(tmp_path / "o")], cwd=ROOT, env={**env_free, "PYTHONPATH": str(ROOT)},
                          capture_output=True, text=True, timeout=300)
    assert_one_line_error(proc, "backend 'triton'")


def test_triton_backend_report_equals_torch(tmp_path):
    """The Triton kernels (CPU interpreter here) and the torch path give the same report numbers."""
    reports = {}
    for backend in ("torch", "triton"):
        proc = run_cli("analyze", "--text", "Sinks form on the first token of short texts.", "--backend", backend,
                       "--out", str(tmp_path / backend), "--quiet")        # TRITON_INTERPRET=1 via conftest
        assert proc.returncode == 0, proc.stderr
        reports[backend] = json.loads((tmp_path / backend / "report.json").read_text())
    a, b = reports["torch"], reports["triton"]
    assert b["backend"] == "triton" and a["tokens"] == b["tokens"]
    for ra, rb in zip(a["heads"], b["heads"]):
        for key, va in ra.items():
            if isinstance(va, float):
                assert abs(va - rb[key]) <= 1e-4, (ra["layer"], ra["head"], key)


@pytest.mark.parametrize("args,needle", [
    (["--sink-tokens", "1000000000"], "sink count must be between 1 and 64, got 1000000000 (--sink-tokens)"),
    (["--pool-cells", "1000000000"], "pool cells must be between 2 and 1,024, got 1000000000 (--pool-cells)"),
    (["--full-map-max", "-1"], "full map max must be between 0 and 8,192, got -1 (--full-map-max)"),
    (["--local-window", "0"], "local window must be between 1"),
    (["--graph-knn", "100000"], "graph knn must be between 1 and 64, got 100000 (--graph-knn)"),
])
def test_out_of_range_options_fail_before_any_model_loads(tmp_path, args, needle):
    import time
    text = tmp_path / "t.txt"
    text.write_text("A short text.")
    t0 = time.monotonic()
    # an unknown model: had the options not been checked first, the error would name the model
    proc = run_cli("analyze", "--model", "no-such-model", "--text-file", str(text), "--out", str(tmp_path / "o"), *args)
    assert_one_line_error(proc, needle)
    assert time.monotonic() - t0 < 10


def test_out_naming_an_existing_file_fails_before_the_analysis(tmp_path):
    text = tmp_path / "t.txt"
    text.write_text("A short text.")
    out = tmp_path / "taken"
    out.write_text("not a folder")
    proc = run_cli("analyze", "--model", "no-such-model", "--text-file", str(text), "--out", str(out))
    assert_one_line_error(proc, "a file of that name exists")
    assert out.read_text() == "not a folder"


def test_compare_layer_ranges_are_bounded_before_expanding(tmp_path):
    import time
    text = tmp_path / "t.txt"
    text.write_text("A short text.")
    t0 = time.monotonic()
    proc = run_cli("compare", "--model", "no-such-model", "--text-file", str(text), "--out", str(tmp_path / "o"),
                   "--variants", "window:4", "--layers", "0-100000000")
    assert_one_line_error(proc, "out of range")
    assert time.monotonic() - t0 < 10
