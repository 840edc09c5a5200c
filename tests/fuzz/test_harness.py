"""The atheris harness stays runnable: its checks pass on every seed and on a short plain run
(the long coverage-guided run is by hand, see docs/development.md, "Fuzzing")."""

from __future__ import annotations

from tests.fuzz import fuzz_adapters


def test_every_target_has_seeds_that_pass_its_check() -> None:
    assert {t.name for t in fuzz_adapters.TARGETS} >= {"billing.changes", "erp.commands", "crm.writeback"}
    for target in fuzz_adapters.TARGETS:
        assert target.seeds, target.name
        for raw in target.seeds:
            target.check(raw)


def test_a_short_plain_run() -> None:
    assert fuzz_adapters.plain(2_000, seed=8) == 2_000
