"""The ``prunetax`` command line.

Each subcommand lives in ``benchmarks/commands/<name>.py`` and exposes ``HELP`` (one line),
``add_arguments(parser)`` and ``run(args) -> int``. Bad input raises ``PrunetaxError``; this
module prints it on one line and exits with code 2.
"""
from __future__ import annotations

import argparse
import importlib
import sys

from prunetax.taxonomy.errors import PrunetaxError

COMMANDS = ("list", "enumerate", "describe", "structure", "train", "saliency", "bench", "leaderboard", "plot",
            "effects", "similarity")


class _Parser(argparse.ArgumentParser):
    def error(self, message: str) -> None:  # one line, exit 2, like every other bad input
        self.exit(2, f"{self.prog}: error: {message}\n")


def _available_commands():
    for name in COMMANDS:
        try:
            yield name, importlib.import_module(f"prunetax.benchmarks.commands.{name}")
        except ModuleNotFoundError as exc:
            if exc.name != f"prunetax.benchmarks.commands.{name}":
                raise


def build_parser() -> argparse.ArgumentParser:
    from prunetax.benchmarks._version import __version__

    parser = _Parser(
        prog="prunetax",
        description="Enumerate, compute and benchmark channel-pruning saliency metrics.",
    )
    parser.add_argument("--version", action="version", version=f"prunetax {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", parser_class=_Parser)
    for name, module in _available_commands():
        p = sub.add_parser(name, help=module.HELP, description=module.HELP)
        module.add_arguments(p)
        p.add_argument("--import", dest="imports", action="append", default=[], metavar="MODULE",
                       help="import MODULE first (a module importable from here, or a .py file) so that the "
                            "models, data sets and components it registers can be used; repeatable. Installed "
                            "packages' 'prunetax' entry points are imported always (docs/plugins.md)")
        p.set_defaults(_run=module.run)
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if not getattr(args, "_run", None):
        parser.print_help()
        return 2
    try:
        from prunetax.benchmarks.plugins import load_plugins
        load_plugins(args.imports)  # the user's registrations, before anything names them
        return int(args._run(args) or 0)
    except PrunetaxError as exc:
        print(f"prunetax {args.command}: error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print(f"prunetax {args.command}: interrupted", file=sys.stderr)
        return 130
    except BrokenPipeError:
        return 0


if __name__ == "__main__":
    sys.exit(main())
