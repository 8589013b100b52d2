"""Incremental on-box training, producing the federated update.

Why this design:

* Training runs in numpy on a private copy of the flat vector, in its own
  thread, fed through bounded queues: ``offer`` and ``offer_labelled`` never
  block and never wait for training, so detection latency is unaffected (a
  full queue drops its oldest window and counts it).
* Two things learn on the box, each on its own parameter group
  (``model.meta.PARAM_GROUPS``):

  - the autoencoder ("ae", the normal model) from windows the detector judged
    normal with good signal quality (``offer``, ``normal_ok``). A guard drops
    windows whose reconstruction error is far above the recent median, so an
    anomaly the classifier missed cannot teach the model that it is normal;
  - the classifier head ("head") from windows a clinician labelled
    (``offer_labelled``): a confirmed alert with its kind, or a dismissed one
    as ``"normal"``. Dismissals are the most valuable labels there are: they
    are the false alarms, and no other signal on the box can name them. A
    clinician's verdict is trustworthy in a way the detector's own confident
    detections are not (those only teach the head what it already believes).
    The defence against a wrong or malicious verdict is not to distrust all
    of them but to bound each one's weight: a per-round budget of new
    labelled windows here (beyond it they are refused and counted), a rate
    limit per patient where verdicts are taken, the proximal term below, and
    the robust aggregation rules on the server.

* Labels are rare, so each labelled window is kept in a bounded pool (most
  recent ``label_pool``) and replayed ``label_epochs`` times per round, as a
  federated client keeps its local data between rounds; the head has its own
  Adam so its steps do not share moments or bias correction with the
  autoencoder's far more frequent ones.
* A proximal term ``prox * (w_local - w_global)`` (FedProx, Li et al. 2020,
  arXiv:1812.06127) keeps a box's model near the global one between rounds.
* ``n_k`` counts, since the last global model, the normal windows trained on
  plus each distinct labelled window once (however often it was replayed):
  a box's weight in FedAvg follows how much data it saw, not how many passes.
  ``delta()`` is ``w_local - w_global`` over every coordinate; only the groups
  in ``trained_groups()`` (mask: ``trained_mask()``) can be non-zero, and the
  federated layer sends just the coordinates the round announced (see
  DESIGN.md section 1).
"""

from __future__ import annotations

import threading
from collections import deque
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from edgeagent.model.meta import ModelSpec, n_params
from edgeagent.model.nn import (
    Adam,
    ae_loss_grad,
    group_mask,
    head_loss_grad,
    standardise,
)

#: A window whose reconstruction error exceeds this multiple of the recent median is not trained on.
POISON_FACTOR = 4.0
#: A rare labelled class weighs at most this many times a common one per window.
LABEL_BALANCE_CAP = 10.0


@dataclass
class LearnerConfig:
    """Small-box defaults; docs/model.md explains each.

    The labelled-window settings: ``label_budget`` new labelled windows per
    round at most (an alert brings up to 32 windows, ``feedback.windows_per_alert``,
    so 256 is eight verdicts a round: a busy ward's worth, while a flood of
    verdicts cannot outweigh everything else); ``label_pool`` labelled windows
    kept and replayed across rounds (512 x 3 x 42 floats is ~260 KB);
    ``label_epochs`` passes over each per round (rare labels are worth several;
    more overfits a handful of windows); ``head_lr`` the head's own learning
    rate; ``label_balance`` equal total weight per labelled class (off, see
    ``_label_weights``).
    """

    lr: float = 5e-4
    batch: int = 16
    queue_max: int = 512
    prox: float = 0.01
    poison_factor: float = POISON_FACTOR
    head_lr: float = 1e-3
    label_budget: int = 256
    label_pool: int = 512
    label_epochs: int = 4
    label_batch: int = 16
    label_balance: bool = False


@dataclass
class _Labelled:
    """One labelled window as the head reads it, with its passes this round."""

    z: np.ndarray
    m: np.ndarray
    zp: np.ndarray
    y: int
    done: int = 0


@dataclass
class _Round:
    """What the learner did since the last global model."""

    ae_steps: int = 0
    head_steps: int = 0
    labelled_new: int = 0
    groups: set[str] = field(default_factory=set)


