"""`python -m streams` is the `ledgerflow` command."""

import os
import sys


def run() -> None:
    """The console script: `worker --stages ingest,core` is ours, not Faust's, so it becomes
    LEDGERFLOW_STAGES before the settings are read."""
    args = sys.argv
    if "--stages" in args[:-1]:
        at = args.index("--stages")
        os.environ["LEDGERFLOW_STAGES"] = args[at + 1]
        del args[at : at + 2]
    from streams.cli import main

    main()


if __name__ == "__main__":
    run()
