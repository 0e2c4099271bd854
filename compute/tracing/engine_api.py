"""The engine functions tracing uses, imported in this one place: the analysis orchestration is being
rewritten (compute/pipeline.py), and if these move, only this file changes."""
from ..analysis.live import row_blocks
from ..engine import AnalysisOptions, capture, token_strings, tokenize, validate_text

DEFAULT_MAX_TOKENS = AnalysisOptions().max_tokens      # the analysis' own default text limit

__all__ = ["DEFAULT_MAX_TOKENS", "capture", "row_blocks", "token_strings", "tokenize", "validate_text"]
