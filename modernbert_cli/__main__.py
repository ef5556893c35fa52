"""Entry point for ``python -m modernbert_cli`` and the ``modernbert-cli`` script."""

import sys


def main() -> None:
    # Imported here so that `python -m modernbert_cli` and the console script share
    # one code path, and importing this module alone costs nothing.
    try:
        from modernbert_cli.cli import run

        code = run(sys.argv[1:])
    except KeyboardInterrupt:  # Ctrl-C outside the command itself (start-up): no traceback
        print("modernbert-cli: error: interrupted", file=sys.stderr)
        code = 130
    sys.exit(code)


if __name__ == "__main__":
    main()
