"""Offline Shakespeare meta fine-tuning benchmark: LiFT against its baselines.

    config    BenchConfig (JSON), METHODS, quick_config
    episodes  role pools as tasks, support/query episodes
    methods   meta-training of each method and its adaptation to a test role
    runner    the meta-train / adapt / evaluate stages and their files
    report    results.json, results.md, results.png
"""
from lift_ext.bench.config import METHODS, BenchConfig, ConfigError, quick_config

__all__ = ["METHODS", "BenchConfig", "ConfigError", "quick_config"]
