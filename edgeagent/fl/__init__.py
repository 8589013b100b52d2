"""Federated protocol shared by boxes and the aggregator: pure code, no I/O.

- ``messages``: signed, versioned CBOR envelopes and the receiver that refuses
  malformed, forged, replayed, out-of-round and oversized messages.
- ``secagg``: SecAgg+ client and server state machines (stage bodies in, stage
  bodies out) and an in-memory round simulator.
- ``quantize``: fixed point in Z_2^32 with stated headroom.
- ``privacy``: clipping, FedAvg payloads, Gaussian noise, DP accountant,
  adaptive clipping.
- ``aggregate``: weighted FedAvg over plain records.
- ``robust``: median, trimmed mean, Multi-Krum, norm bounding, cosine clustering,
  reputation over rounds, grouped rules (their names: ``constants.ROBUST_RULES``).

Transport (MQTT) and process wiring live elsewhere and call into these.
"""
