"""Paper export on a real SmolLM2 analysis: `python -m visapp.export` end to end (overview as SVG,
head:L.H as PDF with its data), the app's export callback as a plain function and through the Dash
server, the bundle with captions, and proof that export builds figures with the app's own view
functions (same calls, same numbers).

The first CLI run analyses a 14-token text in a subprocess; everything after reads the cached result
(ATTNVIS_CACHE_DIR of this module), so torch runs only in that subprocess.
"""
import base64
import hashlib
import json
import os
import subprocess
import sys
import xml.etree.ElementTree as ET
from pathlib import Path

import numpy as np
import pytest

ROOT = Path(__file__).resolve().parent.parent
TEXT = "The cat sat on the mat. The cat sat on the mat."
SVG_NS = "{http://www.w3.org/2000/svg}"


@pytest.fixture(scope="module")
def cache(tmp_path_factory):
    """A fresh result cache that shares the converted GGUF weights of the usual cache (converting
    them again would take minutes)."""
    from visapp import state
    base = Path(os.environ.get("ATTNVIS_CACHE_DIR") or
                Path(os.environ.get("XDG_CACHE_HOME", Path.home() / ".cache")) / "attnvis")
    (base / "gguf").mkdir(parents=True, exist_ok=True)
    d = tmp_path_factory.mktemp("export-cache")
    (d / "gguf").symlink_to(base / "gguf", target_is_directory=True)
    saved = {k: os.environ.get(k) for k in ("ATTNVIS_CACHE_DIR", "ATTNVIS_IN_JOB")}
    os.environ["ATTNVIS_CACHE_DIR"] = str(d)
    state.reset()
    yield d
    for k, v in saved.items():
        if v is None:
            os.environ.pop(k, None)
        else:
            os.environ[k] = v
    state.reset()
    from visapp import export
    export.shutdown()


@pytest.fixture(scope="module")
def text_file(tmp_path_factory):
    p = tmp_path_factory.mktemp("export-text") / "text.txt"
    p.write_text(TEXT, encoding="utf-8")
    return p


def cli(cache, *args, timeout=900):
    env = dict(os.environ, ATTNVIS_CACHE_DIR=str(cache), PYTHONPATH=str(ROOT), ATTNVIS_TORCH_THREADS="1")
    return subprocess.run([sys.executable, "-m", "visapp.export", "--quiet", *map(str, args)], cwd=ROOT, env=env,
                          capture_output=True, text=True, timeout=timeout)


@pytest.fixture(scope="module")
def overview_run(cache, text_file, tmp_path_factory):
    """CLI run 1 (analyses the text): the overview as SVG, with data and caption."""
    out = tmp_path_factory.mktemp("export-out")
    r = cli(cache, "--model", "smollm2-135m", "--text-file", text_file, "--figure", "overview", "--format", "svg",
            "--out", out / "overview.svg", "--data", out / "overview.csv", "--caption", out / "overview.caption.json")
    assert r.returncode == 0, r.stderr[-3000:]
    return out


@pytest.fixture(scope="module")
def key(overview_run):
    from visapp import service
    k = service.make_request(model="smollm2-135m", text=TEXT).key()
    assert service.is_cached(k)                       # the CLI analysed with the app's request and key
    return k


def state_for(key, view, head="3.4", **kw):
    from visapp import urlstate
    st = dict(urlstate.DEFAULTS)
    st.update(view=view, a=key, model="smollm2-135m", head=head, **kw)
    return st


def texts(svg: bytes) -> list[str]:
    root = ET.fromstring(svg.decode("utf-8"))
    return ["".join(t.itertext()).replace("\u200b", "") for t in root.iter(f"{SVG_NS}text")]


# ---------------------------------------------------------------- CLI end to end

def test_cli_overview_svg_data_and_caption(overview_run, key):
    from visapp import service
    res = service.get_result(key)
    svg = (overview_run / "overview.svg").read_bytes()
    root = ET.fromstring(svg.decode())
    assert root.get("width") == "3.3in" and not list(root.iter(f"{SVG_NS}image"))      # all vector
    words = texts(svg)
    assert "layer" in words and "head" in words and "sink mass" in words and "29" in words
    rows = (overview_run / "overview.csv").read_text().splitlines()
    assert rows[0].split(",")[:4] == ["layer", "head", "role", "sink_metric"]
    assert len(rows) == 1 + res.n_layers * res.n_heads == 271
    summ = service.summary(res)
    l, h = 17, 5
    row = rows[1 + l * res.n_heads + h].split(",")
    assert (int(row[0]), int(row[1])) == (l, h)
    assert float(row[3]) == pytest.approx(float(summ["sink_metric"][l, h]), rel=1e-5)
    cap = json.loads((overview_run / "overview.caption.json").read_text())
    assert cap["model"] == "smollm2-135m" and cap["n_tokens"] == res.n_tokens == 14
    assert cap["text_sha256"] == hashlib.sha256(TEXT.encode()).hexdigest()
    assert cap["software"]["torch"] and cap["software"]["plotly"] and cap["software"]["kaleido"]
    assert cap["analysis"]["key"] == key and cap["export"]["width_in"] == 3.3
    assert "--figure overview" in cap["reproduce"] and "--format svg" in cap["reproduce"]


