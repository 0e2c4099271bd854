"""Settings, limits and model-loading rules (issue 8 item 3) on the real SmolLM2 model and real folders.

The model is loaded once for the module; the small local models are random-init Llamas written to
tmp folders with the real tokenizer, which is what an operator's model directory holds.
"""
from __future__ import annotations

import json
import os
import threading
import time
from pathlib import Path

import numpy as np
import pytest
import torch

from compute import limits, settings

from compute.options import AnalysisOptions
from compute.pipeline import analyze as analyze_text
from compute.errors import Cancelled, InputError, ModelNotFound
from compute.models import load_model

REPO = Path(__file__).resolve().parent.parent


@pytest.fixture(scope="module")
def lm():
    return load_model("smollm2-135m")


@pytest.fixture
def env(monkeypatch):
    """Settings come from the environment; start each test from the defaults."""
    for s in settings.SETTINGS:
        monkeypatch.delenv(s.name, raising=False)
    return monkeypatch


def words(n: int) -> str:
    return " ".join(f"word{i % 37} is here" for i in range(n))


# ---------------------------------------------------------------- settings

def test_every_setting_parses_its_default_and_is_documented(env):
    values = settings.current()
    assert set(values) == {s.name for s in settings.SETTINGS}
    for s in settings.SETTINGS:
        assert s.doc and s.doc.endswith((".", ")")), s.name
    assert values["ATTNVIS_MODEL_DIRS"] == [] and values["ATTNVIS_SERVER_MODE"] is False
    assert values["ATTNVIS_MAX_TOKENS"] == 8192 and values["REDIS_URL"] == ""
    assert values["ATTNVIS_CACHE_DIR"].endswith("attnvis")


def test_docs_settings_md_is_generated_from_the_code():
    doc = (REPO / "docs" / "settings.md").read_text()
    assert settings.render_markdown() in doc, "regenerate: python -m compute.settings > docs/settings.md"


@pytest.mark.parametrize("name,raw", [("ATTNVIS_MAX_TOKENS", "many"), ("ATTNVIS_MAX_TOKENS", "-3"),
                                      ("ATTNVIS_SERVER_MODE", "maybe"), ("ATTNVIS_TIME_LIMIT_S", "nan"),
                                      ("ATTNVIS_DEVICE", "tpu"), ("ATTNVIS_MODEL_DIRS", "relative/dir")])
def test_bad_setting_names_the_variable(env, name, raw):
    env.setenv(name, raw)
    with pytest.raises(settings.SettingError, match=name):
        settings.get(name)


def test_model_dirs_drop_empty_entries_and_resolve(env, tmp_path):
    real = tmp_path / "models"
    real.mkdir()
    link = tmp_path / "link"
    link.symlink_to(real)
    env.setenv("ATTNVIS_MODEL_DIRS", f"{os.pathsep}{link}{os.pathsep}{os.pathsep}")
    # an empty entry would resolve to the current directory and allow everything under it
    assert settings.get("ATTNVIS_MODEL_DIRS") == [str(real.resolve())]


# ---------------------------------------------------------------- text size and tokens

def test_text_size_limit(env):
    env.setenv("ATTNVIS_MAX_TEXT_CHARS", "1000")
    limits.check_text_size("x" * 1000)
    with pytest.raises(InputError, match="1,001 characters.*ATTNVIS_MAX_TEXT_CHARS"):
        limits.check_text_size("x" * 1001)


def test_token_cap_applies_to_requested_options(env, lm):
    env.setenv("ATTNVIS_MAX_TOKENS", "16")
    assert limits.limited_options(AnalysisOptions(max_tokens=8192)).max_tokens == 16
    with pytest.raises(InputError, match="the limit is 16"):
        analyze_text(lm, words(20))


# ---------------------------------------------------------------- memory

def test_estimate_parts_by_hand():
    d = limits.ModelDims(n_layers=2, n_heads=3, n_kv_heads=1, head_dim=4, hidden=12, intermediate=32, vocab=10,
                         weight_bytes=1000)
    e = limits.estimate_memory(d, 8, full_map_max=8, pool_cells=4, mem_budget_mb=1)
    assert e.maps == 2 * 3 * 64 * (4 + 2 + 2) + 3 * 64 * 4         # fp32 + fp16 + fp16 copies + one layer
    assert e.activations == 4 * 8 * (6 * 12 + 2 * 5 * 4 + 3 * 32)
    assert e.stats_transient == 2 * (2 * 3 * 64 * 4)                # below the 1 MiB budget
    # per layer and head: 8 rows x (9 fp32 + int64), 2 fp32 columns, pool 2 -> 4x4 mean + max, 17 bins;
    # x 3 heads x 2 layers x 2 copies (torch results, stacked numpy)
    assert e.statistics == 2 * 2 * 3 * (8 * 44 + 2 * 8 * 4 + 2 * 16 * 4 + 17 * 4) == 7344
    assert e.loss == 2 * 8 * 10 * 4 + 8 * 12 * 4
    assert e.total == e.weights + e.work
    big = limits.estimate_memory(d, 9, full_map_max=8, pool_cells=4, mem_budget_mb=1)
    assert big.maps == 0                                             # past full_map_max no dense maps
    long = limits.estimate_memory(d, 100_000, full_map_max=8, mem_budget_mb=1)
    assert long.stats_transient == 2 * (1 << 20)                     # capped by the chunk budget


