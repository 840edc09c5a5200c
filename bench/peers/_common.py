"""What both reference pipelines share: their settings (environment variables set by
`ledgerflow bench`) and the stats file each writes once it has handled its whole input."""

from __future__ import annotations

import os
import resource
import time
from dataclasses import dataclass
from pathlib import Path

import orjson


@dataclass(frozen=True)
class PeerConfig:
    """BENCH_BOOTSTRAP, BENCH_INPUTS (comma-separated topics), BENCH_OUTPUT, BENCH_GROUP,
    BENCH_EXPECT (input messages to handle), BENCH_STATS (where to write the stats),
    BENCH_DATA_DIR (local state)."""

    bootstrap: str
    inputs: tuple[str, ...]
    output: str
    group: str
    expect: int
    stats_path: Path
    data_dir: Path

    @classmethod
    def from_env(cls) -> PeerConfig:
        env = os.environ
        return cls(
            bootstrap=env["BENCH_BOOTSTRAP"],
            inputs=tuple(t for t in env["BENCH_INPUTS"].split(",") if t),
            output=env["BENCH_OUTPUT"],
            group=env["BENCH_GROUP"],
            expect=int(env["BENCH_EXPECT"]),
            stats_path=Path(env["BENCH_STATS"]),
            data_dir=Path(env["BENCH_DATA_DIR"]),
        )


def peak_rss_mb() -> float:
    """This process's peak resident set: VmHWM on Linux, getrusage's maximum elsewhere."""
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) / 1024
    except OSError:
        pass
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def cpu_seconds() -> float:
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


class Progress:
    """Counts handled input messages; at the expected count it writes the stats, once."""

    def __init__(self, config: PeerConfig) -> None:
        self.config = config
        self.events = 0
        self.outputs = 0
        self.first_at = 0.0
        self.last_at = 0.0
        self.written = False

    def began(self) -> None:
        """The first input message was consumed (the clock starts)."""
        if not self.first_at:
            self.first_at = time.time()

    def handled(self, events: int = 1, outputs: int = 0) -> bool:
        """Record handled input and produced output; True once the whole input is handled."""
        now = time.time()
        if not self.first_at:
            self.first_at = now
        self.events += events
        self.outputs += outputs
        self.last_at = now
        if self.events >= self.config.expect and not self.written:
            self.write()
        return self.written

    def write(self) -> None:
        stats = {
            "events": self.events,
            "outputs": self.outputs,
            "first_at": self.first_at,
            "last_at": self.last_at,
            "peak_rss_mb": round(peak_rss_mb(), 1),
            "cpu_s": round(cpu_seconds(), 2),
            "pid": os.getpid(),
        }
        # Written whole, then renamed: the bench never reads half a file.
        partial = self.config.stats_path.with_suffix(".partial")
        partial.write_bytes(orjson.dumps(stats))
        partial.replace(self.config.stats_path)
        self.written = True