def test_cli_head_pdf_with_matrix_data(cache, overview_run, key, text_file):
    from pypdf import PdfReader
    from visapp import service
    out = overview_run
    r = cli(cache, "--text-file", text_file, "--figure", "head:3.4", "--out", out / "head.pdf", "--width", "double",
            "--font", "sans", "--size", "9", "--data", out / "head.json")
    assert r.returncode == 0, r.stderr[-3000:]
    assert r.stdout.split() == [str(out / "head.pdf"), str(out / "head.json")]
    reader = PdfReader(str(out / "head.pdf"))
    assert reader.metadata.title == "layer 3 head 4"                       # not kaleido's 'Kaleido-fier'
    page = reader.pages[0]
    assert float(page.mediabox.width) == pytest.approx(6.9 * 72, rel=0.01)
    for ref in page["/Resources"]["/Font"].values():                                   # fonts embedded
        f = ref.get_object()
        desc = (f["/DescendantFonts"][0].get_object() if "/DescendantFonts" in f else f)["/FontDescriptor"]
        assert any(k in desc.get_object() for k in ("/FontFile", "/FontFile2", "/FontFile3")), f["/BaseFont"]
    assert "Sans" in " ".join(str(r.get_object()["/BaseFont"]) for r in page["/Resources"]["/Font"].values())
    text = page.extract_text()
    assert "query" in text and "cat" in text
    doc = json.loads((out / "head.json").read_text())
    m = doc["tables"]["matrix"]
    z = np.array([[np.nan if v is None else v for v in row[1:]] for row in m["rows"]], float)
    full = service.head_map(key, 3, 4)
    expect = np.where(np.tri(14, dtype=bool), full, np.nan)
    np.testing.assert_allclose(z, expect, rtol=1e-6)                               # the figure's numbers
    assert m["columns"][1] == "(0)The" and doc["provenance"]["view"]["head"] == "3.4"


def test_cli_errors_are_one_line(cache, text_file, key, capsys, monkeypatch, tmp_path):
    from visapp.export.cli import main
    monkeypatch.setenv("ATTNVIS_TORCH_THREADS", "1")
    cases = [(["--figure", "nosuch"], "unknown figure"), (["--figure", "head:x"], "head:L.H"),
             (["--format", "eps"], "format must be"), (["--dpi", "5"], "dpi"),
             (["--figure", "sinks", "--part", "nope"], "no part 'nope'"), ([], "--out"),
             (["--format", "png"], "says pdf but --format is png"),
             (["--figure", "head:99.0"], "head 99.0 does not exist")]
    for extra, msg in cases:
        args = ["--text-file", str(text_file), "--quiet"] + extra
        if extra and "--out" not in extra:
            args += ["--out", str(tmp_path / "x.pdf")]
        assert main(args) == 2, extra
        err = capsys.readouterr().err.strip()
        assert err.startswith("error: ") and msg in err and "\n" not in err, err
    assert main(["--text-file", str(tmp_path / "missing.txt"), "--out", str(tmp_path / "x.pdf")]) == 2
    assert "does not exist" in capsys.readouterr().err


# ---------------------------------------------------------------- the same figure functions as the app

