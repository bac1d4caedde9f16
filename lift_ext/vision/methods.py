"""The vision suite's data as the harness sees it (lift_ext.harness): support sets, pools,
episodes, query rows and logits on the flat adapter vector (LoRA + head,
lift_ext.vision.backbone), and the unadapted backbone's prototype classifier."""
from __future__ import annotations

import torch

from lift_ext.lift import FlatParams, TensorTask
from lift_ext.vision import tasks as vt
from lift_ext.vision.backbone import masked_logits, to_input


def labelled(task: vt.VisionTask, rows: torch.Tensor, batch_size: int) -> TensorTask:
    """The images ``rows`` of ``task`` as a TensorTask of (inputs, labels, classes) with
    minibatches of ``batch_size`` images (all of them when there are fewer)."""
    classes = torch.full((len(rows),), task.spec.num_classes, dtype=torch.long)
    return TensorTask(to_input(task.images[rows]), task.labels[rows], classes, batch_size=batch_size)


def support_task(task: vt.VisionTask, shots: int, seed: int) -> TensorTask:
    """``shots`` images per class of the support pool (tasks.few_shot), one full batch."""
    rows = vt.few_shot(task, shots, seed)
    return labelled(task, rows, batch_size=len(rows))


def pool_task(task: vt.VisionTask, batch_size: int) -> TensorTask:
    """The whole support pool (SUPPORT_POOL images) with minibatches of ``batch_size``."""
    return labelled(task, torch.arange(vt.SUPPORT_POOL), batch_size)


def query_task(task: vt.VisionTask) -> TensorTask:
    """The task's held-out query images, one full batch."""
    rows = torch.arange(vt.SUPPORT_POOL, len(task.labels))
    return labelled(task, rows, batch_size=len(rows))


def logits_fn(call, batch):
    """(logits [N, C] over the task's own C classes, labels [N]) of a batch (inputs, labels,
    classes) of one task's images (every row has the same number of classes C)."""
    inputs, labels, classes = batch
    if int(classes.min()) != int(classes.max()):
        raise ValueError("batch mixes tasks with different numbers of classes: logits_fn scores one task")
    return masked_logits(call(inputs), classes)[:, :int(classes[0])], labels


def query_accuracy(flat: FlatParams, theta: torch.Tensor, task: vt.VisionTask) -> float:
    """Accuracy (%) at adapter ``theta`` on the task's held-out query images, the argmax over
    the task's own classes (logits_fn)."""
    with torch.no_grad():
        logits, labels = logits_fn(flat.call(theta), query_task(task).full())
    return 100.0 * float((logits.argmax(-1) == labels).float().mean())


def prototype_accuracy(train_features: torch.Tensor, train_labels: torch.Tensor, test_features: torch.Tensor,
                       test_labels: torch.Tensor) -> float:
    """Accuracy (%) of the nearest class mean by cosine similarity on frozen features (no
    training: the unadapted backbone's reference)."""
    classes = int(train_labels.max()) + 1
    means = torch.stack([train_features[train_labels == c].mean(0) for c in range(classes)])
    sims = torch.nn.functional.normalize(test_features, dim=-1) @ torch.nn.functional.normalize(means, dim=-1).T
    return 100.0 * float((sims.argmax(-1) == test_labels).float().mean())


def episode(task: vt.VisionTask, batch: int, gen: torch.Generator):
    """FO-MAML's episode of ``task``: (support, query) minibatches of ``batch`` distinct images
    of its support pool, drawn with ``gen``."""
    rows = torch.randperm(vt.SUPPORT_POOL, generator=gen)[:2 * batch]
    return labelled(task, rows[:batch], batch).full(), labelled(task, rows[batch:], batch).full()
