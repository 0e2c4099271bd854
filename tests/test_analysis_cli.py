"""`python -m compute analyze` with the analysis flags, end to end, and its one-line errors."""
import json

import pytest

from tests.test_cli_analyze import assert_one_line_error, run_cli

DOCS = ("Use the notes to answer.\n\nDocument [1] The red kite nests in tall oaks.\n"
        "Document [2] Barn owls hunt over open fields at night.\nDocument [3] Herons wait in shallow water.\n"
        "Document [4] Swifts sleep while flying.\n\nQuestion: Which bird nests in oaks?\nAnswer:")


def test_cli_writes_analysis_sections(tmp_path):
    (tmp_path / "t.txt").write_text(DOCS)
    out = tmp_path / "out"
    proc = run_cli("analyze", "--text-file", str(tmp_path / "t.txt"), "--out", str(out), "--quiet",
                   "--items", "auto", "--important", "0", "--calibration", "self", "--probes", "induction",
                   "--importance", "--ablation-layers", "0", "--role-threshold", "sink=0.6")
    assert proc.returncode == 0, proc.stderr
    rep = json.loads((out / "report.json").read_text(), parse_constant=lambda c: pytest.fail(f"{c} in JSON"))
    for key in ("sinks", "entropy", "roles", "graphs", "basin", "probes", "importance", "syntax"):
        assert key in rep, key
    assert rep["roles"]["thresholds"]["sink"] == 0.6
    heads = rep["heads"]
    assert len(heads) == 270 and all("role" in h and "induction" in h["role_scores"] for h in heads)
    assert all("ablation_delta" in h for h in heads if h["layer"] == 0)
    assert not any("ablation_delta" in h for h in heads if h["layer"] == 1)
    assert all(h["importance"] >= 0 for h in heads)
    b = rep["basin"]
    assert [it["label"][:12] for it in b["items"]] == [f"Document [{k}]" for k in range(1, 5)]
    assert b["sum_check"] < 1e-5 and b["ranking"]["suggested_order"][0] in (0, 1, 2, 3)
    assert max(h["role_scores"]["induction"] for h in heads) > 0.3


def _settings(*args):
    from compute.cli.analysis_args import settings_from_args
    from compute.cli import build_parser
    a = build_parser().parse_args(["analyze", "--text", "x", "--out", "o", *args])
    return settings_from_args(a) if a.analysis else None


def test_flags_map_to_settings():
    s = _settings("--items", "auto", "--important", "2,0", "--probes", "induction,retrieval", "--importance",
                  "--no-ablation", "--role-threshold", "local=0.7", "--no-syntax", "--graph-source", "received")
    assert s.items == "auto" and s.important_items == (2, 0) and s.probes == ("induction", "retrieval")
    assert s.importance and not s.ablation and s.role_thresholds["local"] == 0.7 and not s.syntax
    assert s.role_thresholds["sink"] == 0.5 and s.graph_source == "received"
    assert _settings("--no-analysis") is None


@pytest.mark.parametrize("args,needle", [
    (["--items", "missing.json"], "items file not found"),
    (["--role-threshold", "sinky=0.2"], "--role-threshold expects ROLE=VALUE"),
    (["--role-threshold", "sink=abc"], "is not a number"),
    (["--probes", "induction,needle"], "unknown probe"),
    (["--important", "1"], "--important needs --items"),
    (["--important", "a"], "comma-separated integers"),
    (["--sink-eps", "1.5"], "sink eps must be between 0 and 1, got 1.5 (--sink-eps)"),
])
def test_bad_analysis_flags(args, needle):
    from compute.errors import InputError
    with pytest.raises(InputError) as exc:
        _settings(*args)
    assert needle in str(exc.value)


def test_cli_bad_flag_is_one_line_error(tmp_path):
    proc = run_cli("analyze", "--text", "Some text.", "--out", str(tmp_path / "o"), "--quiet", "--probes", "needle")
    assert_one_line_error(proc, "unknown probe")


def test_item_spans_are_checked_before_the_model_loads(tmp_path):
    from compute.cli.analysis_args import settings_from_args
    from compute.cli import build_parser
    from compute.errors import InputError
    spec = tmp_path / "items.json"
    spec.write_text(json.dumps({"items": [[0, 5], [6, 10]]}))
    a = build_parser().parse_args(["analyze", "--text", "x", "--out", "o", "--items", str(spec), "--important", "2"])
    with pytest.raises(InputError, match="important item 2 is not an item"):
        settings_from_args(a, "0123456789 and a question")
    a = build_parser().parse_args(["analyze", "--text", "x", "--out", "o", "--items", "auto"])
    with pytest.raises(InputError, match="could not find items"):
        settings_from_args(a, "one paragraph")


def test_cli_items_overlap_error(tmp_path):
    spec = tmp_path / "items.json"
    spec.write_text(json.dumps({"items": [[0, 12], [8, 20]]}))
    proc = run_cli("analyze", "--text", "Alpha beta gamma delta epsilon zeta eta.", "--out", str(tmp_path / "o"),
                   "--quiet", "--items", str(spec), "--no-roles", "--no-graphs")
    assert_one_line_error(proc, "overlap")
