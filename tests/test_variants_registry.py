"""Variant spec parsing: canonical forms, defaults, and clear one-line errors for bad specs."""
import pytest

from compute.errors import InputError
from compute.variants import VARIANTS, list_variants, parse_spec, parse_specs, split_specs


@pytest.mark.parametrize("spec, name, params, text", [
    ("softmax", "softmax", {}, "softmax"),
    ("window:64", "window", {"w": 64}, "window:64"),
    ("sinks:4+window:64", "streaming", {"sinks": 4, "window": 64}, "sinks:4+window:64"),
    ("window:32+sinks:2", "streaming", {"sinks": 2, "window": 32}, "sinks:2+window:32"),
    ("streaming:sinks=1,window=8", "streaming", {"sinks": 1, "window": 8}, "sinks:1+window:8"),
    ("topk:32", "topk", {"k": 32}, "topk:32"),
    ("TopK:k=5", "topk", {"k": 5}, "topk:5"),
    ("toptheta:16", "toptheta", {"k": 16}, "toptheta:16"),
    ("moba:blocks=4,block=64", "moba", {"block": 64, "blocks": 4}, "moba:block=64,blocks=4"),
    ("moba", "moba", {"block": 64, "blocks": 3}, "moba:block=64,blocks=3"),
    ("xattn:tau=0.5", "xattn", {"block": 64, "stride": 8, "tau": 0.5}, "xattn:block=64,stride=8,tau=0.5"),
    ("elu", "elu", {}, "elu"),
    ("relu", "relu", {}, "relu"),
    ("performer:m=16", "performer", {"m": 16, "seed": 0}, "performer:m=16,seed=0"),
    ("efficient", "efficient", {}, "efficient"),
    ("temperature:0.5", "temperature", {"t": 0.5}, "temperature:0.5"),
    ("act", "act", {"beta": 0.4, "alpha": 5.0}, "act:beta=0.4,alpha=5"),
    ("zerotuning:gamma=1.5", "zerotuning", {"gamma": 1.5}, "zerotuning:1.5"),
])
def test_parse_canonical(spec, name, params, text):
    sp = parse_spec(spec)
    assert sp.name == name
    assert {k: v for k, v in sp.params if k in params} == params
    assert sp.text == text
    assert parse_spec(sp.text) == sp                       # canonical text round-trips


def test_hedgehog_defaults_and_types():
    sp = parse_spec("hedgehog:steps=10,lr=0.1")
    p = dict(sp.params)
    assert p["steps"] == 10 and isinstance(p["steps"], int)
    assert p["lr"] == 0.1 and isinstance(p["lr"], float)
    assert p["tokens"] == 1024 and p["budget"] == 45.0


@pytest.mark.parametrize("spec, message", [
    ("foo", "unknown variant 'foo'"),
    ("window", "window needs w"),
    ("window:abc", "w must be an integer, got 'abc'"),
    ("window:0", "w must be >= 1"),
    ("topk:3.5", "k must be an integer"),
    ("temperature:0", "t must be > 0"),
    ("temperature:nan", "t must be a number"),
    ("xattn:tau=1.5", "tau must be > 0 and <= 1"),
    ("xattn:block=64,stride=7", "stride must divide block"),
    ("moba:bogus=1", "unknown parameter 'bogus'"),
    ("elu:3", "elu takes no parameters"),
    ("topk:4,k=5", "k given twice"),
    ("window:4+topk:3", "'+' only combines sinks and window"),
    ("window:", "nothing after ':'"),
    (":4", "missing the variant name"),
    ("", "empty variant spec"),
    ("act:beta=2", "beta must be >= 0 and <= 1"),
])
def test_parse_errors(spec, message):
    with pytest.raises(InputError) as exc:
        parse_spec(spec)
    assert message in str(exc.value)
    assert "\n" not in str(exc.value)


def test_split_and_parse_lists():
    assert split_specs("moba:block=64,blocks=4,elu, window:8;topk:2") == \
        ["moba:block=64,blocks=4", "elu", "window:8", "topk:2"]
    specs = parse_specs("window:8,sinks:4+window:64,moba:block=32,blocks=2,elu,window:8")
    assert [s.text for s in specs] == ["window:8", "sinks:4+window:64", "moba:block=32,blocks=2", "elu"]
    assert [s.text for s in parse_specs(["topk:4", "elu,relu"])] == ["topk:4", "elu", "relu"]
    with pytest.raises(InputError, match="no variants given"):
        parse_specs("")


def test_registry_entries_complete():
    listed = {v["name"]: v for v in list_variants()}
    assert set(listed) == set(VARIANTS)
    for name, v in listed.items():
        assert v["description"] and v["paper"] and v["family"] in {"reference", "masking", "linear", "fitted",
                                                                     "reweight"}
        assert parse_spec(v["example"]).name == name       # every example parses to its own entry
        for p in v["params"]:
            assert p["type"] in ("int", "float")
    assert "original RoPE positions are kept" in listed["streaming"]["description"]
