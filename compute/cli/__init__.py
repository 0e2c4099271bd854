"""`python -m compute`: the headless CLI (main.py lists the commands)."""
from .main import build_parser, main

__all__ = ["build_parser", "main"]
