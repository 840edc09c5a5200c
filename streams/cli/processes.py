"""Child processes of the dev stack and the tests: wait for a log line, stop cleanly."""

from __future__ import annotations

import os
import signal
import subprocess
import time
from pathlib import Path


class ProcessFailed(RuntimeError):
    """A child process exited, or did not get ready in time."""


def wait_for_log(
    log: Path, text: str, proc: subprocess.Popen[bytes], timeout: float, offset: int = 0
) -> float:
    """Seconds until `text` appears in `log` past byte `offset` (a restarted process appends to
    its predecessor's log); raises if `proc` exits or time runs out."""
    started = time.monotonic()
    while time.monotonic() - started < timeout:
        if proc.poll() is not None:
            raise ProcessFailed(f"process exited with {proc.returncode}; see {log}")
        if log.exists() and text.encode() in log.read_bytes()[offset:]:
            return time.monotonic() - started
        time.sleep(0.1)
    raise ProcessFailed(f"{text!r} did not appear in {log} within {timeout}s")


def terminate(proc: subprocess.Popen[bytes] | None, timeout: float = 30.0) -> None:
    """SIGTERM and wait (a clean shutdown); SIGKILL the process group if it does not go."""
    if proc is None or proc.poll() is not None:
        return
    proc.send_signal(signal.SIGTERM)
    try:
        proc.wait(timeout)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait(10)
