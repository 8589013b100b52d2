"""What a round's parameter mask saves: upload bytes per box, and accuracy at equal epsilon.

Model: the shipped baseline detector (models/baseline.onnx, 5,456 parameters:
"ae" 1,062, "head" 4,394). Masks compared: every group (the whole vector),
"ae" alone (what trains on a box that learns only its normal model) and
"head" alone.

Bytes (real envelopes, in memory):

* SecAgg+: one ``simulate_round`` of ``--boxes`` boxes per mask, every message
  a signed CBOR envelope; upload per box over all stages, and the
  COLLECT_MASKED stage alone (the masked vector, 4 bytes per coordinate).
* Plaintext: one signed UPDATE envelope per box holding the update sealed to
  the round key (``fl.seal``), as ``federation.client`` sends it.

Accuracy at equal epsilon: a round at noise multiplier z costs the same epsilon
whatever the mask (one Gaussian release of sensitivity n_cap * sqrt(clip^2 + 1)
per round, q = 1), but the noise lands only on the coordinates sent. With
only the autoencoder training, the whole-vector mask adds noise to the head
that nobody trained; the "ae" mask leaves the head as the global has it. The
autoencoder's coordinates get the same noise under both masks, so the
difference is the head noise alone. Measured: the global after ``--rounds``
rounds of DP noise (per coordinate std z * sqrt(clip^2 + 1) / N on the mean,
the best case of every box at n_k >= n_cap) on the classifier's window
accuracy and the normal windows' reconstruction error, over held-out
simulated patients (``edgelab.baseline``, personal calibration as on a box),
mean of ``--seeds`` noise draws. z per fleet size is the smallest that keeps
epsilon <= ``--budget`` at delta 1e-5 after ``--rounds`` rounds; the learning
signal (the same under both masks) is left out, so the figures are the cost
of the noise, not the gain of learning (that is bench/field_learning.py's).

Run: python bench/fl_mask.py [--boxes 10] [--rounds 24] [--seeds 5]
"""

from __future__ import annotations

import argparse
import json
import math
import os
import platform
import time
from pathlib import Path
from typing import Any

import numpy as np
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from edgeagent.federation.accountant import DpAccountant
from edgeagent.fl import seal
from edgeagent.fl.constants import AGGREGATOR, Key, Stage
from edgeagent.fl.messages import Message, encode
from edgeagent.fl.privacy import fedavg_payload, payload_bound, select, sensitivity
from edgeagent.fl.secagg import RoundConfig
from edgeagent.fl.secagg.simulate import simulate_round
from edgeagent.model.graph import get_params, parse_model, read_meta
from edgeagent.model.meta import ModelMeta, group_indices
from edgeagent.model.nn import forward, standardise

ROOT = Path(__file__).resolve().parent.parent
CLIP, N_CAP, DELTA = 1.0, 1000, 1e-5
MASKS: dict[str, tuple[str, ...]] = {"all": ("ae", "head"), "ae": ("ae",), "head": ("head",)}
FLEETS = (3, 100, 1000, 10000)


def upload_bytes(w: np.ndarray, idx: np.ndarray | None, boxes: int) -> dict[str, Any]:
    """Bytes one box uploads for one round of this mask, SecAgg+ and plaintext."""
    rng = np.random.default_rng(0)
    nodes = tuple(f"box-{i:03d}" for i in range(boxes))
    deltas = {n: rng.normal(0, 0.01, w.size) for n in nodes}
    k = w.size if idx is None else int(idx.size)
    nonce = os.urandom(16)
    cfg = RoundConfig(
        round_id=1,
        nonce=nonce,
        participants=nodes,
        dim=k + 1,
        bound=payload_bound(CLIP, N_CAP),
        clip=CLIP,
        n_cap=N_CAP,
    )
    payloads = {n: fedavg_payload(select(d, idx), 100, CLIP, N_CAP) for n, d in deltas.items()}
    rep = simulate_round(cfg, payloads)
    assert rep.result is not None, rep.abort
    _, pk = seal.round_key()
    key = Ed25519PrivateKey.generate()
    sealed = seal.seal_update(select(deltas[nodes[0]], idx), 100, pk, seal.info(1, nonce, nodes[0]))
    msg = Message(nodes[0], AGGREGATOR, 1, Stage.UPDATE, 0, nonce, {Key.UPDATE.value: sealed})
    return {
        "coordinates": k,
        "secagg_upload_per_box": round(float(np.mean(list(rep.bytes_up.values())))),
        "secagg_masked_vector_per_box": round(rep.stage_bytes[str(Stage.COLLECT_MASKED)] / boxes),
        "plaintext_upload_per_box": len(encode(msg, key)),
    }


