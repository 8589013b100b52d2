"""A full disk at the moment delivered rows are deleted: nothing lost, nothing sent twice.

SQLite ends the transaction by itself when COMMIT fails with a full disk; the
outbox must not then raise over it (a second ROLLBACK), and the forwarder's
thread must survive, keep the delivered ids out of the next offers, and delete
them once space is back. Real broker, real tmpfs, real WAL growth.
"""

from __future__ import annotations

import contextlib
import errno
import time
from collections.abc import Callable
from pathlib import Path

from edgeagent.ops.pki import Pki
from edgeagent.transport import topics
from edgeagent.transport.mqtt import Message, MqttLink, OutboxForwarder
from edgeagent.transport.outbox import Outbox
from edgelab.broker import Broker
from tests.plugins.mqtt import TEST_FLEET as FLEET


def _fill(path: Path) -> None:
    """Take every byte left on ``path``'s file system."""
    with open(path, "wb", buffering=0) as f:
        for size in (1 << 16, 1 << 12, 1 << 9, 1):
            with contextlib.suppress(OSError):
                while True:
                    f.write(b"\0" * size)


def _link(broker: Broker, pki: Pki, name: str, **kw: object) -> MqttLink:
    files = pki.client_files(name)
    return MqttLink(name, broker.host, broker.port, files, FLEET, identity=name,
                    status=False, **kw)  # type: ignore[arg-type]  # fmt: skip


def test_delete_on_a_full_disk_keeps_the_rows_and_the_forwarder(
    mosquitto_broker: Broker, pki: Pki, tmpfs: Callable[..., Path], tmp_path: Path
) -> None:
    state = tmpfs(tmp_path / "state", size="1m")
    ob = Outbox.in_state_dir(state)
    for i in range(40):
        ob.put(topics.alert(FLEET, "box-a"), b"x" * 512, "alert", msg_id=f"a-{i}")
    ob.checkpoint()  # an empty WAL: the deletes below need new space on the disk
    got: list[Message] = []
    with _link(mosquitto_broker, pki, "aggregator", on_message=got.append) as agg, _link(
        mosquitto_broker, pki, "box-a"
    ) as box:  # fmt: skip
        agg.subscribe(topics.node_filter(FLEET, "alert")).wait(5)
        _fill(state / "filler")
        try:
            (state / "probe").write_bytes(b"\0" * 4096)
        except OSError as exc:
            assert exc.errno == errno.ENOSPC
        fw = OutboxForwarder(ob, box)
        deadline = time.monotonic() + 10
        while len(got) < 40 and time.monotonic() < deadline:
            fw.pump_once()
            time.sleep(0.05)
        fw.flush_acks()
        assert len(got) == 40
        assert fw.ack_failures >= 1  # the delete could not be written
        assert ob.count() == 40  # ... so every row is still there
        fw.pump_once()  # delivered rows are not offered again while the delete waits
        time.sleep(0.3)
        assert len(got) == 40
        (state / "filler").unlink()
        fw.flush_acks()
        assert ob.count() == 0 and fw.delivered == 40
    assert sorted(m.msg_id for m in got) == sorted(f"a-{i}" for i in range(40))
    ob.close()
