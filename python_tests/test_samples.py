"""`PosteriorSamples` beside `optim.SGLD`: the predictive mean and variance of a Bayesian linear
regression against the closed form, storage (memory, CPU, disk with a cap), and a peft model."""
import os

import pytest
import torch

from lift_ext.optim import SGLD, PosteriorSamples

NOISE_SD = 0.5


def regression(num_data=200, dim=3, seed=0):
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(num_data, dim, generator=g)
    y = x @ torch.tensor([1.0, -2.0, 0.5]) + NOISE_SD * torch.randn(num_data, generator=g)
    return x, y


def exact_predictive(x, y, x_new):
    """Prior N(0, I), noise sd 0.5: the posterior of the weights is N(mu, Sigma); a prediction
    x_new . w has mean x_new . mu and (epistemic) variance x_new^T Sigma x_new."""
    x, y, x_new = x.double(), y.double(), x_new.double()
    sigma = torch.linalg.inv(x.T @ x / NOISE_SD**2 + torch.eye(x.shape[1], dtype=torch.float64))
    mu = sigma @ x.T @ y / NOISE_SD**2
    return x_new @ mu, ((x_new @ sigma) * x_new).sum(1)


class Copies(torch.nn.Module):
    """C independent copies of the linear regression's weights (C chains in one model)."""

    def __init__(self, copies, dim):
        super().__init__()
        self.weight = torch.nn.Parameter(torch.zeros(copies, dim))

    def forward(self, x):
        return x @ self.weight.T  # [n, C]


def test_predictive_mean_and_variance_match_the_closed_form():
    """200 chains x 40 samples each (thin 50 after 300 steps of burn-in): the pooled predictive
    mean and variance at 5 new inputs within 5 % of the exact ones."""
    x, y = regression()
    x_new = torch.randn(5, 3, generator=torch.Generator().manual_seed(9))
    model = Copies(200, 3)
    opt = SGLD(model.parameters(), lr=0.01, temperature=1.0, prior_precision=1.0, num_data=len(x), seed=1)
    kept = PosteriorSamples(model, burn_in=300, thin=50)
    for _ in range(2300):
        opt.zero_grad()
        (((model(x) - y[:, None]) ** 2).mean(0) / (2 * NOISE_SD**2)).sum().backward()
        opt.step()
        kept.collect()
    assert len(kept) == 40
    mean, variance = kept.average(lambda m: m(x_new), with_variance=True)  # [5, C] each
    exact_mean, exact_variance = exact_predictive(x, y, x_new)
    torch.testing.assert_close(mean.mean(1), exact_mean, rtol=0.05, atol=0.0)
    torch.testing.assert_close(variance.mean(1), exact_variance, rtol=0.05, atol=0.0)


def test_average_restores_the_model_even_when_fn_raises():
    model = Copies(2, 3)
    kept = PosteriorSamples(model)
    with torch.no_grad():
        model.weight.fill_(1.0)
    kept.collect()
    with torch.no_grad():
        model.weight.fill_(2.0)
    kept.collect()
    with torch.no_grad():
        model.weight.fill_(3.0)
    assert float(kept.average(lambda m: m.weight.sum())) == pytest.approx(1.5 * 6)
    assert torch.equal(model.weight, torch.full((2, 3), 3.0))
    with pytest.raises(ZeroDivisionError):
        kept.average(lambda m: 1 / 0)
    assert torch.equal(model.weight, torch.full((2, 3), 3.0))


def test_the_cap_halves_the_samples_and_keeps_them_evenly_spread(tmp_path):
    model = Copies(1, 1)
    kept = PosteriorSamples(model, burn_in=2, thin=1, max_samples=4, storage=tmp_path / "samples")
    for step in range(1, 21):  # the weight records the step it was kept at
        with torch.no_grad():
            model.weight.fill_(float(step))
        kept.collect()
    steps = [float(s["weight"]) for s in kept.samples()]
    assert steps == [6.0, 10.0, 14.0, 18.0] and kept.thin == 4  # every 4th step after burn-in 2
    assert len([f for f in os.listdir(tmp_path / "samples") if f.startswith("sample_")]) == len(kept) == 4
    with pytest.raises(ValueError, match="already holds samples"):
        PosteriorSamples(model, storage=tmp_path / "samples")


def test_bad_arguments_name_themselves():
    model = Copies(1, 1)
    for kwargs, match in ((dict(thin=0), "thin"), (dict(burn_in=-1), "burn_in"), (dict(max_samples=1), "max_samples"),
                          (dict(names=["nope"]), "names"), (dict(storage=3), "storage")):
        with pytest.raises((ValueError, TypeError), match=match):
            PosteriorSamples(model, **kwargs)
    with pytest.raises(RuntimeError, match="no sample kept yet"):
        PosteriorSamples(model, burn_in=5).average(lambda m: m.weight)


def test_a_peft_model_keeps_only_its_adapter_on_the_devices_memory():
    peft = pytest.importorskip("peft")
    torch.manual_seed(0)
    model = peft.get_peft_model(torch.nn.Sequential(torch.nn.Linear(8, 16), torch.nn.ReLU(), torch.nn.Linear(16, 2)),
                                peft.LoraConfig(r=2, lora_alpha=4, target_modules=["0", "2"]))
    x, y = torch.randn(64, 8), torch.randint(2, (64,))
    a_init = torch.cat([p.detach().flatten() for n, p in model.named_parameters() if "lora_A" in n])
    opt = SGLD([p for p in model.parameters() if p.requires_grad], lr=1e-3, preconditioned=True,
               prior_mean="init", prior_precision=1 / float(a_init.std()) ** 2, num_data=len(x), seed=0)
    kept = PosteriorSamples(model, burn_in=5, thin=5, storage="memory")
    for _ in range(30):
        opt.zero_grad()
        torch.nn.functional.cross_entropy(model(x), y).backward()
        opt.step()
        kept.collect()
    samples = list(kept.samples())
    assert len(samples) == 5 and all(set(s) == {n for n, p in model.named_parameters() if p.requires_grad}
                                     for s in samples)
    assert all("lora_" in name for name in samples[0])
    assert not torch.equal(samples[0][next(iter(samples[0]))], samples[-1][next(iter(samples[0]))])
    probs = kept.average(lambda m: torch.softmax(m(x), -1))
    torch.testing.assert_close(probs.sum(-1), torch.ones(64, dtype=torch.float64))


def test_an_interrupted_collect_keeps_nothing_and_counts_nothing(tmp_path, monkeypatch):
    model = Copies(1, 2)
    kept = PosteriorSamples(model, storage=tmp_path / "samples")
    kept.collect()

    def interrupted(*args, **kwargs):
        raise KeyboardInterrupt

    monkeypatch.setattr(torch, "save", interrupted)
    with pytest.raises(KeyboardInterrupt):
        kept.collect()
    assert len(kept) == 1 and kept.steps == 1
    assert len([f for f in os.listdir(tmp_path / "samples")]) == 1  # no half-written file
