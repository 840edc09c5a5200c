"""The `ledgerflow` command (`streams.cli.main`), one module per command, thin over the code it
drives; and the local broker and child processes that `dev` and the tests start."""