def smallest_z(rounds: int, budget: float) -> float:
    """The smallest noise multiplier (to 0.01) with epsilon <= budget after ``rounds``."""
    lo, hi = 0.1, 100.0
    while hi - lo > 0.01:
        mid = (lo + hi) / 2
        acc = DpAccountant(DELTA)
        acc.step(mid, 1.0, rounds)
        lo, hi = (lo, mid) if acc.epsilon() <= budget else (mid, hi)
    return math.ceil(hi * 100) / 100


def heldout(meta: ModelMeta, patients: int, seconds: float) -> list[dict[str, np.ndarray]]:
    """Held-out simulated patients as a box sees them: personal calibration, labels."""
    from edgeagent.pipeline.personal import calibrate
    from edgelab.baseline import HELDOUT_PATIENTS, class_labels, make_data

    jobs = [("heldout", i, seconds) for i in list(HELDOUT_PATIENTS)[:patients]]
    pop_mu = np.asarray(meta.pop_mu, np.float32)
    pop_sigma = np.asarray(meta.pop_sigma, np.float32)
    out = []
    for d in make_data(jobs, processes=1):
        y = class_labels(d["spans"], d["labels"])
        keep = y >= 0
        mu, sigma = calibrate(d["x"][y == 0], pop_mu, pop_sigma)
        z, m = standardise(d["x"][keep], mu[None], sigma[None])
        zp, _ = standardise(d["x"][keep], pop_mu[None], pop_sigma[None])
        out.append({"z": z, "m": m, "zp": zp, "y": y[keep]})
    return out


def scores(
    meta: ModelMeta, w: np.ndarray, data: list[dict[str, np.ndarray]]
) -> tuple[float, float]:
    """(window accuracy, mean reconstruction error of the normal windows)."""
    hit = total = 0
    errs = []
    for d in data:
        probs, err = forward(meta.spec, w.astype(np.float32), d["z"], d["m"], d["zp"])
        hit += int((probs.argmax(axis=1) == d["y"]).sum())
        total += d["y"].size
        errs.append(err[d["y"] == 0])
    return hit / total, float(np.mean(np.concatenate(errs)))


