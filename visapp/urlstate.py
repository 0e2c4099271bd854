"""The view state carried by the URL: /<view>?a=<analysis key>&model=..&head=L.H&metric=..&scale=..

Pure functions (parse, merge, serialise), so a link reproduces the view and tests need no browser.
Unknown or malformed values fall back to defaults rather than failing.
"""
from __future__ import annotations

import re
from urllib.parse import parse_qs, urlencode

from .view_settings import DEFAULT, METRICS, SCALES  # noqa: F401 (the URL's values)

VIEWS = ("overview", "head", "sinks", "basin", "entropy", "graphs", "variants", "generate", "model", "trace",
         "corpus", "embedding", "sidebyside")
VIEW_TITLES = {"overview": "Head overview", "head": "Head detail", "sinks": "Sinks", "basin": "Basin",
               "entropy": "Entropy", "graphs": "Graphs", "variants": "Variants", "generate": "Generate",
               "model": "Model view", "trace": "Trace", "corpus": "Corpus", "embedding": "Q/K embedding",
               "sidebyside": "Side by side"}
DEFAULTS = {"view": "overview", "a": "", "model": "", "head": "0.0", "metric": DEFAULT.metric, "scale": DEFAULT.scale}
_HEAD = re.compile(r"^\d{1,4}\.\d{1,4}$")
_KEY = re.compile(r"^[0-9a-f]{8,64}$")


def parse(pathname: str | None, search: str | None) -> dict:
    """URL -> state dict with every DEFAULTS key (validated)."""
    state = dict(DEFAULTS)
    view = (pathname or "/").strip("/").split("/")[-1] or "overview"
    state["view"] = view if view in VIEWS else "overview"
    q = parse_qs((search or "").lstrip("?"), keep_blank_values=False)
    get = lambda k: (q.get(k) or [""])[0]   # noqa: E731
    if _KEY.match(get("a")):
        state["a"] = get("a")
    if get("model") and len(get("model")) <= 512:
        state["model"] = get("model")
    if _HEAD.match(get("head")):
        state["head"] = get("head")
    if get("metric") in METRICS:
        state["metric"] = get("metric")
    if get("scale") in SCALES:
        state["scale"] = get("scale")
    return state


def to_search(state: dict) -> str:
    """State -> '?a=..' keeping only non-default values (short links)."""
    items = [(k, state[k]) for k in ("a", "model", "head", "metric", "scale")
             if state.get(k) and state.get(k) != DEFAULTS[k]]
    return "?" + urlencode(items) if items else ""


def to_path(state: dict) -> str:
    return "/" + state.get("view", "overview")


def head_of(state: dict) -> tuple[int, int]:
    l, h = state.get("head", "0.0").split(".")
    return int(l), int(h)


def clamp_head(head: str, n_layers: int, n_heads: int) -> str:
    """'L.H' inside the model (a head from another model's link is clamped, not an error)."""
    try:
        l, h = (int(x) for x in head.split("."))
    except (ValueError, AttributeError):
        l, h = 0, 0
    return f"{min(max(l, 0), n_layers - 1)}.{min(max(h, 0), n_heads - 1)}"
