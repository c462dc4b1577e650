"""`python -m taskmesh._base`: print the table of taskmesh's environment variables as
Markdown; `--write README.md` rewrites README's generated section with it."""

from __future__ import annotations

import sys
from pathlib import Path

from taskmesh._base import config


def main(argv: list[str]) -> int:
    if not argv:
        print(config.markdown_table())
        return 0
    if len(argv) == 2 and argv[0] == "--write":
        path = Path(argv[1])
        path.write_text(config.with_table(path.read_text()))
        return 0
    print("usage: python -m taskmesh._base [--write README.md]", file=sys.stderr)
    return 2


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
