"""Fleet domain, pure: Pi models (OUI, board revision codes) and node lifecycle states."""

from piman.fleet.lifecycle import (
    TRANSITIONS,
    IllegalTransition,
    NodeState,
    PowerState,
    check_transition,
)
from piman.fleet.models import (
    PI_OUIS,
    BoardRevision,
    PiModel,
    decode_revision,
    model_from_mac,
    serial_from_pi3_mac,
)

__all__ = [
    "PI_OUIS",
    "TRANSITIONS",
    "BoardRevision",
    "IllegalTransition",
    "NodeState",
    "PiModel",
    "PowerState",
    "check_transition",
    "decode_revision",
    "model_from_mac",
    "serial_from_pi3_mac",
]
