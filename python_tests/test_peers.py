"""The library-based peers (lift_ext.peers; the Shakespeare side in lift_ext.shakespeare.peers, .library): the
library's budget and independence, MBC's clustering of directions and its routing by support
loss, LoRA-Retriever's top-k and weights, on a bigram model small enough to train in a test."""
from types import SimpleNamespace

import pytest
import torch

from lift_ext import peers
from lift_ext.lift import FlatParams, TensorTask
from lift_ext.shakespeare import methods as M
from lift_ext.shakespeare import peers as shakespeare_peers
from lift_ext.shakespeare.config import (
    BenchConfig,
    ConfigError,
    candidate_name,
    candidates,
)
from lift_ext.shakespeare.methods import window_loss

V = 6  # vocabulary


class Bigram(torch.nn.Module):
    """logits[b, t] = table[input_ids[b, t]] (the adapter, V x V), hidden features a fixed
    one-hot embedding of the input (not adapted): the interface of the benchmark's GPT-2."""

    def __init__(self):
        super().__init__()
        self.table = torch.nn.Parameter(torch.zeros(V, V))

    def forward(self, input_ids, output_hidden_states=False):
        hidden = torch.nn.functional.one_hot(input_ids, V).float()
        return SimpleNamespace(logits=self.table[input_ids], hidden_states=(hidden,) if output_hidden_states else None)


def _role(target: int, inputs=None, n=12, length=5, batch=1) -> TensorTask:
    """A role whose every target is ``target`` (inputs all token ``inputs``, default random)."""
    gen = torch.Generator().manual_seed(target)
    x = torch.randint(V, (n, length), generator=gen) if inputs is None else torch.full((n, length), inputs)
    return TensorTask(x, torch.full((n, length), target), batch_size=batch, examples_per_row=length)


def _flat():
    return FlatParams(Bigram())


def test_library_budget_is_lifts_per_role_visits():
    # the family suite's defaults: 400 steps x 8 tasks of 1 window over 128 roles = 25 visits each
    assert peers.library_steps(400, 8, 1, 128) == 25
    # the roles suite: 1500 steps x 1 task of 8 windows over 128 roles
    assert peers.library_steps(1500, 8, 8, 128) == 12
    assert peers.library_steps(10, 8, 8, 1000) == 1  # at least one step
    with pytest.raises(ValueError, match="n_tasks"):
        peers.library_steps(400, 8, 1, 0)
    assert [peers.cluster_steps(400, n, 128) for n in (40, 30, 35, 23)] == [125, 94, 109, 72]


def test_library_trains_each_role_alone_with_its_budget(monkeypatch):
    flat, tasks = _flat(), [_role(t, batch=2) for t in (1, 3, 5)]
    calls = []
    real = flat.loss_and_grad

    def counting(theta, loss_fn):
        calls.append(1)
        return real(theta, loss_fn)
    monkeypatch.setattr(flat, "loss_and_grad", counting)
    init = flat.vector.detach().clone()
    library = peers.train_library(flat, tasks, window_loss, init, steps=7, lr=0.05, seed=0, progress=False)
    assert library.shape == (3, V * V) and len(calls) == 3 * 7
    # each row learned only its own role's target: every input now predicts that token
    for row, target in zip(library, (1, 3, 5)):
        assert (row.view(V, V).argmax(1) == target).all()
    assert torch.equal(flat.vector, init)  # the shared buffer is left alone


def test_kmeans_on_directions_not_norms():
    a, b = torch.tensor([1.0, 0.0]), torch.tensor([0.0, 1.0])
    x = torch.stack([a, 100 * a + 10 * b, b, 10 * a + 100 * b])
    # k-means of the raw vectors mixes the directions (the norms dominate the distances);
    # MBC's k-means of the normalised vectors separates them
    assert peers.kmeans(x, 2, seed=0).tolist() != [0, 0, 1, 1]
    for seed in range(5):
        labels = peers.cluster_library(x, 2, seed)
        assert labels.tolist() == [0, 0, 1, 1]
    assert peers.cluster_purity(torch.tensor([0, 0, 1, 1]), [2, 2, 2, 3]) == 0.75
    assert peers.kmeans(x, 9, seed=0).unique().numel() == 4  # C > N: N clusters