def test_export_calls_the_apps_view_functions_and_shows_the_same_numbers(key, monkeypatch):
    """Spy on every view function; the app's callbacks and the export path must both go through them
    and produce the same traces (only the template differs)."""
    from visapp import export, urlstate
    from visapp.export import registry as reg
    from visapp.pages import entropy, graphs, head, model, overview, sinks
    calls = []
    for mod, name in [(overview, "render_grid"), (head, "render_map"), (head, "render_entropy"),
                      (head, "render_received"), (head, "render_token_graph"), (head, "render_deps"),
                      (sinks, "render"), (entropy, "render"), (graphs, "render_heads"), (graphs, "render_tokens"),
                      (model, "render_view")]:
        fn = getattr(mod, name)

        def spy(*a, _fn=fn, _n=f"{mod.__name__.rsplit('.', 1)[1]}.{name}", **kw):
            calls.append(_n)
            return _fn(*a, **kw)
        monkeypatch.setattr(mod, name, spy)
    expected = {"overview/grid": "overview.render_grid", "head/map": "head.render_map",
                "head/entropy": "head.render_entropy", "head/received": "head.render_received",
                "head/tokens": "head.render_token_graph", "head/deps": "head.render_deps",
                "sinks/layers": "sinks.render", "sinks/rate": "sinks.render", "sinks/map": "sinks.render",
                "entropy/map": "entropy.render", "entropy/profile": "entropy.render",
                "graphs/heads": "graphs.render_heads", "graphs/tokens": "graphs.render_tokens",
                "model/grid": "model.render_view"}
    ctx = reg.make_context(key, reg.ViewSettings(head=(3, 4)))
    opts = export.ExportOptions()
    exported = {}
    for sp in reg.all_specs():
        if sp.unavailable(ctx):
            continue
        calls.clear()
        exported[sp.name] = export.figure_of(ctx, sp, opts)[0]
        assert calls == [expected[sp.name]], (sp.name, calls)
    assert set(exported) == set(expected)
    # the app's callbacks (screen template) call the same functions and draw the same data
    calls.clear()
    app_overview = overview.render_overview(state_for(key, "overview"), "importance", "Viridis")[0]
    app_head = head.render_head(state_for(key, "head"), "max", None)
    app_sinks = sinks.render_sinks(state_for(key, "sinks"), 0.3)
    assert {"overview.render_grid", "head.render_map", "sinks.render"} <= set(calls)

    def same(a, b):
        try:
            np.testing.assert_array_equal(np.asarray(a, float), np.asarray(b, float))   # NaN == NaN
        except (TypeError, ValueError):
            np.testing.assert_array_equal(np.asarray(a, dtype=object), np.asarray(b, dtype=object))

    def data(fig):
        return [{k: v for k, v in tr.to_plotly_json().items() if k in ("x", "y", "z", "customdata", "marker")}
                for tr in fig.data]
    for ours, theirs in [(exported["overview/grid"], app_overview), (exported["head/map"], app_head[0]),
                         (exported["sinks/map"], app_sinks[2]), (exported["head/entropy"], app_head[4])]:
        assert ours.layout.template != theirs.layout.template
        a, b = data(ours), data(theirs)
        assert len(a) == len(b)
        for ta, tb in zip(a, b):
            assert ta.keys() == tb.keys()
            for k in ta:
                if k == "marker":
                    same(ta[k].get("color"), tb[k].get("color"))
                else:
                    same(ta[k], tb[k])
    assert urlstate.head_of(state_for(key, "head")) == ctx.head


# ---------------------------------------------------------------- the app's export control

def test_app_export_callback_as_a_plain_function(key):
    from visapp import export_ui, service
    st = state_for(key, "sinks")
    data, msg = export_ui.export_download("sinks", "figure", part="map", fmt="png", dpi=300, state=st,
                                          controls_={"eps": 0.5})
    assert data["filename"] == "smollm2-135m_sinks_map.png" and msg.startswith("exported")
    png = base64.b64decode(data["content"])
    assert int.from_bytes(png[16:20], "big") == 990                              # 3.3 in x 300 dpi
    data, msg = export_ui.export_download("sinks", "csv", part="map", state=st, controls_={"eps": 0.5})
    rows = base64.b64decode(data["content"]).decode().splitlines()
    assert rows[0] == "layer,head,sink_mass,flag: > 0.5"
    sm = np.asarray(service.summary(service.get_result(key))["sink_metric"], float)
    got = {(int(r.split(",")[0]), int(r.split(",")[1])): (float(r.split(",")[2]), r.split(",")[3] == "True")
           for r in rows[1:]}
    assert all(v == pytest.approx(sm[lh], rel=1e-5) and flag == (sm[lh] > 0.5) for lh, (v, flag) in got.items())
    data, msg = export_ui.export_download("graphs", "json", part="heads", state=st)
    doc = json.loads(base64.b64decode(data["content"]))
    assert set(doc["tables"]) == {"nodes", "edges"} and len(doc["tables"]["nodes"]["rows"]) == 270
    assert doc["provenance"]["figure"] == "graphs/heads"
    data, msg = export_ui.export_download("basin", "figure", part=None, state=st)
    assert msg.startswith("export failed: basin/curves: not available") and data is export_ui.no_update
    assert export_ui.export_download("head", "figure", part="map", state=None)[1] == \
        "export failed: nothing to export yet: analyse a text first"


