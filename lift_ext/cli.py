"""The `lift-ext` command line.

    lift-ext quickstart                       the library on a Bayesian linear regression (core)
    lift-ext demo | meta-train | adapt | evaluate
                                              the Shakespeare benchmark (lift_ext.shakespeare,
                                              optional extra `shakespeare`)
    lift-ext --version

Errors a user can cause print one line `lift-ext: error: ...` and exit with 2.
"""
import argparse
import sys
from typing import List, Optional

from lift_ext import __version__
from lift_ext.shakespeare import cli as benchmark_cli


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="lift-ext",
        description="LiFT (Bayesian parameter-efficient meta fine-tuning): fused SGLD / online-EM "
                    "kernels and an offline Shakespeare meta fine-tuning benchmark.",
        epilog=benchmark_cli.CONFIG_HELP, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--version", action="version", version=f"lift_ext {__version__}")
    sub = parser.add_subparsers(dest="command", required=True)
    sub.add_parser("quickstart", help="sample a Bayesian linear regression posterior with "
                                      "lift_ext.sgld_step and compare it with the exact one")
    benchmark_cli.add_commands(sub)
    return parser


def main(argv: Optional[List[str]] = None) -> int:
    args = build_parser().parse_args(argv)
    if args.command == "quickstart":
        from lift_ext import quickstart
        return quickstart.main()
    return benchmark_cli.run(args)


if __name__ == "__main__":
    sys.exit(main())
