"""The ``jaxreprog`` command: show the taxonomy, run the demo, run a recipe.

Exit codes: 0 success; 2 a usage or input error (a bad recipe, argument, weights file or
dataset), printed as one line naming what to fix; 1 a failure while running (e.g. the
loss became NaN), also one line. ``--debug`` shows the traceback instead.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence


def _taxonomy(args: argparse.Namespace) -> int:
    import jaxreprog as jr

    table = jr.taxonomy.table()
    print(table.markdown() if args.markdown else table)
    print(f"\n{len(table)} methods registered.")
    return 0


def _demo(args: argparse.Namespace) -> int:
    from jaxreprog import demo

    return demo.main(quick=args.quick, out=args.out, seed=args.seed)


def _run(args: argparse.Namespace) -> int:
    from jaxreprog import recipes

    if args.list or args.recipe is None:
        for name in recipes.names():
            r = recipes.load(name)
            print(f"{name:34s} {'offline' if r.offline else 'network'}  {r.description}")
        return 0
    recipe = recipes.load(args.recipe, overrides=args.set)
    if args.check:
        print(f"{recipe.source}: valid ({'offline' if recipe.offline else 'needs network access'})")
        return 0
    if not recipe.offline:
        print(f"note: {recipe.note}", file=sys.stderr)
    try:
        result = recipes.run(recipe, out=args.out, progress=None if args.progress is None else args.progress)
    except RuntimeError as e:  # a TFDS dataset that cannot be prepared here (offline), with its fix
        raise _InputError(str(e)) from e
    print(result.table())
    print(f"train {result.train_seconds:.0f} s; never selected on the test set" + (
        f"; wrote {args.out}" if args.out else ""))  # fmt: skip
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="jaxreprog", description="Reprogram frozen pretrained models in JAX: y = O ∘ f ∘ I(x, c)."
    )
    sub = parser.add_subparsers(dest="command", required=True)

    p = sub.add_parser("taxonomy", help="print the executable taxonomy of registered methods")
    p.add_argument("--markdown", action="store_true", help="print a markdown table")
    p.set_defaults(run=_taxonomy)

    p = sub.add_parser("demo", help="reprogram a real ImageNet model into an MNIST classifier, offline")
    p.add_argument("--quick", action="store_true", help="a < 60 s version")
    p.add_argument("--out", default="jaxreprog-demo", help="folder for the prompt PNG and checkpoint")
    p.add_argument("--seed", type=int, default=0)
    p.set_defaults(run=_demo)

    p = sub.add_parser("run", help="run a recipe: a packaged name (see --list) or a .toml/.yaml file")
    p.add_argument("recipe", nargs="?", help="packaged recipe name or path")
    p.add_argument("--set", action="append", default=[], metavar="KEY=VALUE", help="override, e.g. epochs=2")
    p.add_argument("--out", default=None, help="folder for results.json, prompt PNGs and checkpoints")
    p.add_argument("--list", action="store_true", help="list the packaged recipes")
    p.add_argument("--check", action="store_true", help="validate the recipe and exit")
    p.add_argument("--progress", action=argparse.BooleanOptionalAction, default=None, help="progress bar")
    p.set_defaults(run=_run)

    parser.add_argument("--version", action="version", version=f"%(prog)s {_version()}")
    parser.add_argument("--debug", action="store_true", help="show tracebacks instead of one-line errors")

    args = parser.parse_args(argv)
    try:
        return args.run(args)
    except BrokenPipeError:  # `jaxreprog run --list | head`: the reader left; end quietly
        sys.stderr = None  # type: ignore[assignment]  (Python's exit flush would report it again)
        return 0
    except KeyboardInterrupt:
        print(f"jaxreprog {args.command}: interrupted", file=sys.stderr)
        return 130
    except Exception as e:
        if args.debug:
            raise
        code = 2 if isinstance(e, _INPUT_ERRORS) else 1
        print(f"jaxreprog {args.command}: error: {_one_line(e)}", file=sys.stderr)
        return code


class _InputError(Exception):
    """An input the user can fix (exit code 2)."""


# What a user's input causes (a bad recipe, argument, weights file, dataset or folder): exit 2.
_INPUT_ERRORS = (_InputError, ValueError, TypeError, KeyError, ImportError, OSError)


def _one_line(e: BaseException, limit: int = 500) -> str:
    """The first line of an error message, at most ``limit`` characters (never an unbounded repr)."""
    lines = str(e).strip().splitlines()
    text = lines[0] if lines else type(e).__name__
    if isinstance(e, KeyError | OSError) and not isinstance(e, FileNotFoundError | NotADirectoryError):
        text = f"{type(e).__name__}: {text}"
    return text if len(text) <= limit else text[: limit - 1] + "…"


def _version() -> str:
    from jaxreprog import __version__

    return __version__


if __name__ == "__main__":
    sys.exit(main())
