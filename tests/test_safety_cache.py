"""Issue 15 items 1 and 5: cache values are data (visapp.cache_codec), never pickles, and a failed write
leaves nothing behind. Real parts: a real SmolLM2 analysis, the app's real store (file-system cache and
a real redis-server), a real full file system (a 1 MiB tmpfs, root only) and Redis maxmemory."""
from __future__ import annotations

import math
import os
import pickle
import shutil
import subprocess
from dataclasses import fields

import numpy as np
import pytest

from compute.result import ARRAY_FIELDS
from visapp import cache_codec, hardening, service, state

KEY = b"k" * 32


@pytest.fixture
def fresh_store(tmp_path, monkeypatch):
    """The app's store in a fresh cache folder (file-system cache, no Redis)."""
    monkeypatch.setenv("ATTNVIS_CACHE_DIR", str(tmp_path))
    monkeypatch.delenv("REDIS_URL", raising=False)
    monkeypatch.setenv("ATTNVIS_SECRET_KEY", "test-secret")
    state.reset()
    yield state.store()
    state.reset()


@pytest.fixture(scope="module")
def result(smollm):
    from compute.options import AnalysisOptions
    from compute.pipeline import analyze as analyze_text
    return analyze_text(smollm, "The cat sat on the mat. The cat sat.", AnalysisOptions(full_map_max=64))


def same(a, b) -> bool:
    """Deep equality that also checks numpy dtypes and shapes, and treats NaN as equal to NaN."""
    if isinstance(a, np.ndarray) or isinstance(b, np.ndarray):
        return (isinstance(a, np.ndarray) and isinstance(b, np.ndarray) and a.dtype == b.dtype
                and a.shape == b.shape and np.array_equal(a, b, equal_nan=a.dtype.kind in "fc"))
    if type(a) is not type(b):
        return False
    if isinstance(a, dict):
        return a.keys() == b.keys() and all(same(a[k], b[k]) for k in a)
    if isinstance(a, (list, tuple)):
        return len(a) == len(b) and all(same(x, y) for x, y in zip(a, b))
    if isinstance(a, float) and math.isnan(a):
        return math.isnan(b)
    return a == b


# ---------------------------------------------------------------- the codec

def test_attention_result_round_trips_field_by_field(result):
    back = cache_codec.loads(cache_codec.dumps(result, KEY), KEY)
    assert type(back) is type(result)
    for f in fields(result):
        assert same(getattr(result, f.name), getattr(back, f.name)), f.name
    assert back.maps is not None and back.maps.dtype == result.maps.dtype
    back.entropy[0, 0, 0] = -1.0                    # arrays read back are writable
    assert result.entropy[0, 0, 0] != -1.0          # and are copies
    assert {k for k in ARRAY_FIELDS if getattr(result, k) is not None} <= {f.name for f in fields(back)}


def test_app_values_round_trip():
    cmp = service.Comparison(specs=["elu", "window:16"], layers=[0, 2],
                             result={"variants": {"elu": {"fidelity_mean": {"kl": 0.5}}}, "n": 3},
                             maps={("softmax", 0, 1): np.eye(3, dtype=np.float32),
                                   ("elu", 0, 1): np.ones((3, 3), np.float32)})
    zoom = {"head": [1, 2], "q0": 0, "q1": 4, "k0": 0, "k1": 4, "z": np.random.rand(4, 4).astype(np.float32)}
    odd = {"__t": "user text that looks like a tag", 3: "int key", (1, "a"): [1.5, float("nan"), float("inf")],
           "np": [np.float32(1.25), np.int64(-7), np.bool_(True)], "b": b"\x00\x01raw", "empty": np.zeros((0, 5)),
           "nested": {"t": (1, (2, 3)), "none": None}, "u": "ünïcode \ud800"[:-1], "set": {1, "a", (2, 3)},
           "strings": np.array(["tok", "ünï", ""]), "raw": np.array([b"ab", b"c"])}
    for value in (cmp, zoom, odd, 7, "text", None, [1, 2], {"probes": ["induction"], "max_tokens": 8192}):
        back = cache_codec.loads(cache_codec.dumps(value, KEY), KEY)
        if isinstance(value, service.Comparison):
            assert back.specs == value.specs and back.layers == value.layers and back.result == value.result
            assert back.maps.keys() == value.maps.keys()
            assert all(same(back.maps[k], value.maps[k]) for k in value.maps)
        else:
            assert same(back, value), value
    assert cache_codec.loads(cache_codec.dumps(np.float32(2.5), KEY), KEY).dtype == np.float32


@pytest.mark.parametrize("value", [object(), np.array([object()], dtype=object), {1: {2: lambda: 0}},
                                   pickle, type("Unregistered", (), {})()])
def test_non_data_values_are_refused_at_write(value):
    with pytest.raises(cache_codec.CodecError):
        cache_codec.dumps(value, KEY)


