"""The committed Pub/Sub stubs are what `make protos` makes of the vendored proto (so nobody
edits them by hand, and a proto update comes with its stubs)."""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

from tests.support import REPO

PROTO_DIR = Path("connectors/salesforce/pubsub")


def test_the_committed_stubs_match_the_vendored_proto(tmp_path: Path) -> None:
    (tmp_path / PROTO_DIR).mkdir(parents=True)
    shutil.copy(REPO / PROTO_DIR / "pubsub_api.proto", tmp_path / PROTO_DIR / "pubsub_api.proto")
    subprocess.run(
        [sys.executable, "-m", "grpc_tools.protoc", "-I.", "--python_out=.", "--pyi_out=.",
         "--grpc_python_out=.", str(PROTO_DIR / "pubsub_api.proto")],
        cwd=tmp_path, check=True, timeout=60,
    )  # fmt: skip
    for name in ("pubsub_api_pb2.py", "pubsub_api_pb2.pyi", "pubsub_api_pb2_grpc.py"):
        assert (tmp_path / PROTO_DIR / name).read_text() == (REPO / PROTO_DIR / name).read_text(), name


def test_the_service_is_salesforces() -> None:
    from connectors.salesforce.pubsub import pubsub_api_pb2 as pb

    service = pb.DESCRIPTOR.services_by_name["PubSub"]
    assert service.full_name == "eventbus.v1.PubSub"
    assert {m.name for m in service.methods} >= {"Subscribe", "GetSchema", "GetTopic", "Publish"}
    assert [f.name for f in pb.FetchRequest.DESCRIPTOR.fields] == [
        "topic_name", "replay_preset", "replay_id", "num_requested", "auth_refresh",
    ]  # fmt: skip
