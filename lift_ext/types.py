"""Type aliases used across the API (one definition each)."""
from typing import Any, Callable, Sequence, Union

import torch

DeviceLike = Union[str, torch.device, None]
"""A device as torch accepts it; None means "the default" as each function documents."""

TensorOrList = Union[torch.Tensor, Sequence[torch.Tensor]]
"""One tensor, or a list of tensors updated together in one fused call."""

GradFn = Callable[[int, torch.Tensor], torch.Tensor]
"""grad_fn(task_index, theta [D]) -> a stochastic gradient of -log p(D_i | theta) [D]."""

LossFn = Callable[[Callable[..., Any], Any], torch.Tensor]
"""loss_fn(model_call, batch) -> the MEAN loss over the batch (a scalar tensor)."""
