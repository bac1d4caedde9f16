"""lift_ext.baselines: multitask, Reptile and FO-MAML on a flat adapter (gradient budgets, the
update rules on quadratic tasks, determinism)."""
import torch

from lift_ext import baselines
from lift_ext.lift import FlatParams, TensorTask


def _model_and_tasks(targets, rows=32, seed=0):
    """A bias-only linear model y = x @ W0 + b (W0 frozen) and one regression task per target
    bias: the mean squared error of task t is minimised at b = targets[t]."""
    gen = torch.Generator().manual_seed(seed)
    model = torch.nn.Linear(3, 2)
    model.weight.requires_grad_(False)
    with torch.no_grad():
        model.weight.zero_()
        model.bias.zero_()
    tasks = []
    for target in targets:
        x = torch.randn(rows, 3, generator=gen)
        tasks.append(TensorTask(x, torch.as_tensor(target, dtype=torch.float32).expand(rows, 2).clone(), batch_size=8))
    return FlatParams(model), tasks


def mse(call, batch):
    x, y = batch
    return ((call(x) - y) ** 2).mean()


class CountingLoss:
    def __init__(self):
        self.calls = 0

    def __call__(self, call, batch):
        self.calls += 1
        return mse(call, batch)


def test_multitask_reaches_the_minimiser_of_the_average_loss():
    flat, tasks = _model_and_tasks([[1.0, -1.0], [3.0, 1.0]])
    theta = baselines.train_multitask(flat, tasks, mse, flat.vector.clone(), steps=600, lr=0.01, seed=0)
    assert torch.allclose(theta, torch.tensor([2.0, 0.0]), atol=0.15), theta


def test_gradient_budgets_are_equal_across_the_three():
    flat, tasks = _model_and_tasks([[1.0, 0.0], [0.0, 1.0]])
    init = flat.vector.clone()
    counts = {}
    for name, run in {
        "multitask": lambda loss: baselines.train_multitask(flat, tasks, loss, init, steps=24, lr=0.01, seed=1),
        "reptile": lambda loss: baselines.train_reptile(flat, tasks, loss, init, steps=24, inner_steps=4, lr=0.01,
                                                        outer_lr=0.5, seed=1),
        "fomaml": lambda loss: baselines.train_fomaml(flat, lambda g: (tasks[0].batch(g), tasks[1].batch(g)), loss,
                                                      init, steps=24, inner_steps=3, lr=0.01, seed=1),
    }.items():
        loss = CountingLoss()
        run(loss)
        counts[name] = loss.calls
    assert counts == {"multitask": 24, "reptile": 24, "fomaml": 24}


def test_reptile_interpolates_towards_the_inner_result():
    flat, tasks = _model_and_tasks([[2.0, 2.0]])
    init = flat.vector.clone()
    frozen = baselines.train_reptile(flat, tasks, mse, init, steps=20, inner_steps=5, lr=0.05, outer_lr=0.0, seed=0)
    assert torch.equal(frozen, init)
    half = baselines.train_reptile(flat, tasks, mse, init, steps=5, inner_steps=5, lr=0.05, outer_lr=0.5, seed=0)
    full = baselines.train_reptile(flat, tasks, mse, init, steps=5, inner_steps=5, lr=0.05, outer_lr=1.0, seed=0)
    assert torch.allclose(half, 0.5 * full), (half, full)
    assert bool((full > 0).all())  # moved towards the target bias


def test_fomaml_steps_phi_with_the_query_gradient_at_the_adapted_vector():
    # support pulls towards +1, query towards -1: the first-order update follows the query loss
    flat, (support, query) = _model_and_tasks([[1.0, 1.0], [-1.0, -1.0]])
    init = flat.vector.clone()
    phi = baselines.train_fomaml(flat, lambda g: (support.full(), query.full()), mse, init, steps=40,
                                 inner_steps=1, lr=0.02, seed=0)
    assert bool((phi < 0).all()), phi


def test_runs_are_pure_functions_of_the_seed():
    flat, tasks = _model_and_tasks([[1.0, 0.0], [0.0, 1.0], [1.0, 1.0]])
    init = flat.vector.clone()
    a = baselines.train_multitask(flat, tasks, mse, init, steps=15, lr=0.01, seed=3)
    b = baselines.train_multitask(flat, tasks, mse, init, steps=15, lr=0.01, seed=3)
    c = baselines.train_multitask(flat, tasks, mse, init, steps=15, lr=0.01, seed=4)
    assert torch.equal(a, b)
    assert not torch.equal(a, c)
    assert torch.equal(init, flat.vector)  # the initial adapter is never written
