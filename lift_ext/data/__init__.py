"""Task data sets for meta fine-tuning benchmarks.

    lift_ext.data.shakespeare.load_benchmark(...)   LEAF-like Shakespeare role tasks (offline)
"""
from lift_ext.data import shakespeare  # noqa: F401
from lift_ext.data.shakespeare import (CharVocab, RoleTask, ShakespeareBenchmark, load_benchmark,
                                       load_corpus)

__all__ = ["shakespeare", "CharVocab", "RoleTask", "ShakespeareBenchmark", "load_benchmark",
           "load_corpus"]
