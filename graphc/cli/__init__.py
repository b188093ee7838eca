"""The `graphc` command line. Each command lives in its own module of this package.

A module provides `add_parser(subparsers)` and `run(args) -> int`. Errors are
GraphError: printed without a traceback, exit status 2.
"""

from __future__ import annotations

import argparse
import importlib
import sys

COMMANDS = ["check", "compile", "run", "gradcheck", "train", "render", "plan", "edit", "ops"]


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="graphc",
        description="Compile neural networks written as graphs: check shapes, differentiate, "
        "build training steps, export ONNX, run on ONNX Runtime.",
    )
    parser.add_argument("--version", action="version", version="graphc 0.1.0")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    sub.required = True
    for name in COMMANDS:
        try:
            module = importlib.import_module(f"graphc.cli.{name}_cmd")
        except ModuleNotFoundError as err:
            if err.name == f"graphc.cli.{name}_cmd":
                continue
            raise
        p = module.add_parser(sub)
        p.set_defaults(_run=module.run)
    return parser


def main(argv: list[str] | None = None) -> int:
    from graphc.errors import GraphError

    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        return int(args._run(args) or 0)
    except GraphError as err:
        print(err.format(), file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("graphc: interrupted", file=sys.stderr)
        return 130
    except BrokenPipeError:
        return 0


if __name__ == "__main__":
    sys.exit(main())