def test_app_export_through_the_dash_server(key):
    """The head view's export callback over HTTP, as the browser calls it (no browser needed)."""
    import app as webapp
    from visapp import ids
    from visapp.export_ui import eid
    from visapp.pages import head
    c = webapp.server.test_client()
    deps = c.get("/_dash-dependencies").get_json()
    view = "head"
    output = next(d["output"] for d in deps if '"export-download"' in d["output"] and '"view":"head"' in d["output"])

    def pid(kind, prop):
        return json.dumps(eid(kind, view), sort_keys=True, separators=(",", ":")) + "." + prop
    body = {
        "output": output,
        "outputs": [{"id": eid("download", view), "property": "data"}, {"id": eid("msg", view), "property": "children"}],
        "inputs": [{"id": eid("fig", view), "property": "n_clicks", "value": 1},
                   {"id": eid("csv", view), "property": "n_clicks", "value": 0},
                   {"id": eid("json", view), "property": "n_clicks", "value": 0}],
        "changedPropIds": [pid("fig", "n_clicks")],
        "state": [{"id": eid("part", view), "property": "value", "value": "map"},
                  {"id": eid("fmt", view), "property": "value", "value": "svg"},
                  {"id": eid("width", view), "property": "value", "value": "single"},
                  {"id": eid("font", view), "property": "value", "value": "serif"},
                  {"id": eid("size", view), "property": "value", "value": 8},
                  {"id": eid("dpi", view), "property": "value", "value": 300},
                  {"id": ids.STATE, "property": "data", "value": state_for(key, "head", head="2.1")}]
        + [{"id": cid, "property": prop, "value": None} for _, cid, prop in head.EXPORT_CONTROLS],
    }
    r = c.post("/_dash-update-component", json=body)
    assert r.status_code == 200, r.get_data(as_text=True)[:500]
    resp = r.get_json()["response"]
    dl = resp[json.dumps(eid("download", view), sort_keys=True, separators=(",", ":"))]["data"]
    assert dl["filename"] == "smollm2-135m_head-L2H1_map.svg"
    svg = base64.b64decode(dl["content"])
    assert "(5) mat" in texts(svg)


# ---------------------------------------------------------------- bundle

def test_bundle_has_every_available_figure_with_data_and_caption(key, tmp_path):
    from visapp import export
    from visapp.export import registry as reg
    from visapp.export.cli import parser
    ctx = reg.make_context(key, reg.ViewSettings(head=(3, 4), eps=0.4))
    index = export.write_bundle(ctx, tmp_path, export.ExportOptions(), formats=("svg",))
    assert set(index["skipped"]) == {"basin/curves", "variants/maps", "variants/diff", "variants/bars",
                                     "generate/map", "trace/rollout", "trace/graph", "trace/lens",
                                     "trace/contributions", "trace/neuron"}     # no trace of this analysis
    assert len(index["figures"]) == len(reg.all_specs()) - len(index["skipped"]) == 14
    assert (tmp_path / "text.txt").read_text() == TEXT
    for name, files in index["figures"].items():
        for f in files:
            assert (tmp_path / f).stat().st_size > 0, f
        assert any(f.endswith(".svg") for f in files) and any(f.endswith(".data.json") for f in files)
        assert any(f.endswith(".data.csv") or f.endswith(".data.zip") for f in files)
    stem = export.file_stem(ctx, reg.spec("sinks", "map"))
    cap = (tmp_path / f"{stem}.caption.txt").read_text()
    assert hashlib.sha256(TEXT.encode()).hexdigest() in cap and "smollm2-135m" in cap and "kaleido" in cap
    prov = json.loads((tmp_path / f"{stem}.caption.json").read_text())
    args = parser().parse_args(prov["reproduce"].split()[3:])      # the command re-renders this figure
    assert (args.figure, args.part, args.eps, args.head, args.text_file) == ("sinks", "map", 0.4, "3.4", "text.txt")
    assert args.format == "svg" and args.out == f"{stem}.svg"


