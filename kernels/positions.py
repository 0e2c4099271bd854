"""Masks and token positions shared by the dense oracle and the chunked backend."""
from __future__ import annotations

from typing import Optional

import torch


def key_validity(key_valid: Optional[torch.Tensor], b: int, nk: int, device) -> torch.Tensor:
    if key_valid is None:
        return torch.ones(b, nk, dtype=torch.bool, device=device)
    if key_valid.shape != (b, nk):
        raise ValueError(f"key_valid must be [B, Nk] = {(b, nk)}, got {tuple(key_valid.shape)}")
    return key_valid.to(device=device, dtype=torch.bool)


def positions(valid: torch.Tensor) -> torch.Tensor:
    """Position of each key among the valid keys of its row (int64, -1 before the first)."""
    return valid.long().cumsum(-1) - 1


def query_positions(kpos: torch.Tensor, nq: int) -> torch.Tensor:
    """Queries are the last Nq keys (prefill: all of them; decoding with a cache: the new ones)."""
    return kpos[:, kpos.shape[1] - nq:]


def query_validity(kvalid: torch.Tensor, nq: int) -> torch.Tensor:
    return kvalid[:, kvalid.shape[1] - nq:]