def accuracy_at_equal_epsilon(
    meta: ModelMeta,
    w0: np.ndarray,
    data: list[dict[str, np.ndarray]],
    rounds: int,
    seeds: int,
    budget: float,
) -> list[dict[str, Any]]:
    base_acc, base_err = scores(meta, w0, data)
    rows = []
    z = smallest_z(rounds, budget)  # q = 1: epsilon depends on z and rounds, not on the fleet
    for n in FLEETS:
        acc = DpAccountant(DELTA)
        acc.step(z, 1.0, rounds)
        std = z * sensitivity(CLIP, N_CAP) / (n * N_CAP)  # on the mean, all n_k at n_cap
        row: dict[str, Any] = {
            "boxes_per_round": n,
            "z": z,
            "rounds": rounds,
            "epsilon": round(acc.epsilon(), 3),
            "noise_std_on_mean": std,
            "baseline": {"accuracy": base_acc, "normal_recon": base_err},
        }
        for name in ("all", "ae"):
            idx = group_indices(meta.spec, MASKS[name])
            accs, errs = [], []
            for s in range(seeds):
                # the same draws under both masks: the autoencoder's noise is identical, the
                # masks differ only in the head's
                rng = np.random.default_rng(1000 * n + s)
                w = w0.astype(np.float64).copy()
                for _ in range(rounds):
                    w[idx] += rng.normal(0.0, std, w0.size)[idx]
                a, e = scores(meta, w, data)
                accs.append(a)
                errs.append(e)
            row[name] = {
                "coordinates": int(idx.size),
                "noise_norm_per_round": std * float(np.sqrt(idx.size)),
                "accuracy": float(np.mean(accs)),
                "accuracy_cost": base_acc - float(np.mean(accs)),
                "normal_recon": float(np.mean(errs)),
            }
        rows.append(row)
    return rows


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--boxes", type=int, default=10)
    ap.add_argument("--rounds", type=int, default=24)
    ap.add_argument("--seeds", type=int, default=5)
    ap.add_argument("--budget", type=float, default=8.0)
    ap.add_argument("--patients", type=int, default=4)
    ap.add_argument("--seconds", type=float, default=1200.0)
    ap.add_argument("--model", type=Path, default=ROOT / "models" / "baseline.onnx")
    ap.add_argument("--out", type=Path, default=ROOT / "bench" / "results" / "fl_mask.json")
    args = ap.parse_args(argv)
    model = parse_model(args.model.read_bytes())
    meta, w0 = read_meta(model), get_params(model)
    t0 = time.perf_counter()
    sizes = {
        name: upload_bytes(w0, None if name == "all" else group_indices(meta.spec, g), args.boxes)
        for name, g in MASKS.items()
    }
    full = sizes["all"]
    print(f"upload per box and round, {args.boxes} boxes, {w0.size} parameters")
    print(
        f"{'mask':6} {'coords':>7} {'secagg':>9} {'masked vec':>10} {'plaintext':>9} {'saved':>6}"
    )
    for name, s in sizes.items():
        s["saved_vs_all_secagg"] = 1 - s["secagg_upload_per_box"] / full["secagg_upload_per_box"]
        s["saved_vs_all_plaintext"] = (
            1 - s["plaintext_upload_per_box"] / full["plaintext_upload_per_box"]
        )
        print(
            f"{name:6} {s['coordinates']:>7} {s['secagg_upload_per_box']:>9} "
            f"{s['secagg_masked_vector_per_box']:>10} {s['plaintext_upload_per_box']:>9} "
            f"{s['saved_vs_all_secagg']:>6.0%}"
        )
    data = heldout(meta, args.patients, args.seconds)
    rows = accuracy_at_equal_epsilon(meta, w0, data, args.rounds, args.seeds, args.budget)
    print(
        f"\nnoise cost after {args.rounds} rounds at equal epsilon (only the autoencoder "
        f"trains; baseline accuracy {rows[0]['baseline']['accuracy']:.3f}, normal "
        f"reconstruction error {rows[0]['baseline']['normal_recon']:.4f})"
    )
    print(
        f"{'boxes':>6} {'z':>5} {'eps':>6} {'acc all':>8} {'acc ae':>7} {'recon all':>9} "
        f"{'recon ae':>8}"
    )
    for r in rows:
        print(
            f"{r['boxes_per_round']:>6} {r['z']:>5} {r['epsilon']:>6.2f} "
            f"{r['all']['accuracy']:>8.3f} {r['ae']['accuracy']:>7.3f} "
            f"{r['all']['normal_recon']:>9.4f} {r['ae']['normal_recon']:>8.4f}"
        )
    out = {
        "what": __doc__.splitlines()[0],
        "model": str(args.model.relative_to(ROOT))
        if args.model.is_relative_to(ROOT)
        else str(args.model),
        "parameters": int(w0.size),
        "clip": CLIP,
        "n_cap": N_CAP,
        "delta": DELTA,
        "sampling": "q = 1",
        "bytes": sizes,
        "heldout": {
            "patients": args.patients,
            "seconds": args.seconds,
            "windows": int(sum(d["y"].size for d in data)),
        },
        "accuracy_at_equal_epsilon": rows,
        "seconds": round(time.perf_counter() - t0, 1),
        "machine": platform.platform(),
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(out, indent=1) + "\n")
    print(f"\nwrote {args.out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
