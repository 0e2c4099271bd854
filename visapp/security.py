"""Browser hardening and the request-body limit, installed on the Flask server by install().

Every response (pages, Dash's JSON endpoints, assets, errors) carries:
  Content-Security-Policy  scripts only from this origin plus the hashes of Dash's inline scripts (no
                           other inline script). 'unsafe-eval' is allowed for one reason: plotly's WebGL
                           traces (the embedding view's scattergl) compile their shaders through regl,
                           which generates code with Function(); user text never reaches a script (it is
                           rendered as text everywhere). Styles may be inline (React and plotly set
                           style attributes and <style> elements); images from data:/blob: (plotly's
                           image export); no plugins, no framing (frame-ancestors 'none').
  X-Content-Type-Options: nosniff, X-Frame-Options: DENY (older browsers), Referrer-Policy: no-referrer
  (the query string holds the analysis key), Cross-Origin-Opener-Policy: same-origin.
A request body over ATTNVIS_MAX_REQUEST_MB gets 413 with a one-line message before any of it is parsed
(Flask's MAX_CONTENT_LENGTH), instead of a web worker growing by gigabytes.
"""
from __future__ import annotations

from typing import Callable, Iterable, Union

from compute import settings


def content_security_policy(script_hashes: Iterable[str] = ()) -> str:
    directives = {
        "default-src": ["'self'"],
        "script-src": ["'self'", "'unsafe-eval'", *script_hashes],
        "style-src": ["'self'", "'unsafe-inline'"],
        "img-src": ["'self'", "data:", "blob:"],
        "font-src": ["'self'", "data:"],
        "connect-src": ["'self'"],
        "worker-src": ["'self'", "blob:"],
        "object-src": ["'none'"],
        "base-uri": ["'self'"],
        "form-action": ["'self'"],
        "frame-ancestors": ["'none'"],
    }
    return "; ".join(f"{k} {' '.join(v)}" for k, v in directives.items())


def headers(script_hashes: Iterable[str] = ()) -> dict:
    return {
        "Content-Security-Policy": content_security_policy(script_hashes),
        "X-Content-Type-Options": "nosniff",
        "X-Frame-Options": "DENY",
        "Referrer-Policy": "no-referrer",
        "Cross-Origin-Opener-Policy": "same-origin",
    }


def max_request_bytes() -> int:
    return int(settings.get("ATTNVIS_MAX_REQUEST_MB") * 2**20)


def too_large_message() -> str:
    return (f"the request is larger than the server accepts ({settings.get('ATTNVIS_MAX_REQUEST_MB'):g} MB, "
            "ATTNVIS_MAX_REQUEST_MB); use a shorter text")


def install(server, script_hashes: Union[Iterable[str], Callable[[], Iterable[str]]] = ()) -> None:
    """Call once at start. script_hashes: the Dash app's csp_hashes method (called per response, since Dash
    adds inline scripts, such as the pages' title script, during its first-request setup), or a list."""
    from flask import jsonify
    from werkzeug.exceptions import RequestEntityTooLarge

    server.config["MAX_CONTENT_LENGTH"] = max_request_bytes()
    get = script_hashes if callable(script_hashes) else (lambda: script_hashes)
    cache: dict = {}

    @server.after_request
    def _security_headers(response):
        hashes = tuple(get())
        fixed = cache.get(hashes) or cache.setdefault(hashes, headers(hashes))
        for k, v in fixed.items():
            response.headers.setdefault(k, v)
        return response

    @server.errorhandler(RequestEntityTooLarge)
    def _too_large(_exc):
        return jsonify(error=too_large_message()), 413
