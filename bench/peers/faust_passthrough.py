"""The framework's own cost: a bare Faust agent forwarding each Stripe message unchanged.

Faust's defaults throughout (one agent, event-at-a-time iteration, attached sends), except
what a benchmark run needs to be isolated: its own group, data dir, and no web server (the
default port would clash with a ledgerflow worker on the same machine). Run by
`ledgerflow bench` as `python bench/peers/faust_passthrough.py worker -l warning`, configured
by the BENCH_* variables (see `_common.PeerConfig`).
"""

from __future__ import annotations

from typing import Any

import faust
from _common import PeerConfig, Progress

config = PeerConfig.from_env()
progress = Progress(config)

app = faust.App(
    config.group,
    broker=f"kafka://{config.bootstrap}",
    datadir=str(config.data_dir),
    web_enabled=False,
)
source = app.topic(*config.inputs, key_serializer="raw", value_serializer="raw")
forwarded = app.topic(config.output, key_serializer="raw", value_serializer="raw")


@app.agent(source)
async def forward(stream: Any) -> None:
    """Each message, as it came, to the output topic."""
    async for key, value in stream.items():
        await forwarded.send(key=key, value=value)
        progress.handled(1, 1)


if __name__ == "__main__":
    app.main()
