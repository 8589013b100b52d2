"""The pilot: local vs centralised vs federated learning, attacks, latency, modalities, privacy.

``edgeagent pilot`` and ``bench/pilot.py`` call :func:`run_pilot`, which
produces every figure of the results table from its own runs (nothing is
copied from the seed paper; ``PAPER`` holds the paper's numbers only to print
them beside ours). How each part runs, so the table can be read honestly:

* **Data.** Simulated non-IID patients (``firmware_sim.physiology``): one
  patient per hub, each hub's patient having only ``kinds_per_hub`` of the
  eight clinical event kinds (plus sensor faults), driven through the agent's
  own ``Windower`` and ``features.extract``. Held-out test patients (never a
  hub) have every kind. Labels come from the simulator: the pilot assumes
  hubs hold labelled windows (clinician-confirmed events), which the field
  learner does not (it trains only the normal model, see
  ``pipeline/learn.py``).
* **Training.** One model (``model.graph``/``model.nn``: classifier head +
  autoencoder, same shapes everywhere), trained from the same initial
  weights with ``model.train.fit``. *Same budget*: centralised and local-only
  training run ``rounds * local_epochs`` epochs; a federated run is
  ``rounds`` rounds of ``local_epochs`` epochs per hub.
* **Federation in-process.** Rounds run in this process with the real pure
  protocol code: n_k-weighted FedAvg (``fl.aggregate.weighted_fedavg``), the
  plaintext robust rules (``fl.robust``), and grouped secure aggregation where
  every group's sum is a real in-memory SecAgg+ round
  (``fl.secagg.simulate_round``: signed envelopes, masking, unmasking) and the
  median runs over group means. No broker in the accuracy experiments.
  Every federated run but the DP one ends with a head-calibration round
  (CCVR, ``model.head_calibration``) in which malicious hubs lie too.
* **Cohorts.** The headline rows are also trained on ``cohorts - 1`` other
  simulated cohorts (data seeds ``seed + 100 k``); the accuracy targets use
  the mean over cohorts and training seeds.
* **Evaluation.** Each model is exported to ONNX and scored by onnxruntime on
  the test patients' windows after a calibration period (the first
  ``calibration_frac`` of each patient's windows, unlabelled, which the
  personalised variant uses for its per-patient calibration,
  ``pipeline.personal.calibrate``, moved as far as the hubs' own recordings
  show a calibration period's baseline persists, and for the detector's
  personal threshold). A window is predicted clinical when the
  clinical probability reaches the (personal) threshold and the sensor-fault
  probability does not (as the detector decides, without its hysteresis);
  positive / negative / excluded windows and the metrics are
  ``edgeagent.evaluate``'s definitions.
* **Latency.** Real mosquitto (``edgelab.broker``, shipped TLS config and
  ACL plus a ``cloud`` identity for the centralised path), real ``MqttLink``
  clients, a TCP proxy adding the configured one-way delay to each direction
  of the hub's connection. Edge path: hub featurises and scores the window,
  publishes the alert (delayed hop), the cloud receives it. Centralised path:
  the hub ships the raw window (delayed hop), the cloud featurises and
  scores it and publishes the alert back (delayed hop).

Modules, each importing only those above it in this list (import-linter holds it):
``config`` (knobs, fixed tables), ``parallel`` (the worker pool), ``simulate``
(patients to windows), ``train`` (training arrays, the local fit),
``federation`` (in-process rounds), ``evaluate`` (ONNX scoring), ``latency``
(broker rig, apart from the rest), ``tasks`` (one training + evaluation job),
``summary`` (spreads, targets), ``report`` (Markdown, JSON, plots) and
``runner`` (``run_pilot``, which orders the experiments).
"""

from __future__ import annotations

from edgelab.pilot.config import MODALITIES, MODES, PAPER, PilotConfig
from edgelab.pilot.report import render_markdown, write_outputs
from edgelab.pilot.runner import run_pilot

__all__ = [
    "MODALITIES",
    "MODES",
    "PAPER",
    "PilotConfig",
    "render_markdown",
    "run_pilot",
    "write_outputs",
]
