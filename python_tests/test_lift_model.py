"""The model layer of LiFT: FlatParams, the LiFT trainer and meta-test adaptation, on
synthetic few-shot regression tasks with a small MLP + peft LoRA."""
import pytest
import torch
from peft import LoraConfig, get_peft_model

from lift_ext.lift import (FlatParams, LangevinConfig, LiFT, MapConfig, MixturePrior, PaperHierarchy, SamplingConfig,
                           TensorTask, adapt, average_predictions)

IN, HIDDEN = 4, 32


def make_model(seed=0):
    torch.manual_seed(seed)
    base = torch.nn.Sequential(torch.nn.Linear(IN, HIDDEN), torch.nn.Tanh(), torch.nn.Linear(HIDDEN, HIDDEN),
                               torch.nn.Tanh(), torch.nn.Linear(HIDDEN, 1))
    return get_peft_model(base, LoraConfig(r=2, lora_alpha=2, target_modules=["0", "2"]))


def mse(call, batch):
    x, y = batch
    return torch.nn.functional.mse_loss(call(x).squeeze(-1), y)


def test_flat_params_pack_views_and_gradient():
    model = make_model()
    flat = FlatParams(model)
    lora = [(n, p) for n, p in model.named_parameters() if p.requires_grad]
    assert flat.names == [n for n, _ in lora] and all("lora" in n for n in flat.names)
    assert flat.dim == sum(p.numel() for _, p in lora)
    # module parameters are views into the flat buffer
    flat.vector.add_(0.5)
    assert torch.equal(lora[0][1].detach().reshape(-1), flat.vector[: lora[0][1].numel()])
    # gradient at another vector equals autograd through the module at that vector
    theta = flat.vector + 0.1 * torch.randn(flat.dim)
    x, y = torch.randn(9, IN), torch.randn(9)
    loss, grad = flat.loss_and_grad(theta, lambda call: mse(call, (x, y)))
    flat.vector.copy_(theta)
    model.zero_grad()
    expected_loss = mse(model, (x, y))
    expected_loss.backward()
    expected = torch.cat([p.grad.reshape(-1) for _, p in lora])
    torch.testing.assert_close(loss, expected_loss.detach())
    torch.testing.assert_close(grad, expected, rtol=1e-5, atol=1e-7)
    frozen = [p for n, p in model.named_parameters() if not p.requires_grad]
    assert all(p.grad is None for p in frozen), "the backbone gets no gradient"


def test_flat_params_bad_selection():
    model = make_model()
    with pytest.raises(ValueError, match="does not have"):
        FlatParams(model, select=["nope"])
    with pytest.raises(ValueError, match="no parameters selected"):
        FlatParams(model, select=lambda name, p: False)
    flat = FlatParams(model)
    with pytest.raises(ValueError, match="shape"):
        flat.views(torch.zeros(flat.dim + 1))


def synthetic_family(seed, num_tasks, n_examples, centers):
    """Tasks whose true adapters are a centre (shared, unknown to the learner, far from the PEFT
    init) plus small task-specific noise; y = model at the true adapter + 0.05 noise."""
    gen = torch.Generator().manual_seed(seed)
    model = make_model()
    flat = FlatParams(model)
    tasks = []
    for t in range(num_tasks):
        true = centers[t % len(centers)] + 0.02 * torch.randn(flat.dim, generator=gen)
        x = torch.randn(n_examples, IN, generator=gen)
        with torch.no_grad():
            y = flat.call(true)(x).squeeze(-1) + 0.05 * torch.randn(n_examples, generator=gen)
        tasks.append((x, y))
    return tasks


@pytest.fixture(scope="module")
def meta_setup():
    model = make_model()
    init = FlatParams(model).vector.clone()
    gen = torch.Generator().manual_seed(123)
    centers = [init + 0.5 * torch.randn(init.numel(), generator=gen)]
    train = synthetic_family(1, 16, 64, centers)
    test = synthetic_family(2, 8, 105, centers)
    return model, init, centers, train, test


def meta_train(model, train, n_components, steps=3000):
    tasks = [TensorTask(x, y, batch_size=16) for x, y in train]
    trainer = LiFT(model, tasks, mse, langevin=LangevinConfig(lr=5e-2),
                   hierarchy=PaperHierarchy(sigma=1.0, beta=0.05, burn_in=steps // 2, thin=4,
                                            gmm_components=n_components), seed=0)
    trainer.run(steps, progress=False)
    return trainer


