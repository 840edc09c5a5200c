"""`GET /assignment`'s body: a worker's partitions by topic, split into stream, table and standby."""

from __future__ import annotations

from faust.types import TP

from streams.web.observability import assignment_view


def test_partitions_are_grouped_by_topic_and_kind() -> None:
    changelogs = {"ledgerflow-customers-changelog"}
    actives = [
        TP("erp.commands", 3),
        TP("erp.commands", 1),
        TP("crm.changes", 1),
        TP("ledgerflow-customers-changelog", 3),
        TP("ledgerflow-customers-changelog", 1),
    ]
    standbys = [TP("ledgerflow-customers-changelog", 0)]
    assert assignment_view(actives, standbys, changelogs) == {
        "streams": {"crm.changes": [1], "erp.commands": [1, 3]},
        "tables": {"ledgerflow-customers-changelog": [1, 3]},
        "standbys": {"ledgerflow-customers-changelog": [0]},
    }


def test_a_worker_without_partitions_says_so_with_empty_maps() -> None:
    assert assignment_view([], [], set()) == {"streams": {}, "tables": {}, "standbys": {}}
