"""What every subcommand of `python -m compute` shares: reading the text, the model flags, the
progress bar, loading under the server's rules."""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

from ..errors import UserError

def read_text_file(path: str) -> str:
    p = Path(path)
    if not p.exists():
        raise UserError(f"text file not found: {path}")
    if not p.is_file():
        raise UserError(f"not a file: {path}")
    data = p.read_bytes()
    if b"\x00" in data[:65536]:
        raise UserError(f"{path} looks like a binary file (it contains NUL bytes), not text")
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise UserError(f"{path} is not UTF-8 text (bad byte at offset {exc.start})") from None


class ProgressBar:
    """A percentage bar on stderr, called as progress(fraction, message); silent when quiet."""

    def __init__(self, desc: str, quiet: bool = False):
        self.bar = None
        if not quiet:
            from tqdm import tqdm
            self.bar = tqdm(total=100, desc=desc, unit="%", file=sys.stderr, leave=False, mininterval=0.5)

    def __call__(self, frac: float, msg: str) -> None:
        if self.bar is not None:
            self.bar.n = int(100 * frac)
            self.bar.set_postfix_str(msg[:60])
            self.bar.refresh()

    def __enter__(self) -> "ProgressBar":
        return self

    def __exit__(self, *exc) -> bool:
        if self.bar is not None:
            self.bar.close()
        return False


def add_model_args(p: argparse.ArgumentParser, corpus: bool = False) -> None:
    from ..models import DEFAULT_MODEL, REGISTRY
    p.add_argument("--model", default=DEFAULT_MODEL,
                   help=f"registry name ({', '.join(REGISTRY)}), a local Hugging Face model folder, "
                        f"or a .gguf file (default: {DEFAULT_MODEL})")
    p.add_argument("--device", default="cpu", choices=["cpu", "cuda"], help="where the model runs (default cpu)")
    src = p.add_mutually_exclusive_group(required=True)
    src.add_argument("--text-file", help="UTF-8 text file to analyse")
    src.add_argument("--text", help="the text itself (instead of --text-file)")
    if corpus:
        src.add_argument("--corpus", help="JSON-lines file, one {\"id\": ..., \"text\": ...} per line: analyse "
                                          "every text and aggregate per-head statistics into DIR/corpus.json")


def get_text(args) -> str:
    return args.text if args.text is not None else read_text_file(args.text_file)


def load_for_cli(args):
    import torch
    from ..limits import load_model_limited   # settings' rules (server mode, pickle), odd paths -> clear errors
    if args.device == "cuda" and not torch.cuda.is_available():
        raise UserError("--device cuda: no CUDA GPU is available here; use --device cpu")
    return load_model_limited(args.model, device=args.device)


def check_out_dir(path: str) -> None:
    """Refuse an --out that cannot become a folder before any work starts."""
    p = Path(path)
    if p.exists() and not p.is_dir():
        raise UserError(f"--out {path}: a file of that name exists (give a folder)")
    for parent in p.parents:
        if parent.exists():
            if not parent.is_dir():
                raise UserError(f"--out {path}: {parent} is a file, not a folder")
            break
