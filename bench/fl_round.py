"""In-memory SecAgg+ round benchmark: wall time and bytes per box for 10, 50, 200 boxes.

IN MEMORY: every message is a real Ed25519-signed CBOR envelope checked by a
real receiver, but nothing crosses a network or a broker (the MQTT version of
this benchmark comes with the aggregator/client processes). Model: 10k float
parameters (+1 count coordinate). The baseline measured in the same run is a
plaintext round: each box signs its raw float32 update in the same envelope
and the server verifies and sums them (weighted FedAvg).

Reported per size: total wall time, server time, mean box time, bytes up and
down per box, and ratios against the plaintext baseline; and what the defences
against a malicious aggregator cost: bytes and CPU seconds of the consistency
round, bytes of the key signatures and certificates, and the Ed25519 work
(signatures made and checked per box, at the per-operation cost measured in
the same run), and of the round seed's commit-reveal (COMMIT, REVEAL and the
contributions SETUP carries; its CPU includes every box's check of every
contribution at SETUP only in ``stage_cpu_s['setup']``). The target is upload
bytes per box <= 1.2 x the raw 4-byte-per-parameter vector plus key material.

Run: python bench/fl_round.py [--sizes 10 50 200] [--dim 10000]
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import time
from pathlib import Path

import numpy as np
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from edgeagent.fl.aggregate import ClientUpdate, mean_from_total, weighted_fedavg
from edgeagent.fl.constants import AGGREGATOR, Stage
from edgeagent.fl.messages import EnvelopeReceiver, Message, encode
from edgeagent.fl.privacy import fedavg_payload, payload_bound
from edgeagent.fl.secagg import RoundConfig
from edgeagent.fl.secagg.simulate import simulate_round

CLIP, N_CAP = 1.0, 1000


def plaintext_round(updates: list[ClientUpdate], nonce: bytes) -> tuple[float, float]:
    """Baseline: signed float32 updates, verified and averaged. Returns (seconds, bytes/box)."""
    ids = {u.node: Ed25519PrivateKey.generate() for u in updates}
    rx = EnvelopeReceiver(AGGREGATOR, {n: k.public_key() for n, k in ids.items()})
    rx.begin_round(1, nonce)
    t0 = time.perf_counter()
    sent = 0
    total = None
    for u in updates:
        body = {"delta": u.delta.astype("<f4").tobytes(), "n": u.n}
        data = encode(
            Message(u.node, AGGREGATOR, 1, Stage.COLLECT_MASKED, 0, nonce, body), ids[u.node]
        )
        sent += len(data)
        m = rx.receive(data).message
        vec = np.frombuffer(m.body["delta"], dtype="<f4").astype(np.float64)
        p = fedavg_payload(vec, m.body["n"], CLIP, N_CAP)
        total = p if total is None else total + p
    mean_from_total(total)
    return time.perf_counter() - t0, sent / len(updates)


def run(n: int, dim: int, seed: int = 0) -> dict[str, object]:
    rng = np.random.default_rng(seed)
    updates = [
        ClientUpdate(
            f"box{i:04d}", rng.normal(0, 0.05, dim).astype(np.float32), int(rng.integers(10, 2000))
        )
        for i in range(n)
    ]
    nonce = os.urandom(16)
    base_s, base_bytes = plaintext_round(updates, nonce)
    cfg = RoundConfig(
        round_id=1,
        nonce=nonce,
        participants=tuple(u.node for u in updates),
        dim=dim + 1,
        bound=payload_bound(CLIP, N_CAP),
        clip=CLIP,
        n_cap=N_CAP,
    )
    payloads = {u.node: fedavg_payload(u.delta, u.n, CLIP, N_CAP) for u in updates}
    report = simulate_round(cfg, payloads, seeded=True)  # commit-reveal seed, as deployed
    assert report.result is not None, report.abort
    err = np.abs(
        mean_from_total(report.result.total) - weighted_fedavg(updates, clip=CLIP, n_cap=N_CAP)
    ).max()
    raw = 4 * dim
    auth = auth_cost(n, cfg.degree, cfg.threshold)
    up = np.mean(list(report.bytes_up.values()))
    down = np.mean(list(report.bytes_down.values()))
    return {
        "boxes": n,
        "params": dim,
        "degree": cfg.degree,
        "threshold": cfg.threshold,
        "wall_s": report.wall_seconds,
        "server_s": report.server_seconds,
        "box_mean_s": float(np.mean(list(report.client_seconds.values()))),
        "bytes_up_per_box": float(up),
        "bytes_down_per_box": float(down),
        "raw_vector_bytes": raw,
        "up_over_raw": float(up / raw),
        "baseline_plaintext_s": base_s,
        "baseline_bytes_per_box": base_bytes,
        "secagg_over_plaintext_time": report.wall_seconds / base_s,
        "secagg_over_plaintext_bytes_up": float(up / base_bytes),
        "max_abs_error_vs_plaintext_fedavg": float(err),
        "stage_bytes": dict(report.stage_bytes),
        "stage_cpu_s": {k: round(v, 4) for k, v in report.stage_seconds.items()},
        "consistency_bytes_per_box": report.stage_bytes["consistency"] / n,
        "consistency_cpu_s": report.stage_seconds["consistency"],
        "seed_bytes_per_box": (report.stage_bytes["commit"] + report.stage_bytes["reveal"]) / n
        + 16 * n,  # COMMIT + REVEAL envelopes, plus the contributions SETUP carries
        "seed_cpu_s": report.stage_seconds["commit"] + report.stage_seconds["reveal"],
        **auth,
    }


def auth_cost(n: int, degree: int, t: int, cert_bytes: int = 450) -> dict[str, float]:
    """Signing work and bytes per box and round, at Ed25519 costs measured here and now.

    Per box: 2 signatures (round keys, survivor set); k key signatures checked at
    SHARE_KEYS; about t + a few survivor-set signatures checked at UNMASK (t per
    owner, shared between owners); the server checks 2 per box. Bytes: a
    64-byte signature and a ~450-byte DER identity certificate per neighbour at
    SHARE_KEYS (the in-memory run sends 32-byte raw keys in place of certificates).
    """
    key = Ed25519PrivateKey.generate()
    pub, msg = key.public_key(), b"x" * 200
    reps = 2000
    t0 = time.perf_counter()
    for _ in range(reps):
        sig = key.sign(msg)
    sign_s = (time.perf_counter() - t0) / reps
    t0 = time.perf_counter()
    for _ in range(reps):
        pub.verify(sig, msg)
    verify_s = (time.perf_counter() - t0) / reps
    checks = degree + t + 2
    return {
        "ed25519_sign_us": sign_s * 1e6,
        "ed25519_verify_us": verify_s * 1e6,
        "auth_box_cpu_s": 2 * sign_s + checks * verify_s,
        "auth_server_cpu_s": 2 * n * verify_s,
        "auth_bytes_down_per_box_with_certs": degree * (64 + cert_bytes) + (t + 2) * 70,
    }


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--sizes", type=int, nargs="+", default=[10, 50, 200])
    ap.add_argument("--dim", type=int, default=10_000)
    ap.add_argument("--out", type=Path, default=Path(__file__).parent / "results" / "fl_round.json")
    args = ap.parse_args()
    rows = [run(n, args.dim) for n in args.sizes]
    print(f"SecAgg+ round, IN MEMORY (no network/broker), {args.dim} params, {platform.machine()}")
    print(
        f"{'boxes':>6} {'k':>3} {'t':>3} {'wall s':>8} {'server s':>9} {'box s':>7} "
        f"{'up B/box':>9} {'down B/box':>10} {'up/raw':>7} {'x plain t':>9} {'max err':>9}"
    )
    for r in rows:
        print(
            f"{r['boxes']:>6} {r['degree']:>3} {r['threshold']:>3} {r['wall_s']:>8.2f} "
            f"{r['server_s']:>9.2f} {r['box_mean_s']:>7.3f} {r['bytes_up_per_box']:>9.0f} "
            f"{r['bytes_down_per_box']:>10.0f} {r['up_over_raw']:>7.3f} "
            f"{r['secagg_over_plaintext_time']:>9.1f} "
            f"{r['max_abs_error_vs_plaintext_fedavg']:>9.2e}"
        )
    print("cost of the defences (per round): consistency stage, key signing, round seed")
    print(f"{'boxes':>6} {'cons B/box':>10} {'cons CPU s':>10} {'auth box s':>10} "
          f"{'auth srv s':>10} {'auth B/box':>10} {'seed B/box':>10} "
          f"{'seed CPU s':>10}")  # fmt: skip
    for r in rows:
        print(
            f"{r['boxes']:>6} {r['consistency_bytes_per_box']:>10.0f} "
            f"{r['consistency_cpu_s']:>10.3f} {r['auth_box_cpu_s']:>10.4f} "
            f"{r['auth_server_cpu_s']:>10.3f} {r['auth_bytes_down_per_box_with_certs']:>10.0f} "
            f"{r['seed_bytes_per_box']:>10.0f} {r['seed_cpu_s']:>10.3f}"
        )
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(
        json.dumps({"mode": "in-memory", "machine": platform.machine(), "rows": rows}, indent=2)
    )
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
