"""The aggregator asks a box for less privacy than the box is configured for (distributed DP).

The box's own ``clip_norm`` and ``noise_multiplier`` are floors (``PrivacyFloor``,
built by the daemon from ``[federation]``): a SETUP with a larger clip, a
larger n_cap or less noise than the box's own z implies is refused before the
box makes any key, so it never sends a masked input under those terms.
"""

from __future__ import annotations

import math

import pytest

from edgeagent.errors import ProtocolError
from edgeagent.fl.constants import Key, Stage
from edgeagent.fl.privacy import distributed_std, gaussian_std
from edgeagent.fl.secagg import SecAggClient
from edgeagent.fl.secagg.auth import lab_signers
from edgeagent.fl.secagg.client import PrivacyFloor
from tests.attacks.secagg_rig import CLIP, N_CAP, rig

Z = 1.0  # the box's configured noise multiplier


def _box(r, floor: PrivacyFloor) -> SecAggClient:
    box = SecAggClient("box000", lab_signers(["box000"])["box000"], floor=floor)
    box.expect_participants(r.config.participants)
    return box


def test_box_refuses_less_noise_a_larger_clip_or_n_cap_than_its_own() -> None:
    n = 6
    honest_std = distributed_std(gaussian_std(Z, CLIP, N_CAP), n)
    floor = PrivacyFloor(max_clip=CLIP, max_n_cap=N_CAP, min_noise_multiplier=Z)
    attacks = {
        "no noise": rig(n, noise_std=0.0),
        "a tenth of the noise": rig(n, noise_std=honest_std / 10),
        "clip x100": rig(n, noise_std=honest_std, clip=100 * CLIP),
        "n_cap x10": rig(n, noise_std=honest_std * 10, n_cap=10 * N_CAP),
    }
    for what, r in attacks.items():
        with pytest.raises(ProtocolError) as err:
            _box(r, floor).handle(1, r.config.nonce, Stage.SETUP, r.out["box000"])
        assert err.value.reason == "privacy_floor", what
    # what the box's own settings ask for is accepted, and used for its payload
    ok = rig(n, noise_std=honest_std)
    box = _box(ok, floor)
    reply = box.handle(1, ok.config.nonce, Stage.SETUP, ok.out["box000"])
    assert Key.KEY_SIG.value in reply
    assert box.noise_std == pytest.approx(honest_std) and box.clip == CLIP
    # the floor is the most lenient split: the total over all n boxes still reaches z
    assert math.sqrt(n) * honest_std == pytest.approx(gaussian_std(Z, CLIP, N_CAP))