def test_variant_figures_export_per_variant_tables(key):
    """A real comparison (the app's run_comparison: sliding window of 4 on layer 3, 14 tokens): the
    export tables per panel carry the comparison's own maps, their difference and its e2e numbers."""
    from visapp import export, service
    from visapp.export import registry as reg
    ck = service.run_comparison(key, ["window:4"], [3], (3, 4))
    cmp = service.get_comparison(ck)
    spec = cmp.specs[0]
    soft, win = cmp.maps[("softmax", 3, 4)], cmp.maps[(spec, 3, 4)]
    full = service.head_map(key, 3, 4)
    n = full.shape[0]
    np.testing.assert_allclose(soft, full, atol=2e-3)        # same head as the analysis (stored as fp16)
    assert np.all(win[np.tri(n, k=-4, dtype=bool)] == 0)      # the window really dropped far keys
    ctx = reg.make_context(key, reg.ViewSettings(head=(3, 4)), comparison=cmp)
    maps = export.tables_of(ctx, reg.spec("variants", "maps"))
    assert len(maps) == 2 and list(maps)[0] == "softmax" and list(maps)[1].startswith("window")
    diff = export.tables_of(ctx, reg.spec("variants", "diff"))["matrix"]
    d = np.array([[np.nan if v is None else v for v in r[1:]] for r in diff.rows], float)
    np.testing.assert_allclose(d, np.where(np.tri(n, dtype=bool), win - soft, np.nan), atol=1e-6)
    bars = export.tables_of(ctx, reg.spec("variants", "bars"))["data"]
    e2e = cmp.result["variants"][spec]["e2e"]
    assert bars.rows == [[spec, pytest.approx(e2e["loss"]), pytest.approx(e2e["top1_agreement"])]]
    pdf = export.export_figure(ctx, reg.spec("variants", "maps"), export.ExportOptions(width="double")).content
    assert pdf.startswith(b"%PDF")
    no_cmp = reg.make_context(key, reg.ViewSettings(head=(3, 4)))
    from compute.errors import InputError
    with pytest.raises(InputError, match="no variant comparison"):
        export.tables_of(no_cmp, reg.spec("variants", "bars"))


# ---------------------------------------------------------------- a saved CLI analysis (--from)

def numbers(rows: list[str]) -> np.ndarray:
    """The numeric cells of CSV rows (blank = NaN, True/False = 1/0; labels skipped)."""
    out = []
    for row in rows:
        for cell in row.split(","):
            if cell in ("", "nan"):
                out.append(np.nan)
            elif cell in ("True", "False"):
                out.append(float(cell == "True"))
            else:
                try:
                    out.append(float(cell))
                except ValueError:
                    pass
    return np.array(out, float)


def test_from_a_saved_analysis_runs_no_model_and_shows_the_same_numbers(cache, overview_run, text_file, tmp_path):
    """`python -m compute analyze --out DIR`, then the model made unknown in report.json: --from DIR
    still renders (no model is loaded), with the same figure data as the export from the text."""
    env = dict(os.environ, ATTNVIS_CACHE_DIR=str(cache), PYTHONPATH=str(ROOT), ATTNVIS_TORCH_THREADS="1")
    saved = tmp_path / "saved"
    r = subprocess.run([sys.executable, "-m", "compute", "analyze", "--model", "smollm2-135m", "--text-file",
                        str(text_file), "--out", str(saved), "--quiet"], cwd=ROOT, env=env, capture_output=True,
                       text=True, timeout=900)
    assert r.returncode == 0, r.stderr[-3000:]
    report = json.loads((saved / "report.json").read_text())
    report["meta"]["model"] = "no-such-model-anywhere"
    (saved / "report.json").write_text(json.dumps(report))
    for fig in ("head:3.4", "sinks"):
        a, b = tmp_path / f"text-{fig[:4]}.csv", tmp_path / f"saved-{fig[:4]}.csv"
        r = cli(cache, "--text-file", text_file, "--figure", fig, "--out", tmp_path / "t.svg", "--data", a)
        assert r.returncode == 0, r.stderr[-3000:]
        r = cli(cache, "--from", saved, "--figure", fig, "--out", tmp_path / "s.svg", "--data", b,
                "--caption", tmp_path / "s.caption.json")
        assert r.returncode == 0, r.stderr[-3000:]
        ra, rb = a.read_text().splitlines(), b.read_text().splitlines()
        assert ra[0] == rb[0] and len(ra) == len(rb) > 1
        na, nb = numbers(ra[1:]), numbers(rb[1:])
        assert na.size > 10 and np.isfinite(na).sum() > 10
        np.testing.assert_allclose(na, nb, atol=2e-3, equal_nan=True)
        cap = json.loads((tmp_path / "s.caption.json").read_text())
        assert cap["model"] == "no-such-model-anywhere" and f"--from {saved}" in cap["reproduce"]
    # the saved folder must hold an analysis
    r = cli(cache, "--from", tmp_path, "--figure", "sinks", "--out", tmp_path / "x.svg")
    assert r.returncode == 2 and r.stderr.strip().startswith("error: --from") and "report.json" in r.stderr