class _MakesFile:
    def __init__(self, path):
        self.path = path

    def __reduce__(self):                   # what an attacker's pickle does on load
        return (open, (self.path, "w"))


def test_unreadable_frames_read_as_missing(tmp_path):
    frame = cache_codec.dumps({"a": np.arange(4)}, KEY)
    ser = cache_codec.Serializer(KEY)
    assert same(ser.loads(frame), {"a": np.arange(4)})
    flipped = bytearray(frame)
    flipped[-1] ^= 1
    marker = tmp_path / "PWNED"
    old_version = frame[:4] + (cache_codec.VERSION + 1).to_bytes(2, "little") + frame[6:]
    for bad in (bytes(flipped), frame[:-3], frame[:10], b"", old_version, cache_codec.dumps({"a": 1}, b"other key"),
                pickle.dumps(_MakesFile(str(marker))), b"!" + pickle.dumps(_MakesFile(str(marker)))):
        assert ser.loads(bad) is None
        with pytest.raises(cache_codec.CodecError):
            cache_codec.loads(bad, KEY)
    assert not marker.exists(), "a pickle was executed"


def test_forged_header_cannot_name_object_dtypes():
    import json
    import struct
    header = json.dumps({"v": {"__t": "nd", "i": 0}, "a": [["|O", [1], 0, 8]]}).encode()
    body = struct.pack("<Q", len(header)) + header + b"\0" * 8
    frame = struct.pack("<4sH32s", b"ATVC", cache_codec.VERSION, cache_codec._mac(KEY, body)) + body
    with pytest.raises(cache_codec.CodecError, match="not allowed"):
        cache_codec.loads(frame, KEY)


# ---------------------------------------------------------------- the store (file system)

def test_file_store_round_trip_and_a_planted_pickle_is_not_executed(fresh_store, tmp_path, result):
    fresh_store.set("abc:core", result)
    assert fresh_store.get("abc:core").n_tokens == result.n_tokens
    path = fresh_store._b._get_filename("abc:core")
    with open(path, "rb") as f:
        raw = f.read()
    assert raw[4:8] == b"ATVC" and b"\x80\x05" not in raw[4:12]       # expiry header, then our frame
    marker = tmp_path / "PWNED"
    with open(path, "wb") as f:                                       # an attacker writes the cache file
        f.write(raw[:4] + pickle.dumps(_MakesFile(str(marker))))
    assert fresh_store.get("abc:core") is None
    assert not marker.exists(), "the planted pickle was executed"
    assert not os.path.exists(path), "the unreadable entry was not dropped"


def test_every_key_of_a_stored_result_expires(fresh_store, result, monkeypatch):
    import struct
    import time
    from copy import copy
    req = service.Request(text=result.text, max_tokens=64)
    service._store_result("ttl", req, copy(result))
    names = ["ttl:req", "ttl:core"] + [f"ttl:maps:{l}" for l in range(result.n_layers)]
    for name in names:
        with open(fresh_store._b._get_filename(name), "rb") as f:
            expires = struct.unpack("I", f.read(4))[0]
        assert 0 < expires - time.time() <= 3600 + 5, name                 # :req included (was 0: never)
    assert service.get_request("ttl") == req


# ---------------------------------------------------------------- a full disk

@pytest.fixture
def tiny_disk(tmp_path, monkeypatch):
    if os.geteuid() != 0 or not shutil.which("mount"):
        pytest.skip("mounting a tmpfs needs root")
    d = tmp_path / "tiny"
    d.mkdir()
    r = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=1m", "tmpfs", str(d)], capture_output=True, text=True)
    if r.returncode:
        pytest.skip(f"cannot mount a tmpfs here: {r.stderr.strip()}")
    monkeypatch.setenv("ATTNVIS_CACHE_DIR", str(d))
    monkeypatch.delenv("REDIS_URL", raising=False)
    monkeypatch.setenv("ATTNVIS_SECRET_KEY", "test-secret")
    state.reset()
    try:
        yield d
    finally:
        state.reset()
        subprocess.run(["umount", str(d)], check=False)


def test_full_disk_is_a_clear_error_and_leaves_nothing(tiny_disk, result):
    from copy import copy
    st = state.store()
    results = tiny_disk / "results"
    st.set("small", {"x": 1})
    with pytest.raises(hardening.StoreWriteError, match="full"):
        st.set("big", np.zeros(400_000, np.float32))              # 1.6 MB on a 1 MiB disk
    assert st.get("big") is None
    assert not list(results.glob("*.__wz_cache")), "temp files left behind"
    # a whole result: the pieces fit, the core does not -> no piece of it stays
    res = copy(result)
    res.extras = dict(res.extras, padding=np.zeros(300_000, np.float32))
    before = set(results.iterdir())
    with pytest.raises(hardening.StoreWriteError):
        service._store_result("full", service.Request(text=res.text), res)
    after = set(results.iterdir())
    assert after - before <= {results / st._b._get_filename(st._b._fs_count_file).split("/")[-1]}
    assert st.get("full:req") is None and st.get("full:maps:0") is None and st.get("full:core") is None
    assert not list(results.glob("*.__wz_cache"))
    assert hardening.user_message(hardening.StoreWriteError(hardening.STORE_FULL)).startswith("could not save")
    import sqlite3
    assert hardening.user_message(sqlite3.OperationalError("database or disk is full")) == hardening.DISK_FULL


