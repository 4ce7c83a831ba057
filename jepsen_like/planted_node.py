"""A pykraft node with a planted bug: `python -m jepsen_like.planted_node NAME start ...`.

For real-process runs (`jepsen-like run --planted NAME`): the bug's patches from the
planted-bug library (`jepsen_like.sim.planted`) are applied in this process, then the
node runs as `pykraft-server` would. The production code carries no flag.
"""

from __future__ import annotations

import sys

from broker import cli
from jepsen_like.sim.planted import planted


def main(argv: list[str] | None = None) -> int:
    args = sys.argv[1:] if argv is None else argv
    if not args:
        print("usage: python -m jepsen_like.planted_node NAME start --config FILE", file=sys.stderr)
        return 2
    name, rest = args[0], args[1:]
    with planted(name):
        return cli.main(rest)


if __name__ == "__main__":
    sys.exit(main())
