"""The ``jaxreprog`` command: show the taxonomy, run the demo, run a recipe."""

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

    args = parser.parse_args(argv)
    try:
        return args.run(args)
    except (ValueError, FileNotFoundError, ImportError, KeyError) as e:
        print(f"jaxreprog {args.command}: error: {e}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