# ---------------------------------------------------------------- Redis

@pytest.fixture(scope="module")
def redis_server(tmp_path_factory):
    from deploy_procs import REDIS_BIN, Redis
    if REDIS_BIN is None:
        pytest.skip("redis-server is not installed")
    r = Redis(tmp_path_factory.mktemp("redis"))
    yield r
    r.stop()


@pytest.fixture
def redis_store(redis_server, monkeypatch, tmp_path):
    monkeypatch.setenv("REDIS_URL", redis_server.url)
    monkeypatch.setenv("ATTNVIS_CACHE_DIR", str(tmp_path))
    monkeypatch.setenv("ATTNVIS_SECRET_KEY", "test-secret")
    state.reset()
    redis_server.client().flushall()
    yield state.store()
    redis_server.client().config_set("maxmemory", "0")
    state.reset()


def test_redis_planted_pickle_is_not_executed(redis_store, redis_server, tmp_path, result):
    r = redis_server.client()
    redis_store.set("abc:core", result)
    assert redis_store.get("abc:core").n_tokens == result.n_tokens
    assert r.get("attnvis:app:abc:core").startswith(b"ATVC")
    assert 0 < r.ttl("attnvis:app:abc:core") <= 3600
    marker = tmp_path / "PWNED"
    for planted in (b"!" + pickle.dumps(_MakesFile(str(marker))), pickle.dumps(_MakesFile(str(marker)))):
        r.set("attnvis:app:abc:core", planted)          # what someone with access to Redis writes
        assert redis_store.get("abc:core") is None
        assert not marker.exists(), "the planted pickle was executed"
        assert not r.exists("attnvis:app:abc:core"), "the unreadable entry was not dropped"


def test_redis_maxmemory_leaves_no_partial_entry(redis_store, redis_server, result):
    from copy import copy
    r = redis_server.client()
    res = copy(result)
    res.extras = dict(res.extras, padding=np.zeros(1_000_000, np.float32))     # the core is ~4 MB
    used = int(r.info("memory")["used_memory"])
    r.config_set("maxmemory-policy", "noeviction")
    r.config_set("maxmemory", str(used + 3_000_000))
    with pytest.raises(hardening.StoreWriteError, match="full"):
        service._store_result("oom", service.Request(text=res.text), res)
    assert not list(r.scan_iter("attnvis:app:oom:*")), "a partial entry was left"


def test_redis_with_a_password(tmp_path, monkeypatch, result):
    """docs/deployment.md's set-up: requirepass, the password in REDIS_URL; without it Redis refuses,
    and no message shows the password."""
    import redis as redislib

    from deploy_procs import LOOPBACK, REDIS_BIN, free_port, stop
    if REDIS_BIN is None:
        pytest.skip("redis-server is not installed")
    port, secret = free_port(), "s3cret-pass"
    proc = subprocess.Popen([REDIS_BIN, "--port", str(port), "--bind", LOOPBACK, "--save", "", "--appendonly", "no",
                             "--requirepass", secret, "--dir", str(tmp_path)], stdout=subprocess.DEVNULL)
    try:
        url = f"redis://:{secret}@{LOOPBACK}:{port}/0"
        for _ in range(100):
            try:
                redislib.Redis.from_url(url).ping()
                break
            except redislib.ConnectionError:
                import time
                time.sleep(0.05)
        with pytest.raises(redislib.AuthenticationError):
            redislib.Redis(host=LOOPBACK, port=port).get("x")            # no password: refused
        monkeypatch.setenv("REDIS_URL", url)
        monkeypatch.setenv("ATTNVIS_CACHE_DIR", str(tmp_path))
        monkeypatch.setenv("ATTNVIS_SECRET_KEY", "test-secret")
        state.reset()
        state.store().set("pw:core", result)
        assert state.store().get("pw:core").n_tokens == result.n_tokens
        from compute.tasks import _safe_url, unavailable_reason
        assert secret not in _safe_url(url)
        wrong = f"redis://:wrong@{LOOPBACK}:{port}/0"
        monkeypatch.setenv("REDIS_URL", wrong)
        state.reset()
        with pytest.raises(hardening.StoreUnavailable) as ei:
            state.store().get("pw:core")
        assert "wrong" not in str(ei.value) and secret not in str(ei.value)
        assert secret not in (unavailable_reason(url) or "") and "wrong" not in (unavailable_reason(wrong) or "")
    finally:
        state.reset()
        stop(proc)
