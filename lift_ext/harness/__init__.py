"""The benchmark harness shared by the vision and text suites (docs/benchmark.md, "Harness").

A suite supplies a `BenchSuite`: its adapter (a FlatParams over the pre-trained, frozen
backbone with peft LoRA and a classification head), the initial adapter, the loss, the head's
coordinates, and its tasks split by task into meta-train / meta-val / meta-test, each task a
`BenchTask` (support set per seed, meta-training pool and episodes, query rows) and a
logits function. The harness supplies the rest, the same for every suite: the methods
(`methods`: independent fine-tuning, multitask, Reptile, FO-MAML, LiFT with K components and
with K = 1, all adapted with one MapConfig; LiFT with pSGLD samples and LiFT with temperature
scaling; MBC and LoRA-Retriever as published, `peers`), stopping and resuming (`progress`), the query scores (`scoring`: accuracy, NLL, Brier score, ECE), the paired statistics
(`stats`) and the tables, reliability diagram and machine record (`report`).
"""
from lift_ext.harness.methods import METHODS, START_METHODS, LiftSettings, MethodSettings, meta_train, ranking
from lift_ext.harness.suite import BenchSuite, BenchTask

__all__ = ["BenchSuite", "BenchTask", "METHODS", "START_METHODS", "LiftSettings", "MethodSettings", "meta_train",
           "ranking"]
