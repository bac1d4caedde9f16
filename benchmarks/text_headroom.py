"""The text suite (lift_ext.text): headroom, then the ranking of every method
(lift_ext.text.demo, as ``lift-ext demo --suite text``).

    PYTHONPATH=. python benchmarks/text_headroom.py            # default run
    PYTHONPATH=. python benchmarks/text_headroom.py --quick    # smoke run, fewer tasks and steps
    PYTHONPATH=. python benchmarks/text_headroom.py --val-headroom   # the headroom on meta-val too
"""
from __future__ import annotations

import argparse
import sys
from dataclasses import replace
from pathlib import Path

import torch

from lift_ext.text import demo


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="smoke run: 1 val / 1 test / 2 train tasks per kind")
    parser.add_argument("--val-headroom", action="store_true",
                        help="the headroom on the meta-val tasks too (not in the default run)")
    parser.add_argument("--output", default=None, help="JSON file (default results/text_headroom[_quick].json)")
    parser.add_argument("--cache", default=None, help="cache directory (default $LIFT_EXT_CACHE or ~/.cache/lift_ext)")
    parser.add_argument("--workers", type=int, default=0,
                        help="processes the ranking runs in (default 0: one per CPU; the same scores for any number)")
    args = parser.parse_args(argv)
    torch.set_num_threads(1)  # on a shared 2-core machine one thread costs the fewest CPU seconds
    output = Path(args.output or f"results/text_headroom{'_quick' if args.quick else ''}.json")
    settings = replace(demo.QUICK if args.quick else demo.Settings(), val_headroom=args.val_headroom)
    demo.run(settings, output, cache=args.cache, workers=args.workers)
    return 0


if __name__ == "__main__":
    sys.exit(main())