def _peak_rss_during(fn):
    import psutil
    proc = psutil.Process()
    base = proc.memory_info().rss
    peak = [base]
    done = threading.Event()

    def sample():
        while not done.is_set():
            peak[0] = max(peak[0], proc.memory_info().rss)
            time.sleep(0.002)

    t = threading.Thread(target=sample, daemon=True)
    t.start()
    try:
        out = fn()
    finally:
        done.set()
        t.join()
    return out, peak[0] - base


_PEAK_SCRIPT = """
import gc, json, sys
sys.path.insert(0, {root!r})
from compute.options import AnalysisOptions
from compute.pipeline import analyze
from compute.models import load_model
from tests.test_deploy_limits import _peak_rss_during
lm = load_model("smollm2-135m")
analyze(lm, "warm up", AnalysisOptions())
gc.collect()
res, grown = _peak_rss_during(lambda: analyze(lm, {text!r}, AnalysisOptions(full_map_max=1024)))
print(json.dumps({{"grown": grown, "n": res.n_tokens, "maps": res.maps is not None}}))
"""


def test_estimate_bounds_the_measured_peak(env, lm):
    """The estimate is an upper bound of the real growth of the process, and not a wild one. Measured in
    a fresh process: in the test session's own, memory freed by earlier tests is reused and hides growth."""
    import json
    import subprocess
    import sys
    from pathlib import Path
    root = str(Path(__file__).resolve().parents[1])
    text = words(90)
    out = subprocess.run([sys.executable, "-c", _PEAK_SCRIPT.format(root=root, text=text)], capture_output=True,
                         text=True, timeout=600, cwd=root)
    assert out.returncode == 0, out.stderr[-2000:]
    got = json.loads(out.stdout.strip().splitlines()[-1])
    n, grown = got["n"], got["grown"]
    est = limits.estimate_memory(limits.ModelDims.of(lm), n, full_map_max=1024)
    assert got["maps"] and est.maps > 0
    assert grown <= est.work, f"{n} tokens: grew {grown >> 20} MiB > estimate {est.work >> 20} MiB"
    assert est.work <= 6 * max(grown, 64 << 20), f"estimate {est.work >> 20} MiB vs {grown >> 20} MiB measured"


def test_refuses_work_that_does_not_fit_before_computing(env, lm):
    env.setenv("ATTNVIS_MEMORY_LIMIT_MB", "64")
    calls = []
    t0 = time.monotonic()
    with pytest.raises(limits.ResourceLimit) as ei:
        analyze_text(lm, words(90), AnalysisOptions(full_map_max=1024), progress=lambda f, m: calls.append(m))
    msg = str(ei.value)
    assert "needs about" in msg and "ATTNVIS_MEMORY_LIMIT_MB" in msg and "maps" in msg and "\n" not in msg
    assert not any(m.startswith("layer") for m in calls), "refused only after computing layers"
    assert time.monotonic() - t0 < 5
    # the same text without dense maps fits
    env.setenv("ATTNVIS_MEMORY_LIMIT_MB", "2048")
    analyze_text(lm, words(10), AnalysisOptions(full_map_max=0, compute_loss=False))


def test_available_memory_is_plausible():
    import psutil
    a = limits.available_memory()
    assert 0 < a <= psutil.virtual_memory().total


# ---------------------------------------------------------------- time

def test_time_limit_stops_between_layers(env, lm):
    seen = []
    t0 = time.monotonic()
    with pytest.raises(limits.TimeLimitExceeded, match="time limit of 0.01 s"):
        analyze_text(lm, words(30), AnalysisOptions(compute_loss=False), time_limit_s=0.01,
                               progress=lambda f, m: seen.append(m))
    layers_done = [m for m in seen if m.startswith("layer")]
    assert len(layers_done) < lm.info.n_layers, "the deadline was not checked after every layer"
    assert issubclass(limits.TimeLimitExceeded, Cancelled)
    # an outer cancel flag still works through the deadline
    with pytest.raises(Cancelled):
        analyze_text(lm, words(5), time_limit_s=100, cancel=lambda: True)
    assert time.monotonic() - t0 < 60


def test_hard_time_limit_interrupts_stuck_code():
    t0 = time.monotonic()
    with pytest.raises(limits.TimeLimitExceeded, match="hard time limit"):
        with limits.hard_time_limit(0.3):
            time.sleep(10)
    assert time.monotonic() - t0 < 3
    # the alarm is cleared afterwards
    time.sleep(0.4)


def test_hard_time_limit_is_a_no_op_off_the_main_thread():
    out = []

    def body():
        with limits.hard_time_limit(0.05):
            time.sleep(0.2)
        out.append("finished")

    t = threading.Thread(target=body)
    t.start()
    t.join()
    assert out == ["finished"]