class LocalLearner:
    """Owns ``w_local``; fed by the detector and by clinicians' verdicts, read by the
    federated client.

    Thread model: ``offer``/``offer_labelled`` run on the caller's thread,
    training on one thread (``start``) or the caller's (``step``); every piece
    of shared state is read and written under ``self._lock``, and gradients
    are computed outside it on copies.
    """

    def __init__(
        self,
        spec: ModelSpec,
        w_global: np.ndarray,
        config: LearnerConfig | None = None,
        pop: tuple[Sequence[float] | np.ndarray, Sequence[float] | np.ndarray] | None = None,
    ) -> None:
        """``pop``: the model's ``(pop_mu, pop_sigma)``; the head reads the window on that
        scale too (``model.graph``), so without it labelled windows are refused."""
        self.spec = spec
        self.config = config or LearnerConfig()
        self.classes: tuple[str, ...] = tuple(spec.classes)
        self.pop = (
            None
            if pop is None
            else (np.asarray(pop[0], np.float32).ravel(), np.asarray(pop[1], np.float32).ravel())
        )
        self._lock = threading.Lock()
        self._queue: deque[tuple[np.ndarray, np.ndarray]] = deque()
        self._labelled: deque[_Labelled] = deque(maxlen=max(1, self.config.label_pool))
        self._cv = threading.Condition(self._lock)
        self._mask = group_mask(spec, ("ae",))
        self._head_mask = group_mask(spec, ("head",))
        self._recent_err: deque[float] = deque(maxlen=128)
        # One optimiser per group for the learner's life: its moments carry over between rounds,
        # as a fresh Adam every round makes the first steps sign-sized on every coordinate (bias
        # correction); in the pilot's federated classifier that cost up to 8 points between
        # seeds (docs/pilot.md). reset_global only accepts vectors of this size.
        self.opt = Adam(n_params(spec), lr=self.config.lr)
        self.head_opt = Adam(n_params(spec), lr=self.config.head_lr)
        self._thread: threading.Thread | None = None
        self._stop = threading.Event()
        self._round = _Round()
        self.counters = {
            "offered": 0,
            "rejected_not_normal": 0,
            "rejected_outlier": 0,
            "dropped_full": 0,
            "trained": 0,
            "steps": 0,
            "labelled_offered": 0,
            "labelled_accepted": 0,
            "labelled_unknown_class": 0,
            "labelled_over_budget": 0,
            "labelled_bad_window": 0,
            "labelled_no_population": 0,
            "labelled_trained": 0,
            "head_steps": 0,
        }
        self.reset_global(w_global)

    def reset_global(self, w_global: np.ndarray) -> None:
        """Start a new round from a new global model: ``w_local = w_global``, ``n_k = 0``,
        and forget the outlier guard's error history. The labelled pool is kept (it is
        this box's data, replayed again next round)."""
        w = np.asarray(w_global, np.float32).copy()
        if w.shape != (n_params(self.spec),):
            raise ValueError(f"w_global must have shape ({n_params(self.spec)},), got {w.shape}")
        with self._lock:
            self.w_global = w
            self.w_local = w.copy()
            self.n_k = 0
            self._queue.clear()
            self._round = _Round()
            for item in self._labelled:
                item.done = 0
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

    def offer_labelled(self, w: Any) -> bool:
        """Queue a clinician-labelled window (a ``pipeline.detect.ValidatedWindow``) for the
        head; non-blocking. Returns False, counted by reason, when it is refused: a label
        that is not one of the model's classes, a window of the wrong shape or with no
        finite feature, no population scale to read it with, or the round's budget spent.
        """
        self.counters["labelled_offered"] += 1
        label = str(getattr(w, "label", ""))
        if label not in self.classes:
            self.counters["labelled_unknown_class"] += 1
            return False
        if self.pop is None:
            self.counters["labelled_no_population"] += 1
            return False
        x = np.asarray(w.x, np.float32).reshape(1, -1)
        if x.shape[1] != self.spec.n_features or not np.isfinite(x).any():
            self.counters["labelled_bad_window"] += 1
            return False
        try:
            z, m = standardise(x, np.asarray(w.mu, np.float32), np.asarray(w.sigma, np.float32))
            zp, _ = standardise(x, self.pop[0][None], self.pop[1][None])
        except ValueError:  # mu/sigma of another shape
            self.counters["labelled_bad_window"] += 1
            return False
        item = _Labelled(z[0], m[0], zp[0], self.classes.index(label))
        with self._cv:
            if self._round.labelled_new >= self.config.label_budget:
                self.counters["labelled_over_budget"] += 1
                return False
            self._round.labelled_new += 1
            self._labelled.append(item)
            self.counters["labelled_accepted"] += 1
            self._cv.notify()
        return True

    @property
    def pending(self) -> int:
        """Normal windows queued plus labelled passes still due this round."""
        with self._lock:
            return len(self._queue) + self._label_passes_due()

    @property
    def labelled(self) -> int:
        """Labelled windows held in the pool."""
        with self._lock:
            return len(self._labelled)

    @property
    def running(self) -> bool:
        """True while the training thread runs (the daemon's liveness reads this)."""
        return self._thread is not None and self._thread.is_alive()

    def _label_passes_due(self) -> int:
        e = self.config.label_epochs
        return sum(max(0, e - it.done) for it in self._labelled)

    def step(self, max_batches: int = 1) -> int:
        """Train on up to ``max_batches`` batches of each kind (normal windows queued, labelled
        passes due); returns the distinct windows this call added to ``n_k``."""
        done = 0
        for _ in range(max_batches):
            a = self._ae_batch()
            h = self._head_batch()
            if a is None and h is None:
                break
            done += (a or 0) + (h or 0)
        return done

    def _ae_batch(self) -> int | None:
        """One autoencoder batch; None when nothing is queued."""
        with self._lock:
            if not self._queue:
                return None
            k = min(self.config.batch, len(self._queue))
            rows = [self._queue.popleft() for _ in range(k)]
            w = self.w_local.copy()
            w_glob = self.w_global
        z = np.stack([r[0] for r in rows])
        m = np.stack([r[1] for r in rows])
        z, m = self._guard(w, z, m)
        if z.shape[0] == 0:
            return 0
        _, g = ae_loss_grad(self.spec, w, z, m)
        g = (g + self.config.prox * (w - w_glob)) * self._mask
        with self._lock:
            if self.w_global is not w_glob:  # a new global model arrived meanwhile
                return 0
            self.opt.step_inplace(self.w_local, g)
            self.n_k += int(z.shape[0])
            self._round.ae_steps += 1
            self._round.groups.add("ae")
        self.counters["trained"] += int(z.shape[0])
        self.counters["steps"] += 1
        return int(z.shape[0])

    def _head_batch(self) -> int | None:
        """One head batch of labelled passes due (fewest passes first); None when none is due."""
        e = self.config.label_epochs
        with self._lock:
            due = [it for it in self._labelled if it.done < e]
            if not due:
                return None
            due.sort(key=lambda it: it.done)
            batch = due[: self.config.label_batch]
            counts = np.bincount([it.y for it in self._labelled], minlength=len(self.classes))
            w = self.w_local.copy()
            w_glob = self.w_global
        z = np.stack([it.z for it in batch])
        m = np.stack([it.m for it in batch])
        zp = np.stack([it.zp for it in batch])
        y = np.asarray([it.y for it in batch], np.int64)
        _, g = head_loss_grad(self.spec, w, z, m, y, self._label_weights(y, counts), zp)
        g = (g + self.config.prox * (w - w_glob)) * self._head_mask
        with self._lock:
            if self.w_global is not w_glob:
                return 0
            self.head_opt.step_inplace(self.w_local, g)
            first = 0
            for it in batch:
                first += int(it.done == 0)
                it.done += 1
            self.n_k += first
            self._round.head_steps += 1
            self._round.groups.add("head")
        self.counters["labelled_trained"] += first
        self.counters["head_steps"] += 1
        self.counters["steps"] += 1
        return first

    def _label_weights(self, y: np.ndarray, counts: np.ndarray) -> np.ndarray | None:
        """Per-window weights: each class of the pool weighs the same in total (capped at
        ``LABEL_BALANCE_CAP`` x) with ``label_balance``, else None (all equal).

        Off by default: weighting the rarer confirmations up raised the confirmed kinds'
        alerts on a small ward and bought no recall on a fleet (docs/model.md).
        """
        if not self.config.label_balance:
            return None
        w = counts.max() / np.maximum(counts[y], 1)
        return np.minimum(w, LABEL_BALANCE_CAP).astype(np.float32)

    def _guard(self, w: np.ndarray, z: np.ndarray, m: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        from edgeagent.model.nn import forward

        _, err = forward(self.spec, w, z, m)
        keep = np.ones(err.shape[0], bool)
        with self._lock:
            recent = np.asarray(self._recent_err) if len(self._recent_err) >= 16 else None
        if recent is not None:
            med = float(np.median(recent))
            keep = err <= self.config.poison_factor * max(med, 1e-3)
        self.counters["rejected_outlier"] += int((~keep).sum())
        with self._lock:
            # Every error joins the reference, the rejected ones too: kept to the accepted
            # ones only, the reference freezes at the first windows after a reset, and a
            # lasting change in the patient's signal is then an "outlier" for ever (the
            # learner takes nothing again). The median still ignores a minority of anomalies.
            self._recent_err.extend(float(v) for v in err)
        return z[keep], m[keep]

    def delta(self) -> np.ndarray:
        """``w_local - w_global`` (float32), the update the federated layer aggregates."""
        with self._lock:
            return (self.w_local - self.w_global).astype(np.float32)

    def params(self) -> np.ndarray:
        """A copy of ``w_local``."""
        with self._lock:
            return self.w_local.copy()

    def trained_groups(self) -> frozenset[str]:
        """The parameter groups (``model.meta.PARAM_GROUPS``) trained since the last global."""
        with self._lock:
            return frozenset(self._round.groups)

    def trained_mask(self) -> np.ndarray:
        """1 for the coordinates of ``trained_groups()``; ``delta()`` is 0 everywhere else."""
        return group_mask(self.spec, sorted(self.trained_groups()))

    def round_summary(self) -> dict[str, Any]:
        """What this round trained: groups, steps per group, labelled windows taken, ``n_k``."""
        with self._lock:
            r = self._round
            return {
                "groups": sorted(r.groups),
                "ae_steps": r.ae_steps,
                "head_steps": r.head_steps,
                "labelled_new": r.labelled_new,
                "labelled_pool": len(self._labelled),
                "n_k": int(self.n_k),
            }

    # -- labelled pool across restarts ------------------------------------
    def labelled_arrays(self) -> dict[str, np.ndarray]:
        """The labelled pool as plain arrays (``z``, ``m``, ``zp``, ``y``) for saving."""
        with self._lock:
            items = list(self._labelled)
        f = self.spec.n_features
        if not items:
            empty = np.zeros((0, f), np.float32)
            return {"z": empty, "m": empty, "zp": empty, "y": np.zeros(0, np.int64)}
        return {
            "z": np.stack([it.z for it in items]),
            "m": np.stack([it.m for it in items]),
            "zp": np.stack([it.zp for it in items]),
            "y": np.asarray([it.y for it in items], np.int64),
        }

    def restore_labelled(self, arrays: dict[str, np.ndarray]) -> int:
        """Refill the pool from ``labelled_arrays`` output; rows of the wrong shape or class
        are skipped. Returns the windows restored (they do not count against the budget)."""
        z, m, zp, y = (np.asarray(arrays[k]) for k in ("z", "m", "zp", "y"))
        f = self.spec.n_features
        if not (z.ndim == m.ndim == zp.ndim == 2 and z.shape == m.shape == zp.shape):
            return 0
        if z.shape[1] != f or y.shape != (z.shape[0],):
            return 0
        n = 0
        with self._cv:
            for i in range(z.shape[0]):
                if 0 <= int(y[i]) < len(self.classes) and np.all(np.isfinite(z[i])):
                    self._labelled.append(
                        _Labelled(
                            z[i].astype(np.float32),
                            m[i].astype(np.float32),
                            zp[i].astype(np.float32),
                            int(y[i]),
                        )
                    )
                    n += 1
            self._cv.notify()
        return n

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

    def _work_due(self) -> bool:
        """A full normal batch queued, or labelled passes due (caller holds the lock)."""
        return len(self._queue) >= self.config.batch or self._label_passes_due() > 0

    def _run(self) -> None:
        while not self._stop.is_set():
            with self._cv:
                if not self._work_due():
                    self._cv.wait(timeout=0.5)
                due_ae = len(self._queue) >= self.config.batch
                due_head = self._label_passes_due() > 0
            if self._stop.is_set():
                break
            if due_ae:
                self._ae_batch()
            if due_head:
                self._head_batch()
