"""Greedy continuation of a prompt, so the app can inspect the attention of the generated tokens.

generate_text returns the prompt, the continuation and where it starts in tokens; the caller then
analyses prompt + continuation like any text (the engine re-tokenises, so the boundary is the
prompt's own token count).
"""
from __future__ import annotations

from dataclasses import dataclass

import torch

from .engine import tokenize
from .errors import InputError, UserError

MAX_NEW_TOKENS = 256


@dataclass
class Generation:
    prompt: str
    continuation: str
    text: str                 # prompt + continuation
    prompt_tokens: int        # tokens of the prompt alone
    new_tokens: int


def generate_text(lm, prompt: str, max_new_tokens: int = 32, max_tokens: int = 8192) -> Generation:
    """Greedy decoding (deterministic) of up to max_new_tokens tokens after the prompt."""
    if not lm.info.causal:
        raise UserError(f"{lm.info.name} is an encoder (bidirectional) model: it does not generate text; "
                        "pick a causal language model")
    if not isinstance(max_new_tokens, int) or not 1 <= max_new_tokens <= MAX_NEW_TOKENS:
        raise InputError(f"tokens to generate must be between 1 and {MAX_NEW_TOKENS}")
    ids = tokenize(lm, prompt, max_tokens)
    if len(ids) + max_new_tokens > min(max_tokens, lm.info.max_positions):
        raise InputError(f"the prompt is {len(ids)} tokens; with {max_new_tokens} new tokens it would pass the "
                         f"limit of {min(max_tokens, lm.info.max_positions)}")
    tok = lm.tokenizer
    pad = tok.pad_token_id if tok.pad_token_id is not None else tok.eos_token_id
    x = torch.tensor([ids], device=lm.device)
    with torch.no_grad():
        out = lm.model.generate(x, attention_mask=torch.ones_like(x), max_new_tokens=max_new_tokens,
                                do_sample=False, num_beams=1, pad_token_id=pad)
    new = out[0, len(ids):].tolist()
    continuation = tok.decode(new, skip_special_tokens=True)
    if not continuation:
        raise UserError("the model generated no text (it ended at once); try a different prompt")
    return Generation(prompt=prompt, continuation=continuation, text=prompt + continuation,
                      prompt_tokens=len(ids), new_tokens=len(new))
