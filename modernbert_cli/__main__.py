"""Entry point for ``python -m modernbert_cli`` and the ``modernbert-cli`` script."""

import sys


def main() -> None:
    # Imported here so that `python -m modernbert_cli` and the console script share
    # one code path, and importing this module alone costs nothing.
    from modernbert_cli.cli import run

    sys.exit(run(sys.argv[1:]))


if __name__ == "__main__":
    main()
