"""``python -m sync`` is the ``bpsync`` command."""

from sync.cli.main import main

if __name__ == "__main__":
    main()
