"""Task containers: rows vs likelihood terms, minibatches, and the benchmark's task units."""
import pytest
import torch

from lift_ext.shakespeare.episodes import pool_tasks, support_task
from lift_ext.lift import TensorTask


def test_examples_per_row_scales_likelihood_terms_not_rows():
    x = torch.arange(30).reshape(10, 3)
    task = TensorTask(x, batch_size=4, examples_per_row=7)
    assert task.num_rows == 10 and task.num_examples == 70
    (b,) = task.batch(torch.Generator().manual_seed(0))
    assert b.shape == (4, 3) and len({int(r[0]) for r in b}) == 4  # distinct rows
    assert TensorTask(x, batch_size=16).batch(torch.Generator())[0] is x  # all rows when few


@pytest.mark.parametrize("bad", [0, -1, 1.5, True])
def test_bad_examples_per_row(bad):
    with pytest.raises(ValueError, match="examples_per_row"):
        TensorTask(torch.zeros(3, 2), examples_per_row=bad)


def test_benchmark_tasks_count_predicted_characters():
    seq_len, stride = 20, 10
    text = torch.arange(205)
    pool = text.unfold(0, seq_len + 1, stride)  # overlapping windows, as a meta-train pool
    (task,) = pool_tasks([pool], batch_size=4, stride=stride)
    assert task.num_examples == pool.shape[0] * stride  # about the distinct characters covered
    support = text[: 3 * (seq_len + 1)].reshape(3, seq_len + 1)
    assert support_task(support, batch_size=8).num_examples == 3 * seq_len
