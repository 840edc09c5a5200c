"""A real single-node Apache Kafka (KRaft, broker+controller) for development and tests.

The broker's jars are resolved from Maven Central with Maven into a cache outside the repo
(`~/.cache/ledgerflow/kafka-<version>/libs`, or under `LEDGERFLOW_CACHE_DIR`), so nothing
binary lives in git and a fresh machine needs only Java 17 and Maven.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import socket
import subprocess
import tempfile
import time
import uuid
from dataclasses import dataclass, field
from pathlib import Path

from streams.cli.processes import terminate

KAFKA_VERSION = os.environ.get("LEDGERFLOW_KAFKA_VERSION", "4.1.1")
# Kafka 4.x logs through slf4j 1.7 to log4j2; the binding is not a dependency of kafka_2.13.
_LOG4J_VERSION = "2.24.3"


class LocalKafkaError(RuntimeError):
    """The local broker could not be fetched, formatted or started."""


def cache_root() -> Path:
    root = os.environ.get("LEDGERFLOW_CACHE_DIR")
    return Path(root) if root else Path.home() / ".cache" / "ledgerflow"


def jars_dir(version: str = KAFKA_VERSION) -> Path:
    return cache_root() / f"kafka-{version}" / "libs"


_POM = """<project xmlns="http://maven.apache.org/POM/4.0.0">
  <modelVersion>4.0.0</modelVersion>
  <groupId>io.ledgerflow</groupId><artifactId>kafka-broker-fetch</artifactId>
  <version>1</version><packaging>pom</packaging>
  <dependencies>
    <dependency><groupId>org.apache.kafka</groupId><artifactId>kafka_2.13</artifactId>
      <version>{kafka}</version></dependency>
    <dependency><groupId>org.apache.logging.log4j</groupId><artifactId>log4j-slf4j-impl</artifactId>
      <version>{log4j}</version></dependency>
  </dependencies>
</project>
"""


def ensure_jars(version: str = KAFKA_VERSION) -> Path:
    """Resolve Apache Kafka's broker and its runtime dependencies with Maven (once)."""
    target = jars_dir(version)
    if (target / f"kafka_2.13-{version}.jar").exists():
        return target
    mvn = shutil.which("mvn")
    if mvn is None:
        raise LocalKafkaError("Maven (mvn) is not on PATH: it is needed to fetch Apache Kafka's jars")
    target.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(prefix="ledgerflow-kafka-") as work:
        pom = Path(work) / "pom.xml"
        pom.write_text(_POM.format(kafka=version, log4j=_LOG4J_VERSION))
        partial = Path(work) / "libs"
        cmd = [
            mvn,
            "-q",
            "-B",
            "-f",
            str(pom),
            "dependency:copy-dependencies",
            f"-DoutputDirectory={partial}",
            "-DincludeScope=runtime",
        ]
        proc = subprocess.run(cmd, capture_output=True, text=True, check=False)
        if proc.returncode != 0 or not (partial / f"kafka_2.13-{version}.jar").exists():
            raise LocalKafkaError(
                f"Maven could not resolve org.apache.kafka:kafka_2.13:{version} from Maven "
                f"Central (exit {proc.returncode}):\n{proc.stdout[-2000:]}{proc.stderr[-2000:]}"
            )
        # Move into place in one step so a half-finished download is never used.
        staging = target.with_name(f"libs.{uuid.uuid4().hex}")
        shutil.copytree(partial, staging)
        try:
            staging.rename(target)
        except OSError:
            shutil.rmtree(staging, ignore_errors=True)  # another process won the race
    return target


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _port_open(port: int) -> bool:
    with contextlib.suppress(OSError), socket.create_connection(("127.0.0.1", port), timeout=0.5):
        return True
    return False


_LOG4J2 = """Configuration:
  Appenders:
    File:
      name: file
      fileName: "{log}"
      PatternLayout:
        pattern: "[%d] %p %m (%c)%n"
  Loggers:
    Root:
      level: INFO
      AppenderRef:
        - ref: file
    Logger:
      - name: kafka.request.logger
        level: WARN
"""


