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
    from streams import logs
    from streams.settings import settings

    logs.configure(settings.log_format, settings.log_level)  # a worker's Faust sets it up again
    use_event_loop(settings.event_loop)
    from streams.cli.main import main

    main()


def use_event_loop(name: str) -> None:
    """Make `name` the event loop of this process, before anything creates one (Faust's
    worker, its consumer thread, the sandbox ERP's server)."""
    if name == "uvloop":
        import mode.loop

        mode.loop.use("uvloop")


if __name__ == "__main__":
    run()
