"""Bad-input fuzzing of the headless CLI (issue 8 item 7) with hypothesis, on the real model.

Whatever the input, `python -m compute ...` ends with exit 0 (and its outputs) or exit 2 and one line
`error: ...` on stderr: never exit 1 (internal error), never a traceback. Most examples run in-process
through compute.cli.main (the model stays loaded); a few run the real interpreter, since only there do
undecodable argv bytes arrive as lone surrogates. Example counts are small to keep the file ~1 minute.
"""
from __future__ import annotations

import json
import os
import string
import subprocess
import sys
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings, strategies as st

from compute.cli import main as cli_main

REPO = Path(__file__).resolve().parent.parent
FUZZ = settings(max_examples=12, deadline=None, derandomize=True,
                suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow])

# any code point, control characters and lone surrogates included, with extra weight on the odd ones
odd_chars = st.sampled_from(["\x00", "\x01", "\x1b", "\x7f", "\u200b", "\u202e", "\ufeff", "\ud800", "\udcff",
                             "\U0010ffff", "\r", "\t", "\n", "\u0301", "🙂", "ﷺ", "\ufffd"])
texts = st.text(alphabet=st.one_of(st.characters(), odd_chars), min_size=0, max_size=40)


def run_main(capsys, argv) -> tuple[int, str]:
    try:
        rc = cli_main(argv)
    except SystemExit as exc:                 # argparse usage errors: exit 2 with a usage line
        rc = exc.code
    err = capsys.readouterr().err
    return rc, err


def assert_clean(rc, err, allow_ok=True):
    assert rc in ((0, 2) if allow_ok else (2,)), f"exit {rc}: {err[-500:]}"
    assert "Traceback" not in err, err[-2000:]
    assert "internal error" not in err, err[-500:]
    if rc == 2:
        last = [l for l in err.strip().splitlines() if l.strip()][-1]
        assert last.startswith(("error: ", "python -m compute")) or ": error: " in last, last


@FUZZ
@given(text=texts)
def test_random_unicode_texts(tmp_path, capsys, text):
    # the 6-layer encoder keeps each example short; the decoder runs in the raw-argv tests below
    out = tmp_path / "out"
    rc, err = run_main(capsys, ["analyze", "--model", "minilm-l6", "--text", text, "--out", str(out), "--quiet",
                                "--no-loss", "--no-analysis", "--full-map-max", "0"])
    assert_clean(rc, err)
    if rc == 0:
        report = json.loads((out / "report.json").read_text())
        assert report["meta"]["text"] == text
    elif text.strip() and "\x00" not in text:
        assert "surrogate" in err or "Unicode" in err or "no tokens" in err, err


@FUZZ
@given(path=st.one_of(texts, st.sampled_from(["../../etc/passwd", "/etc", "/dev/null", "/proc/self/mem", "~",
                                               "smollm2-135m/../..", "a" * 5000, "C:\\models\\x", "-", ".",
                                               "minilm-l6\x00", "/tmp/../tmp/nothing.gguf"])))
def test_invalid_model_paths(tmp_path, capsys, path):
    rc, err = run_main(capsys, ["analyze", "--model", path, "--text", "hello", "--out", str(tmp_path / "o"),
                                "--quiet", "--no-analysis"])
    assert_clean(rc, err, allow_ok=path.strip() in ("smollm2-135m", "minilm-l6"))


def test_invalid_model_paths_in_server_mode(tmp_path, capsys, monkeypatch):
    monkeypatch.setenv("ATTNVIS_SERVER_MODE", "1")
    for path in ("/etc", str(REPO), "../" * 8 + "etc", "/dev/zero"):
        rc, err = run_main(capsys, ["analyze", "--model", path, "--text", "hello", "--out", str(tmp_path / "o"),
                                    "--quiet", "--no-analysis"])
        assert_clean(rc, err, allow_ok=False)
        assert "allowed model directory" in err


spans = st.lists(st.lists(st.one_of(st.integers(-10**12, 10**12), st.floats(allow_nan=True), st.none(),
                                    st.text(max_size=3)), min_size=0, max_size=3), max_size=4)


@settings(FUZZ, max_examples=8)
@given(items=st.one_of(spans, st.dictionaries(st.sampled_from(["items", "query", "important", "x"]),
                                              st.one_of(spans, st.integers(), st.text(max_size=5)), max_size=3),
                       st.text(max_size=20)),
       important=st.one_of(st.none(), st.text(alphabet="0123456789,-x ", max_size=8)))
def test_invalid_item_spans(tmp_path, capsys, items, important):
    f = tmp_path / "items.json"
    f.write_text(json.dumps(items))
    argv = ["analyze", "--model", "minilm-l6", "--text", "Document [1] cats.\n\nDocument [2] dogs.\n\nWhich animal?", "--out",
            str(tmp_path / "o"), "--quiet", "--no-loss", "--items", str(f), "--no-graphs", "--no-syntax"]
    if important is not None:
        argv += ["--important", important]
    rc, err = run_main(capsys, argv)
    assert_clean(rc, err)


@FUZZ
@given(spec=st.one_of(texts, st.from_regex(r"[a-z+]{0,8}:[a-z0-9=,.+\-]{0,12}", fullmatch=True)))
def test_invalid_variant_specs(spec):
    """The variant spec parser the CLI and the app share: InputError with one line, or a parsed spec."""
    registry = pytest.importorskip("compute.variants.registry")
    from compute.errors import InputError
    try:
        registry.parse_specs(spec)
    except InputError as exc:
        assert str(exc) and "\n" not in str(exc)


def test_megabyte_text_file_is_refused_quickly(tmp_path, capsys):
    import time
    f = tmp_path / "big.txt"
    f.write_text("attention " * 120_000)                 # 1.2 MB
    t0 = time.monotonic()
    rc, err = run_main(capsys, ["analyze", "--text-file", str(f), "--out", str(tmp_path / "o"), "--quiet"])
    assert rc == 2 and err.startswith("error: ") and "characters" in err
    assert time.monotonic() - t0 < 20


@pytest.mark.parametrize("arg", [b"caf\xc3\xa9 \xff\xfe broken utf-8", b"\x1b[31mred\x1b[0m \x07 bell", b"\xed\xa0\x80"])
def test_real_interpreter_with_raw_argv_bytes(tmp_path, arg):
    """Undecodable argv bytes reach Python as lone surrogates; the real process must still exit cleanly."""
    env = dict(os.environ, PYTHONPATH=str(REPO))
    env.pop("TRITON_INTERPRET", None)
    cmd = [os.fsencode(sys.executable), b"-m", b"compute", b"analyze", b"--model", b"minilm-l6", b"--text", arg, b"--out",
           os.fsencode(str(tmp_path / "o")), b"--quiet", b"--no-analysis", b"--no-loss"]
    p = subprocess.run(cmd, cwd=REPO, env=env, capture_output=True, timeout=300)
    err = p.stderr.decode("utf-8", "replace")
    assert p.returncode in (0, 2), err[-1000:]
    assert "Traceback" not in err and "internal error" not in err, err[-1000:]