@dataclass
class LocalKafka:
    """One KRaft node on loopback. `start()` waits until it serves; `stop()` ends it cleanly."""

    data_dir: Path
    port: int = 0
    controller_port: int = 0
    version: str = KAFKA_VERSION
    heap: str = "512m"
    process: subprocess.Popen[bytes] | None = field(default=None, repr=False)

    @property
    def bootstrap(self) -> str:
        return f"127.0.0.1:{self.port}"

    @property
    def log_file(self) -> Path:
        return self.data_dir / "broker.log"

    def _write_config(self) -> Path:
        props = {
            "process.roles": "broker,controller",
            "node.id": "1",
            "controller.quorum.voters": f"1@127.0.0.1:{self.controller_port}",
            "listeners": f"PLAINTEXT://127.0.0.1:{self.port},CONTROLLER://127.0.0.1:{self.controller_port}",
            "advertised.listeners": f"PLAINTEXT://127.0.0.1:{self.port}",
            "controller.listener.names": "CONTROLLER",
            "inter.broker.listener.name": "PLAINTEXT",
            "listener.security.protocol.map": "PLAINTEXT:PLAINTEXT,CONTROLLER:PLAINTEXT",
            "log.dirs": str(self.data_dir / "log"),
            "num.partitions": "1",
            "offsets.topic.replication.factor": "1",
            "offsets.topic.num.partitions": "8",
            "transaction.state.log.replication.factor": "1",
            "transaction.state.log.min.isr": "1",
            "transaction.state.log.num.partitions": "8",
            "group.initial.rebalance.delay.ms": "0",
            "auto.create.topics.enable": "false",
            "log.flush.interval.ms": "1000",
        }
        path = self.data_dir / "server.properties"
        path.write_text("".join(f"{k}={v}\n" for k, v in props.items()))
        (self.data_dir / "log4j2.yaml").write_text(_LOG4J2.format(log=self.log_file))
        return path

    def _java(self, *args: str, heap: str = "256m") -> list[str]:
        java = shutil.which("java")
        if java is None:
            raise LocalKafkaError("java is not on PATH: Apache Kafka 4 needs Java 17 or newer")
        return [
            java,
            f"-Xmx{heap}",
            "-XX:+UseG1GC",
            "-XX:TieredStopAtLevel=1",
            f"-Dlog4j2.configurationFile={self.data_dir / 'log4j2.yaml'}",
            "-cp",
            str(jars_dir(self.version) / "*"),
            *args,
        ]

    def start(self, timeout: float = 60.0) -> LocalKafka:
        """Fetch jars if needed, format storage on first use, start, and wait until serving."""
        ensure_jars(self.version)
        self.data_dir.mkdir(parents=True, exist_ok=True)
        self.port = self.port or free_port()
        self.controller_port = self.controller_port or free_port()
        config = self._write_config()
        if not (self.data_dir / "log" / "meta.properties").exists():
            cluster_id = uuid.uuid4().bytes.hex()[:22]
            fmt = subprocess.run(
                self._java("kafka.tools.StorageTool", "format", "-t", cluster_id, "-c", str(config)),
                capture_output=True,
                text=True,
                check=False,
            )
            if fmt.returncode != 0:
                raise LocalKafkaError(f"formatting KRaft storage failed:\n{fmt.stdout}{fmt.stderr}")
        # A restart appends to the same log: only a "started" line written after this counts.
        log_offset = self.log_file.stat().st_size if self.log_file.exists() else 0
        out = (self.data_dir / "broker.out").open("ab")
        self.process = subprocess.Popen(
            self._java("kafka.Kafka", str(config), heap=self.heap),
            stdout=out,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise LocalKafkaError(f"broker exited with {self.process.returncode}; see {self.log_file}")
            if _port_open(self.port) and self._started_in_log(log_offset):
                return self
            time.sleep(0.1)
        self.stop()
        raise LocalKafkaError(f"broker did not start within {timeout}s; see {self.log_file}")

    def _started_in_log(self, offset: int = 0) -> bool:
        try:
            with self.log_file.open("rb") as log:
                log.seek(offset)
                text = log.read()
        except FileNotFoundError:
            return False
        return b"Kafka Server started" in text

    def stop(self, timeout: float = 30.0) -> None:
        """SIGTERM and wait (a clean shutdown); SIGKILL if it does not go in time."""
        proc, self.process = self.process, None
        terminate(proc, timeout)

    def restart(self) -> None:
        """Stop and start again on the same ports and data (a broker restart in chaos runs)."""
        self.stop()
        self.start()

    def __enter__(self) -> LocalKafka:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()
