"""The `lift-ext` command line."""
import argparse
import sys
from typing import List, Optional


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="lift-ext",
        description="Fused SGLD / online-EM kernels for LiFT (Bayesian parameter-efficient "
                    "meta fine-tuning).")
    sub = parser.add_subparsers(dest="command", required=True)
    sub.add_parser("quickstart", help="sample a Bayesian linear regression posterior with "
                                      "lift_ext.sgld_step and compare it with the exact one")
    return parser


def main(argv: Optional[List[str]] = None) -> int:
    args = build_parser().parse_args(argv)
    if args.command == "quickstart":
        from lift_ext import quickstart
        return quickstart.main()
    return 2


if __name__ == "__main__":
    sys.exit(main())
