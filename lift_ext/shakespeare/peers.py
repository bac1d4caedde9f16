"""The Shakespeare suites' side of the library-based peers (MBC and LoRA-Retriever as
published; their math and budgets, shared by every suite, are lift_ext.peers): retrieval's
keys, the backbone's pooled features of a role's input windows. lift_ext.shakespeare.library
trains the library and MBC's cluster adapters on the next-character loss.

C and k are chosen per seed on the meta-val roles with the adaptation lr
(lift_ext.shakespeare.adaptation); either peer then adapts like every method
(lift_ext.shakespeare.methods.adapt_role).
"""
from __future__ import annotations

from typing import Sequence

import torch

from lift_ext.lift import FlatParams


@torch.no_grad()
def pooled_features(flat: FlatParams, theta: torch.Tensor, inputs: torch.Tensor, chunk: int = 64) -> torch.Tensor:
    """The mean, over windows and positions, of the last hidden layer (after the final layer
    norm) of the model at adapter ``theta`` reading ``inputs`` [n, L]: float32 [H]."""
    if inputs.dim() != 2 or inputs.shape[0] < 1:
        raise ValueError(f"inputs must be a non-empty [n, L] tensor, got shape {tuple(inputs.shape)}")
    call = flat.call(theta)
    total = None
    for rows in inputs.split(chunk):
        hidden = call(input_ids=rows, output_hidden_states=True).hidden_states[-1].float()
        part = hidden.sum((0, 1))
        total = part if total is None else total + part
    return total / (inputs.shape[0] * inputs.shape[1])


def role_keys(flat: FlatParams, theta: torch.Tensor, pools: Sequence[tuple], max_windows: int = 64) -> torch.Tensor:
    """Retrieval keys [N, H]: ``pooled_features`` of the first ``max_windows`` input windows of
    each role's pool (inputs, targets)."""
    return torch.stack([pooled_features(flat, theta, pool[0][:max_windows]) for pool in pools])


__all__ = ["pooled_features", "role_keys"]
