"""The shape of the lift_ext.lift API (docs/api.md): self-checking configs with a JSON round
trip, at most 8 named parameters per class and no **kwargs, state_dict / load_state_dict that
continue the exact chain and refuse a foreign state with nothing changed, and no module reading
or writing another object's private attributes."""
import ast
import dataclasses
import inspect
import json
from pathlib import Path

import pytest
import torch

import lift_ext
from lift_ext.lift import (ChainStart, LangevinConfig, LiFT, MapConfig, MixtureHierarchy, PaperHierarchy,
                           SamplingConfig, SGLDGibbs, ShardedSGLDGibbs, Sharding, adapt, config_from_dict)
from lift_ext.lift.sharded_trainer import ShardedLiFT

N, D = 6, 5
CONFIGS = [LangevinConfig(lr=1e-3, temperature=0.5, preconditioned=True, alpha=0.9, eps=1e-6, tasks_per_step=2),
           PaperHierarchy(sigma=0.3, beta=0.2, phi_update="langevin", lr_phi=1e-4, burn_in=3, thin=2,
                          gmm_components=2),
           MixtureHierarchy(components=3, sigma=0.3, beta=0.2, dirichlet_alpha=2.0, warmup_steps=4, shift_lr=1e-3,
                            z_update="likelihood"),
           MapConfig(steps=50, lr=1e-2, tol=0.0, patience=2, eval_every=5),
           SamplingConfig(steps=40, lr=1e-2, temperature=0.5, burn_in=10, thin=3)]


@pytest.mark.parametrize("config", CONFIGS, ids=lambda c: type(c).__name__)
def test_every_config_round_trips_through_json(config):
    assert type(config).from_json(config.to_json()) == config
    assert config_from_dict(json.loads(config.to_json())) == config
    with pytest.raises(TypeError, match="has no field"):
        type(config).from_dict(dict(config.to_dict(), nonsense=1))


@pytest.mark.parametrize("build, match", [
    (lambda: LangevinConfig(lr=0.0), "lr must be"),
    (lambda: LangevinConfig(lr=1e-3, alpha=1.5), "alpha must be"),
    (lambda: LangevinConfig(lr=1e-3, tasks_per_step=0), "tasks_per_step must be"),
    (lambda: PaperHierarchy(sigma=-1.0), "sigma must be"),
    (lambda: PaperHierarchy(phi_update="exact"), "phi_update must be"),
    (lambda: PaperHierarchy(lr_phi=1e-3), "lr_phi applies to phi_update='langevin' only"),
    (lambda: PaperHierarchy(thin=0), "thin must be"),
    (lambda: MixtureHierarchy(components=0), "components must be"),
    (lambda: MixtureHierarchy(z_update="nearest"), "z_update must be"),
    (lambda: MapConfig(patience=0), "patience must be"),
    (lambda: SamplingConfig(burn_in=-1), "burn_in must be"),
])
def test_configs_check_themselves_and_name_the_field(build, match):
    with pytest.raises(ValueError, match=match):
        build()


def test_an_option_of_one_mode_cannot_be_given_to_another():
    with pytest.raises(TypeError):
        PaperHierarchy(warmup_steps=3)  # the mixture's warm-up
    with pytest.raises(TypeError):
        MixtureHierarchy(burn_in=3)  # the online-EM mixture's burn-in
    with pytest.raises(TypeError):
        SamplingConfig(tol=1e-3)  # MAP's stopping rule
    with pytest.raises(ValueError, match="a MapConfig config cannot be read as a SamplingConfig"):
        SamplingConfig.from_dict(MapConfig().to_dict())
    with pytest.raises(dataclasses.FrozenInstanceError):
        CONFIGS[0].lr = 1.0


@pytest.mark.parametrize("callable_", [SGLDGibbs, ShardedSGLDGibbs, LiFT, ShardedLiFT, adapt])
def test_at_most_eight_named_parameters_and_no_kwargs(callable_):
    target = callable_.__init__ if inspect.isclass(callable_) else callable_
    params = [p for name, p in inspect.signature(target).parameters.items() if name != "self"]
    assert len(params) <= 8, [p.name for p in params]
    assert not any(p.kind in (p.VAR_KEYWORD, p.VAR_POSITIONAL) for p in params)


def _grad_fn(targets):
    def grad_fn(i, theta):
        return 2.0 * (theta - targets[i]) + 0.1 * theta**3
    return grad_fn


