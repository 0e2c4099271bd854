"""Plain names shared with callers that must not import torch (option parsers, the web app)."""

BACKENDS = ("auto", "torch", "triton")
