"""`ledgerflow bench`: the harness (`bench.harness`), its peers (`bench/peers/`, run as
scripts) and its results."""
