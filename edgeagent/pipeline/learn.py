"""Incremental on-box training of the normal model, producing the federated update.

Why this design:

* Training runs in numpy on a private copy of the flat vector, in its own
  thread, fed through a bounded queue: ``offer`` never blocks and never
  waits for training, so detection latency is unaffected (a full queue
  drops its oldest window and counts it).
* Only the autoencoder (the "normal model") learns on the box, and only from
  windows the detector judged normal with good signal quality (``normal_ok``).
  A second guard drops windows whose reconstruction error is far above the
  recent median, so an anomaly the classifier missed cannot teach the model
  that it is normal. The classifier head stays as the federation last sent it
  (on-box labels are not trustworthy enough to train it).
* A proximal term ``prox * (w_local - w_global)`` (FedProx, Li et al. 2020,
  arXiv:1812.06127) keeps a box's model near the global one between rounds.
* ``n_k`` counts windows trained on since the last global model and
  ``delta()`` is ``w_local - w_global``; the federated client sends
  ``n_k * delta`` (see DESIGN.md section 1).
"""

from __future__ import annotations

import threading
from collections import deque
from dataclasses import dataclass

import numpy as np

from edgeagent.model.meta import ModelSpec, n_params
from edgeagent.model.nn import Adam, ae_loss_grad, ae_param_mask, standardise

#: A window whose reconstruction error exceeds this multiple of the recent median is not trained on.
POISON_FACTOR = 4.0


@dataclass
class LearnerConfig:
    """Small-box defaults; docs/model.md explains each."""

    lr: float = 5e-4
    batch: int = 16
    queue_max: int = 512
    prox: float = 0.01
    poison_factor: float = POISON_FACTOR


class LocalLearner:
    """Owns ``w_local``; fed by the detector, read by the federated client."""

    def __init__(
        self, spec: ModelSpec, w_global: np.ndarray, config: LearnerConfig | None = None
    ) -> None:
        self.spec = spec
        self.config = config or LearnerConfig()
        self._lock = threading.Lock()
        self._queue: deque[tuple[np.ndarray, np.ndarray]] = deque()
        self._cv = threading.Condition(self._lock)
        self._mask = ae_param_mask(spec)
        self._recent_err: deque[float] = deque(maxlen=128)
        # One optimiser for the learner's life: its moments carry over between rounds, as a
        # fresh Adam every round makes the first steps sign-sized on every coordinate (bias
        # correction); in the pilot's federated classifier that cost up to 8 points between
        # seeds (docs/pilot.md). reset_global only accepts vectors of this size.
        self.opt = Adam(n_params(spec), lr=self.config.lr)
        self._thread: threading.Thread | None = None
        self._stop = threading.Event()
        self.counters = {
            "offered": 0,
            "rejected_not_normal": 0,
            "rejected_outlier": 0,
            "dropped_full": 0,
            "trained": 0,
            "steps": 0,
        }
        self.reset_global(w_global)

    def reset_global(self, w_global: np.ndarray) -> None:
        """Start a new round from a new global model: ``w_local = w_global``, ``n_k = 0``,
        and forget the outlier guard's error history."""
        w = np.asarray(w_global, np.float32).copy()
        if w.shape != (n_params(self.spec),):
            raise ValueError(f"w_global must have shape ({n_params(self.spec)},), got {w.shape}")
        with self._lock:
            self.w_global = w
            self.w_local = w.copy()
            self.n_k = 0
            self._queue.clear()
            # The outlier guard's reference errors belong to the old weights: kept, they
            # would reject every window of a model with a higher error floor, for good.
            self._recent_err.clear()

    def restart(self) -> None:
        """Start over from the current global model (after the running model changed)."""
        self.reset_global(self.w_global)

    def offer(self, x: np.ndarray, mu: np.ndarray, sigma: np.ndarray, normal_ok: bool) -> None:
        """Queue a scored window for training (non-blocking; the detector's ``on_scored``)."""
        self.counters["offered"] += 1
        if not normal_ok:
            self.counters["rejected_not_normal"] += 1
            return
        z, m = standardise(np.asarray(x, np.float32)[None, :], mu, sigma)
        with self._cv:
            if len(self._queue) >= self.config.queue_max:
                self._queue.popleft()
                self.counters["dropped_full"] += 1
            self._queue.append((z[0], m[0]))
            self._cv.notify()

    @property
    def pending(self) -> int:
        return len(self._queue)

    @property
    def running(self) -> bool:
        """True while the training thread runs (the daemon's liveness reads this)."""
        return self._thread is not None and self._thread.is_alive()

    def step(self, max_batches: int = 1) -> int:
        """Train on up to ``max_batches`` queued batches; returns windows trained on."""
        done = 0
        for _ in range(max_batches):
            with self._lock:
                if not self._queue:
                    break
                k = min(self.config.batch, len(self._queue))
                rows = [self._queue.popleft() for _ in range(k)]
                w = self.w_local.copy()
                w_glob = self.w_global
            z = np.stack([r[0] for r in rows])
            m = np.stack([r[1] for r in rows])
            z, m = self._guard(w, z, m)
            if z.shape[0] == 0:
                continue
            _, g = ae_loss_grad(self.spec, w, z, m)
            g = (g + self.config.prox * (w - w_glob)) * self._mask
            with self._lock:
                if self.w_global is not w_glob:  # a new global model arrived meanwhile
                    continue
                self.opt.step_inplace(self.w_local, g)
                self.n_k += int(z.shape[0])
            self.counters["trained"] += int(z.shape[0])
            self.counters["steps"] += 1
            done += int(z.shape[0])
        return done

    def _guard(self, w: np.ndarray, z: np.ndarray, m: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        from edgeagent.model.nn import forward

        _, err = forward(self.spec, w, z, m)
        keep = np.ones(err.shape[0], bool)
        if len(self._recent_err) >= 16:
            med = float(np.median(np.asarray(self._recent_err)))
            keep = err <= self.config.poison_factor * max(med, 1e-3)
        self.counters["rejected_outlier"] += int((~keep).sum())
        self._recent_err.extend(float(e) for e in err[keep])
        return z[keep], m[keep]

    def delta(self) -> np.ndarray:
        """``w_local - w_global`` (float32), the update the federated layer aggregates."""
        with self._lock:
            return (self.w_local - self.w_global).astype(np.float32)

    def params(self) -> np.ndarray:
        """A copy of ``w_local``."""
        with self._lock:
            return self.w_local.copy()

    # -- background thread ------------------------------------------------
    def start(self) -> None:
        """Train in a daemon thread until ``stop()``."""
        if self._thread is not None:
            return
        self._stop.clear()
        self._thread = threading.Thread(target=self._run, name="edgeagent-learner", daemon=True)
        self._thread.start()

    def stop(self, timeout: float = 5.0) -> None:
        self._stop.set()
        with self._cv:
            self._cv.notify_all()
        if self._thread is not None:
            self._thread.join(timeout)
            self._thread = None

    def _run(self) -> None:
        while not self._stop.is_set():
            with self._cv:
                if len(self._queue) < self.config.batch:
                    self._cv.wait(timeout=0.5)
            if self._stop.is_set():
                break
            if len(self._queue) >= self.config.batch:
                self.step(1)
