"""`python -m compute trace` end to end: trace.json's fixed fields, and one-line errors with exit code 2."""
import json
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
def run_cli(*args):
    """`python -m compute trace ...` as a user runs it."""
    env = {"OMP_NUM_THREADS": "1", "PATH": "/usr/bin:/bin", "HOME": str(Path.home()), "PYTHONPATH": str(ROOT)}
    return subprocess.run([sys.executable, "-m", "compute", "trace", *map(str, args)], cwd=ROOT, env=env,
                          capture_output=True, text=True, timeout=300)


def test_trace_json_fields(tmp_path):
    f = tmp_path / "t.txt"
    f.write_text("Paris is the capital of France. Berlin is the capital of")
    r = run_cli("--model", "smollm2-135m", "--text-file", f, "--position", 5, "--out", tmp_path / "o",
                "--neuron", "2.3.1")
    assert r.returncode == 0, r.stderr
    tr = json.loads((tmp_path / "o" / "trace.json").read_text())
    assert tr["position"] == 5 and tr["next_token"]["token"] == tr["tokens"][6]
    lens = tr["logit_lens"]
    assert len(lens) == 30 and all({"top", "next_token_rank", "next_token_prob"} <= set(r) for r in lens)
    assert lens[-1]["top"][0]["token"] == tr["prediction"]["token"]
    assert len(tr["rollout"]) == 6 and len(tr["flow"]) == 6
    assert len(tr["contributions"]) == 30 and len(tr["contributions"][0]) == 9
    total = sum(map(sum, tr["contributions"])) + tr["contribution_rest"]
    assert total == pytest.approx(tr["prediction"]["logit"], rel=1e-3)
    assert tr["neuron"]["key"] == 1 and len(tr["neuron"]["q_pre"]) == 64


@pytest.mark.parametrize("args, message", [
    (["--text", " "], "the text is empty"),
    (["--text", "hi", "--neuron", "x"], "expected LAYER.HEAD.KEY"),
    (["--text", "hi", "--model", "no-such-model"], "unknown model"),
    (["--text", "hello world", "--position", "50"], "outside the text"),
    (["--text", "hi", "--flow-max-tokens", "500"], "between 1 and 64"),
    (["--text", "hello world", "--neuron", "0.0.5", "--position", "1"], "not visible from position 1"),
    (["--text", "hello world", "--top-k", "0"], "between 1 and 1000"),
])
def test_errors_are_one_line(tmp_path, args, message):
    r = run_cli(*args, "--out", tmp_path)
    assert r.returncode == 2, r.stderr
    lines = r.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: ") and message in lines[0], r.stderr