# ---------------------------------------------------------------- model loading rules

@pytest.fixture(scope="module")
def model_dirs(tmp_path_factory, lm):
    """allowed/{good (safetensors), pickled (.bin only), remote (auto_map code)}, outside/good, and a
    symlink inside allowed/ that points outside."""
    from transformers import LlamaConfig, LlamaForCausalLM

    root = tmp_path_factory.mktemp("models")
    cfg = LlamaConfig(vocab_size=len(lm.tokenizer), hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                      num_attention_heads=2, num_key_value_heads=1, max_position_embeddings=256)
    torch.manual_seed(0)
    model = LlamaForCausalLM(cfg)

    def write(folder: Path, pickled=False):
        folder.mkdir(parents=True)
        if pickled:
            cfg.save_pretrained(folder)
            torch.save(model.state_dict(), folder / "pytorch_model.bin")
        else:
            model.save_pretrained(folder)
        lm.tokenizer.save_pretrained(folder)
        return folder

    allowed = root / "allowed"
    good = write(allowed / "good")
    pickled = write(allowed / "pickled", pickled=True)
    outside = write(root / "outside" / "good")
    (allowed / "escape").symlink_to(outside, target_is_directory=True)
    remote = write(allowed / "remote")
    marker = root / "REMOTE_CODE_RAN"
    conf = json.loads((remote / "config.json").read_text())
    conf.update(model_type="evilllama", auto_map={"AutoConfig": "evil.EvilConfig",
                                                  "AutoModelForCausalLM": "evil.EvilModel"})
    (remote / "config.json").write_text(json.dumps(conf))
    (remote / "evil.py").write_text(f"open({str(marker)!r}, 'w').write('ran')\n")
    return {"root": root, "allowed": allowed, "good": good, "pickled": pickled, "outside": outside,
            "remote": remote, "marker": marker}


@pytest.fixture
def server(env, model_dirs):
    env.setenv("ATTNVIS_SERVER_MODE", "1")
    env.setenv("ATTNVIS_MODEL_DIRS", str(model_dirs["allowed"]))
    return model_dirs


def test_server_mode_loads_registry_and_allowed_folders(server, lm):
    assert limits.load_model_limited("smollm2-135m") is lm
    small = limits.load_model_limited(str(server["good"]))
    assert small.info.n_layers == 2
    res = analyze_text(small, "a small model in an allowed folder")
    assert res.n_layers == 2 and np.isfinite(res.entropy).all()


@pytest.mark.parametrize("ref", ["outside", "dotdot", "escape", "etc", "home"])
def test_server_mode_refuses_paths_outside_the_allowed_folders(server, ref):
    path = {"outside": str(server["outside"]),
            "dotdot": str(server["allowed"]) + "/../outside/good",
            "escape": str(server["allowed"] / "escape"),          # symlink inside, target outside
            "etc": "/etc", "home": "~"}[ref]
    with pytest.raises(ModelNotFound, match="not in the registry .* nor inside an allowed model directory"):
        limits.load_model_limited(path)


def test_server_mode_without_model_dirs_allows_only_the_registry(env, model_dirs):
    env.setenv("ATTNVIS_SERVER_MODE", "1")
    with pytest.raises(ModelNotFound, match="allowed model directory"):
        limits.load_model_limited(str(model_dirs["good"]))


def test_local_mode_loads_any_folder(env, model_dirs):
    assert limits.load_model_limited(str(model_dirs["outside"])).info.n_layers == 2


@pytest.mark.parametrize("ref,match", [("", "no model given"), ("   ", "no model given"),
                                       ("smollm2\x00-135m", "control characters"),
                                       ("a\nb", "control characters"), ("x" * 5000, "5,000 characters"),
                                       ("/nonexistent/dir/model", "not in the registry"),
                                       ("a" * 300 + "/" + "b" * 300, "not in the registry")])
def test_bad_model_refs_are_clear_errors(server, ref, match):
    with pytest.raises(ModelNotFound, match=match):
        limits.load_model_limited(ref)


def test_pickle_weights_need_the_operator(server):
    with pytest.raises(ModelNotFound, match="pickle .bin weights are refused"):
        limits.load_model_limited(str(server["pickled"]))

def test_pickle_weights_load_when_the_operator_allows(server, env):
    env.setenv("ATTNVIS_ALLOW_PICKLE", "1")
    assert limits.load_model_limited(str(server["pickled"])).info.n_layers == 2


def test_remote_code_never_runs(server):
    with pytest.raises(ModelNotFound):
        limits.load_model_limited(str(server["remote"]))
    assert not server["marker"].exists(), "the model folder's Python code was executed"


def test_device_auto_uses_accelerate_placement(env, model_dirs):
    small = load_model(str(model_dirs["good"]), device="auto")
    assert small.device == ("cuda:0" if torch.cuda.is_available() else "cpu")
    assert all(p.device.type == small.device.split(":")[0] for p in small.model.parameters())
    res = analyze_text(small, "device map auto")
    assert res.n_layers == 2
