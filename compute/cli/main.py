"""Headless CLI: `python -m compute <command>`; one module per command registers its flags.

Every user error ends with one line on stderr (`error: ...`) and exit code 2, never a traceback.
"""
from __future__ import annotations

import argparse
import sys

from ..errors import UserError
from . import analyze, compare, diff, embed, search, trace

EXIT_USER = 2
EXIT_INTERNAL = 1
COMMANDS = (analyze, compare, trace, embed, search, diff)          # each has register(subparsers)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m compute",
                                     description="Attention analysis of a text on a pretrained model, headless.")
    sub = parser.add_subparsers(dest="command", required=True)
    for command in COMMANDS:
        command.register(sub)
    models = sub.add_parser("models", help="list the embedded models")
    models.set_defaults(func=_list_models)
    return parser


def _list_models(args) -> int:
    from ..models import list_models
    for m in list_models():
        print(f"{m['name']:14s} {m['kind']:8s} {'installed' if m['installed'] else 'MISSING':9s} {m['description']}")
    return 0


def main(argv=None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        return int(args.func(args) or 0)
    except UserError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return EXIT_USER
    except KeyboardInterrupt:
        print("error: interrupted", file=sys.stderr)
        return 130
    except MemoryError:
        print("error: out of memory; try fewer tokens (--max-tokens) or a smaller --mem-budget-mb", file=sys.stderr)
        return EXIT_USER
    except Exception as exc:  # last resort: one line, no traceback
        print(f"internal error: {exc.__class__.__name__}: {exc}", file=sys.stderr)
        return EXIT_INTERNAL
