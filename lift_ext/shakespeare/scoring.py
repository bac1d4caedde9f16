"""Query-set scores of an adapted role: next-character accuracy on all targets and on the
remapped ones, and the negative log-likelihood (docs/design.md section 11).

For theta samples theta_1..theta_S (S = 1 for a point estimate) the predictive distribution
at each position is the average of the S softmax outputs; accuracy counts positions whose
argmax is the target, NLL is the mean of -log p(target) in nats per character.
"""
from __future__ import annotations

import math
from typing import Dict, Optional, Sequence

import torch

from lift_ext.lift import FlatParams, average_predictions

METRICS = ("acc", "acc_remapped", "nll")


@torch.no_grad()
def query_metrics(flat: FlatParams, thetas: Sequence[torch.Tensor], role) -> Dict[str, Optional[float]]:
    """{"acc", "acc_remapped", "nll"} of the predictive average over ``thetas`` on ``role``'s
    query pair (a FewShotRole). acc_remapped is None when no query target is remapped."""
    inputs, targets = role.query
    thetas = list(thetas)
    if len(thetas) == 1:  # argmax of the logits themselves: no ties made by rounding softmax
        logits = flat.call(thetas[0])(input_ids=inputs).logits.float()
        pred, logp = logits.argmax(-1), torch.log_softmax(logits, -1)
    else:
        probs = average_predictions(flat, thetas,
                                    lambda call: torch.softmax(call(input_ids=inputs).logits.float(), -1))
        pred, logp = probs.argmax(-1), probs.clamp_min(1e-30).log()
    hit = pred == targets
    nll = -logp.gather(-1, targets[..., None]).mean()
    n_remapped = int(role.remapped.sum())
    return {"acc": float(hit.float().mean()),
            "acc_remapped": float(hit[role.remapped].float().mean()) if n_remapped else None,
            "nll": float(nll)}


def mean_of(values: Sequence[Optional[float]]) -> float:
    """Mean of the values that are not None (nan if none is)."""
    kept = [v for v in values if v is not None]
    return sum(kept) / len(kept) if kept else math.nan


__all__ = ["METRICS", "query_metrics", "mean_of"]
