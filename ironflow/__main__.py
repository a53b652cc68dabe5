"""``python -m ironflow``: the command line."""

from ironflow.cli import main

if __name__ == "__main__":
    main()
