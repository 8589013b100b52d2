"""How one round's replies become a mean: SecAgg+ (masked sums) or plaintext (sealed updates).

Both implement ``RoundProtocol``, chosen once per round by ``for_policy``, so the
aggregator's loop moves bodies and records outcomes without asking which mode runs.
"""

from edgeagent.federation.protocols.base import RoundProtocol, RoundTerms, StageClose
from edgeagent.federation.protocols.plaintext import PlaintextProtocol
from edgeagent.federation.protocols.secagg import SecAggProtocol

__all__ = ["PlaintextProtocol", "RoundProtocol", "RoundTerms", "SecAggProtocol", "StageClose"]