@pytest.fixture(scope="module")
def targets():
    gen = torch.Generator().manual_seed(0)
    out = torch.randn(N, D, generator=gen)
    out[: N // 2] += 2.0
    return out


SAMPLERS = {
    "paper": dict(langevin=LangevinConfig(lr=2e-3, tasks_per_step=2), hierarchy=PaperHierarchy(
        sigma=1.0, beta=0.5, phi_update="langevin", burn_in=2, gmm_components=2)),
    "mixture-precond-shift": dict(langevin=LangevinConfig(lr=2e-3, preconditioned=True, tasks_per_step=2),
                                  hierarchy=MixtureHierarchy(components=2, sigma=1.0, beta=0.5, warmup_steps=3,
                                                             shift_lr=1e-2)),
}


def _same_state(a, b):
    """Two state_dicts equal, bitwise for every tensor."""
    assert a.keys() == b.keys()
    for key in a:
        x, y = a[key], b[key]
        if isinstance(x, dict):
            _same_state(x, y)
        elif isinstance(x, torch.Tensor):
            assert torch.equal(x, y), key
        else:
            assert x == y, key


def _build(kind, case, targets):
    start = ChainStart(thetas=0.5 * targets, prior_mean=targets.mean(0))
    if kind == "one":
        return SGLDGibbs(N, D, _grad_fn(targets), start=start, seed=3, **SAMPLERS[case])
    return ShardedSGLDGibbs(N, D, _grad_fn(targets), sharding=Sharding(num_shards=2), start=start, seed=3,
                            **SAMPLERS[case])


@pytest.mark.parametrize("kind", ["one", "sharded"])
@pytest.mark.parametrize("case", sorted(SAMPLERS))
def test_a_loaded_state_continues_the_exact_chain(kind, case, targets, tmp_path):
    straight = _build(kind, case, targets)
    straight.run(12, progress=False)
    first = _build(kind, case, targets)
    first.run(5, progress=False)
    fresh = _build(kind, case, targets)  # at step 0: load_state_dict must move it to step 5
    fresh.load_state_dict(first.state_dict())
    fresh.run(7, progress=False)
    _same_state(fresh.state_dict(), straight.state_dict())
    first.save(str(tmp_path / "chain"))
    loaded = type(first).load(str(tmp_path / "chain"), _grad_fn(targets))
    loaded.run(7, progress=False)
    _same_state(loaded.state_dict(), straight.state_dict())


def test_a_state_of_another_chain_or_a_damaged_one_changes_nothing(targets):
    sampler = _build("one", "paper", targets)
    sampler.run(3, progress=False)
    before = sampler.state_dict()
    other = SGLDGibbs(N, D, _grad_fn(targets), seed=4, **SAMPLERS["paper"]).state_dict()
    with pytest.raises(ValueError, match="another chain: its config differs in \\['seed'\\]"):
        sampler.load_state_dict(other)
    damaged = dict(before, thetas=before["thetas"].clone())
    damaged["thetas"][0, 0] = float("nan")
    with pytest.raises(ValueError, match="thetas must be finite"):
        sampler.load_state_dict(damaged)
    with pytest.raises(ValueError, match="order"):
        sampler.load_state_dict(dict(before, order={"epoch": 0}))
    with pytest.raises(ValueError, match="lacks \\['gmm'\\]"):
        sampler.load_state_dict({k: v for k, v in before.items() if k != "gmm"})
    _same_state(sampler.state_dict(), before)


def test_run_calls_back_after_every_step_and_all_thetas_is_on_both_samplers(targets):
    seen = []
    sampler = _build("one", "paper", targets)
    sampler.run(4, progress=False, callback=lambda step, tasks: seen.append((step, list(tasks))))
    assert [step for step, _ in seen] == [1, 2, 3, 4] and all(len(tasks) == 2 for _, tasks in seen)
    sharded = _build("sharded", "paper", targets)
    sharded.run(2, progress=False)
    assert sharded.all_thetas().shape == sampler.all_thetas().shape == (N, D)


_ALLOWED = {"_version"}  # torch.Tensor's version counter, read to detect in-place edits


def _private_accesses(path: Path):
    """(line, expression) of every read or write of a private attribute of an object other than
    self / cls / super() / the torch modules."""
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if not (isinstance(node, ast.Attribute) and node.attr.startswith("_") and not node.attr.startswith("__")):
            continue
        owner = node.value
        if isinstance(owner, ast.Name) and owner.id in ("self", "cls"):
            continue
        if isinstance(owner, ast.Call) and isinstance(owner.func, ast.Name) and owner.func.id == "super":
            continue
        root = owner
        while isinstance(root, ast.Attribute):
            root = root.value
        if isinstance(root, ast.Name) and root.id in ("torch", "dist") or node.attr in _ALLOWED:
            continue
        yield node.lineno, ast.unparse(node)


def test_no_module_reads_or_writes_another_objects_private_attributes():
    package = Path(lift_ext.__file__).parent / "lift"
    found = {f"{path.name}:{line}": text for path in sorted(package.glob("*.py"))
             for line, text in _private_accesses(path)}
    assert not found, found


def test_the_scan_finds_a_private_access(tmp_path):
    probe = tmp_path / "probe.py"
    probe.write_text("def f(sampler):\n    return sampler._thetas, self._order, torch._C\n", encoding="utf-8")
    assert list(_private_accesses(probe)) == [(2, "sampler._thetas")]


def test_the_sharded_chain_runs_the_one_step_of_sgld_gibbs():
    """ShardedSGLDGibbs supplies its layout and reduction, not a step of its own."""
    assert "step" not in vars(ShardedSGLDGibbs) and ShardedSGLDGibbs.step is SGLDGibbs.step


def test_an_interrupted_load_changes_nothing(targets, monkeypatch):
    """A KeyboardInterrupt in the middle of load_state_dict (after the components are loaded)
    puts every part of the state back."""
    sampler = _build("one", "paper", targets)
    sampler.run(3, progress=False)
    before = sampler.state_dict()
    other = _build("one", "paper", targets)
    other.run(6, progress=False)

    original, calls = sampler.gmm.load_state_dict, []

    def interrupted_once(state):  # the load is interrupted; putting the old state back is not
        calls.append(1)
        if len(calls) == 1:
            raise KeyboardInterrupt
        original(state)

    monkeypatch.setattr(sampler.gmm, "load_state_dict", interrupted_once)
    with pytest.raises(KeyboardInterrupt):
        sampler.load_state_dict(other.state_dict())
    assert len(calls) == 2  # the undo ran
    _same_state(sampler.state_dict(), before)
    sampler.load_state_dict(other.state_dict())  # and a load that is not interrupted goes through
    _same_state(sampler.state_dict(), other.state_dict())