def test_lift_prior_beats_adaptation_from_the_peft_init(meta_setup):
    """5-shot regression, MAP to the stopping rule (at most 50 steps) each: from the LiFT mixture
    prior vs from the PEFT init without a prior (same optimiser, budget and lr). The query error
    must at least halve."""
    model, init, _, train, test = meta_setup
    trainer = meta_train(model, train, n_components=2)
    flat = trainer.flat
    errors = {"lift": [], "peft_init": []}
    for x, y in test:
        support = TensorTask(x[:5], y[:5], batch_size=5)
        query = (x[5:], y[5:])
        lift = trainer.adapt(support, config=MapConfig(steps=50, lr=1e-2))
        plain = adapt(flat, support, mse, prior=None, start=trainer.init_vector, config=MapConfig(steps=50, lr=1e-2))
        with torch.no_grad():
            errors["lift"].append(float(mse(flat.call(lift.theta), query)))
            errors["peft_init"].append(float(mse(flat.call(plain.theta), query)))
    lift_err = torch.tensor(errors["lift"]).mean()
    plain_err = torch.tensor(errors["peft_init"]).mean()
    assert lift_err < 0.5 * plain_err, (lift_err, plain_err)


def test_lift_trainer_state_and_units(meta_setup):
    model, init, _, train, _ = meta_setup
    trainer = meta_train(model, train, 1, steps=40)
    assert trainer.thetas.shape == (16, trainer.flat.dim)
    assert trainer.sampler.langevin.lr == pytest.approx(5e-2 / 64), "per-example lr divided by the task size"
    assert trainer.gmm.n_components == 1
    torch.testing.assert_close(trainer.sampler.prior_mean, init)


def test_lift_trainer_resume_is_exact(meta_setup, tmp_path):
    """save then LiFT.load (a fresh model, the same tasks) continues the chain bitwise."""
    model, _, _, train, _ = meta_setup
    tasks = [TensorTask(x, y, batch_size=16) for x, y in train]
    kw = dict(langevin=LangevinConfig(lr=5e-2),
              hierarchy=PaperHierarchy(sigma=1.0, beta=0.05, burn_in=5, gmm_components=1), seed=3)
    straight = LiFT(model, tasks, mse, **kw).run(30, progress=False)
    first = LiFT(model, tasks, mse, **kw).run(15, progress=False)
    first.save(str(tmp_path / "lift.pt"))
    resumed = LiFT.load(str(tmp_path / "lift.pt"), make_model(), tasks, mse)
    assert resumed.seed == 3 and resumed.sampler.step_count == 15
    resumed.run(15, progress=False)
    assert torch.equal(straight.phi, resumed.phi) and torch.equal(straight.thetas, resumed.thetas)
    with pytest.raises(ValueError, match="16 tasks"):
        LiFT.load(str(tmp_path / "lift.pt"), make_model(), tasks[:3], mse)


def test_adapt_modes_and_inits(meta_setup):
    model, init, _, train, test = meta_setup
    trainer = meta_train(model, train, 2, steps=200)
    x, y = test[0]
    support = TensorTask(x[:5], y[:5], batch_size=5)
    prior = trainer.meta_test_prior()
    for start in ("best_component", "mean", trainer.init_vector):
        out = trainer.adapt(support, start=start, config=MapConfig(steps=5, lr=1e-2))
        assert out.theta.shape == (trainer.flat.dim,) and len(out.losses) == out.steps_run <= 5
        assert (out.component is not None) == (isinstance(start, str) and start == "best_component")
        assert (out.scores is not None) == (isinstance(start, str) and start == "best_component")
    same = adapt(trainer.flat, support, mse, prior=MixturePrior.from_gmm(trainer.gmm, 0.05),
                 config=MapConfig(steps=5, lr=1e-2))
    own = trainer.adapt(support, config=MapConfig(steps=5, lr=1e-2))
    assert prior.beta == 0.05 and torch.equal(same.theta, own.theta)
    sampled = trainer.adapt(support, config=SamplingConfig(steps=20, lr=1e-3, burn_in=10, thin=2))
    assert len(sampled.samples) == 5 and sampled.steps_run == 20
    mean_pred = average_predictions(trainer.flat, sampled.samples, lambda call: call(x[5:]))
    assert mean_pred.shape == (100, 1)
    with pytest.raises(TypeError, match="config"):
        adapt(trainer.flat, support, mse, prior=prior, config="vi")
    with pytest.raises(ValueError, match="start"):
        adapt(trainer.flat, support, mse, prior=None)


def test_flat_params_views_only_for_float32_as_documented():
    """float32 parameters are views of the vector; a bfloat16 / float16 one is a copy that a
    write to the vector leaves alone until load_ casts theta into it (FlatParams' docstring)."""
    model = torch.nn.Sequential(torch.nn.Linear(3, 2), torch.nn.Linear(2, 2).to(torch.bfloat16),
                                torch.nn.Linear(2, 1).half())
    flat = FlatParams(model)
    assert model[0].weight.data_ptr() == flat.vector.data_ptr()
    low = [model[1].weight, model[2].weight]
    before = [p.detach().clone() for p in low]
    flat.vector.add_(1.0)
    assert all(torch.equal(p, b) for p, b in zip(low, before)), "not views: untouched by a write"
    theta = flat.vector.clone()
    flat.load_(theta)
    for p, view in zip(low, (flat.views(theta)["1.weight"], flat.views(theta)["2.weight"])):
        assert p.dtype == view.dtype and torch.equal(p, view)
