"""``edgeagent demo``: the whole system on one machine, with nothing to configure.

What runs, stage by stage (each stage is a function or class returning a plain
record, so the CLI, the tests and the report read the same facts), and where:

1. :func:`.model.prepare_model` — the baseline model shipped as package data
   (``edgeagent/data/baseline.onnx``), or, where it is missing, a deterministic
   build through :mod:`edgelab.baseline` (the summary says which).
2. :func:`.fleet.start_broker` — Mosquitto as a subprocess on 127.0.0.1 with the
   fleet's TLS + ACL config (:mod:`edgelab.broker`), a broker at HOST:PORT, or
   none (then rounds run in memory through the same SecAgg+ code and the summary
   says so); :func:`.fleet.demo_pki` issues the identities.
3. :func:`.hubs.start_hubs` — per hub: a simulated patient
   (``firmware_sim.physiology``) on a serial textile served on a real pty
   (``firmware_sim.serialdev``, a few injected byte faults), read by the agent's
   ``SerialSource`` into a ``Windower`` and the detection stack the daemon uses
   (``edgeagent.daemon.wiring.detection_stack``: features, the ONNX ``Detector``
   with alerts in SQLite, the ``LocalLearner`` and the model lifecycle).
4. :class:`.ble.BleStage` — where ``dbus-daemon`` exists: a private bus, the
   BlueZ simulator with one chest strap per hub, and the agent's ``BleSource``
   through unmodified bleak. Skipped with the reason otherwise.
5. Segments and rounds (:mod:`.run`, :mod:`.rounds`) — the wearables stream one
   segment of simulated time, then one federated round runs through a
   :class:`.rounds.RoundDriver` (aggregator and box clients over MQTT, or the
   same round in memory), and the new global model is hot-swapped on every hub
   (``ModelManager``: validated, or rolled back). ``rounds + 1`` segments:
   segment 0 runs the baseline.
6. :func:`.summary.build_summary` (pure) — ledger vs. agent counters, windows,
   alerts matched to ground truth, per-round accuracy and epsilon, latencies,
   and which parts ran for real; :func:`.summary.check_summary` (pure) lists any
   figure that does not add up; :func:`.report.write_report` writes PNGs, a
   self-contained HTML page and ``summary.json``.

Modules depend one way: ``options`` <- ``summary`` <- ``report``; ``options``
<- ``model``, ``fleet``, ``hubs`` <- ``ble``, ``rounds`` <- ``run``, which alone
knows every stage. This package imports none of them itself, so reading the
defaults (``options``) stays cheap.

The simulated devices run faster than real time by default ("fast"): the
serial device sends as fast as the agent reads and agent time follows device
time. BLE runs on the wall clock whatever the pacing (the BlueZ simulator
ticks in real time), so it streams for as long as the serial segments take.
"""