def test_cluster_adapters_union_budget_and_routing_by_support_loss(monkeypatch):
    flat = _flat()
    tasks = [_role(1, batch=2), _role(1, batch=2), _role(1, batch=2), _role(4, batch=2)]
    labels = torch.tensor([0, 0, 0, 1])
    init = flat.vector.detach().clone()
    steps = []
    real = peers.baselines.train_multitask

    def spy(flat_, members, loss_fn, init_, **kw):
        steps.append((len(members), kw["steps"]))
        return real(flat_, members, loss_fn, init_, **kw)
    monkeypatch.setattr(peers.baselines, "train_multitask", spy)
    adapters = peers.train_cluster_adapters(flat, tasks, labels, window_loss, init, meta_steps=40, lr=0.05, seed=0, progress=False)
    assert steps == [(3, 30), (1, 10)]  # each cluster's share of the 40-step budget
    assert (adapters[0].view(V, V).argmax(1) == 1).all() and (adapters[1].view(V, V).argmax(1) == 4).all()
    state = M.MetaState(init=init, clusters={2: adapters})
    for target, expected in ((4, 1), (1, 0)):
        start = M.start_vector("mbc", state, flat, _role(target), family=0, option=2)
        assert torch.equal(start, adapters[expected])
    with pytest.raises(ValueError, match="option"):
        M.start_vector("mbc", state, flat, _role(4), family=0)


def test_retrieve_top_k_weights():
    keys = torch.tensor([[1.0, 0.0], [0.0, 1.0], [1.0, 1.0], [-1.0, 0.1]])
    idx, w = peers.retrieve(torch.tensor([1.0, 0.2]), keys, 2)
    assert idx.tolist() == [0, 2] and float(w.sum()) == pytest.approx(1.0) and w[0] > w[1] > 0
    cos = torch.nn.functional.cosine_similarity(keys[[0, 2]], torch.tensor([[1.0, 0.2]]))
    assert torch.allclose(w.float(), cos / cos.sum())
    idx, w = peers.retrieve(torch.tensor([-1.0, 0.0]), keys, 10)  # k > N: all; negatives weigh 0
    assert idx[0] == 3 and len(idx) == 4 and float(w.sum()) == pytest.approx(1.0) and float(w[-1]) == 0.0
    idx, w = peers.retrieve(torch.tensor([0.0, -1.0]), keys[:2], 2)  # all <= 0: uniform
    assert torch.allclose(w, torch.full((2,), 0.5, dtype=w.dtype))
    library = torch.arange(8.0).view(4, 2)
    merged = peers.merge(library, torch.tensor([1, 3]), torch.tensor([0.25, 0.75]))
    assert torch.allclose(merged, 0.25 * library[1] + 0.75 * library[3])
    with pytest.raises(ValueError, match="k must"):
        peers.retrieve(torch.ones(2), keys, 0)


def test_retrieval_start_merges_the_roles_with_the_closest_inputs():
    flat = _flat()
    init = flat.vector.detach().clone()
    pools = [(torch.full((4, 5), i), torch.zeros(4, 5, dtype=torch.int64)) for i in range(V)]
    keys = shakespeare_peers.role_keys(flat, init, pools)
    assert torch.allclose(keys, torch.eye(V))  # pooled one-hot features of each role's inputs
    library = torch.randn(V, V * V, generator=torch.Generator().manual_seed(0))
    state = M.MetaState(init=init, library=library, keys=keys)
    start = M.start_vector("retrieval", state, flat, _role(0, inputs=2), family=0, option=1)
    assert torch.equal(start, library[2])
    # support inputs half token 1, half token 4: k = 2 retrieves both, equally weighted
    x = torch.cat([torch.full((2, 5), 1), torch.full((2, 5), 4)])
    task = TensorTask(x, torch.zeros_like(x), batch_size=4, examples_per_row=5)
    start = M.start_vector("retrieval", state, flat, task, family=0, option=2)
    assert torch.allclose(start, (library[1] + library[4]) / 2)


def test_options_are_chosen_on_meta_val_with_the_lr():
    cfg = BenchConfig(mbc_clusters=[2, 8], retrieval_k=[3], adapt_lrs=[1e-3, 1e-4])
    assert candidates(cfg, "mbc") == [(2, 1e-3), (2, 1e-4), (8, 1e-3), (8, 1e-4)]
    assert candidates(cfg, "retrieval") == [(3, 1e-3), (3, 1e-4)]
    assert candidates(cfg, "lift") == [(None, 1e-3), (None, 1e-4)]
    assert candidates(cfg, "backbone") == [(None, 1e-3)]
    assert candidate_name("mbc", 8, 1e-4) == "C=8, lr=0.0001" and candidate_name("lift", None, 1e-3) == "0.001"
    # k only matters at adaptation: the meta-train stage file is reused across k
    other = BenchConfig(mbc_clusters=[2, 8], retrieval_k=[1, 5], adapt_lrs=[1e-3, 1e-4])
    assert cfg.fingerprint("meta-train") == other.fingerprint("meta-train") != BenchConfig().fingerprint("meta-train")
    assert cfg.fingerprint("adapt") != other.fingerprint("adapt")
    for key, value in (("mbc_clusters", []), ("mbc_clusters", [0]), ("retrieval_k", [2, 2]), ("retrieval_k", 4)):
        with pytest.raises(ConfigError, match=key):
            BenchConfig.from_dict({key: value})
