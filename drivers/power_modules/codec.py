"""What every vendor codec provides. The ModuleBank and the control loop see only this.

A codec is pure: it builds ``Frame`` values (29-bit id, 8 data bytes) and decodes replies; it never
touches a bus or a clock. Adding a vendor is adding a module that defines a :class:`ModuleCodec` and one
entry in :data:`drivers.power_modules.registry.CODECS` (the config's ``protocol`` choices are its keys).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Protocol

#: what a module may report about itself (``ModuleReply.capabilities``); a codec reports the ones its protocol has
CAPABILITY_KEYS = ("max_voltage_v", "min_voltage_v", "max_current_a", "rated_power_w")


@dataclass(frozen=True)
class Frame:
    """One frame to send. ``priority``: a reduction (lower current, off): it may overtake queued frames."""

    arbitration_id: int
    data: bytes
    is_extended_id: bool = True
    priority: bool = False


@dataclass(frozen=True)
class ModuleReply:
    """A decoded answer from one module. Only the fields the frame carried are set.

    ``ack``: the module acknowledged one of our set commands; such a reply carries no values.
    ``error``: with ``ack``, the module received the command and refused it (the protocol's error code, e.g.
    InfyPower 3 "data invalid"); 0 when it took it.
    ``capabilities``: what the module reports it can do (keys from :data:`CAPABILITY_KEYS`, V, A, W).
    """

    address: int
    voltage_v: float | None = None
    current_a: float | None = None
    temperature_c: float | None = None
    alarms: frozenset[str] | None = None
    module_count: int | None = None
    extra: dict[str, float] = field(default_factory=dict)
    ack: bool = False
    error: int = 0
    capabilities: dict[str, float] | None = None


class ModuleCodec(Protocol):
    name: str
    #: the module's own comms watchdog: it switches its output off after this silence (s)
    module_comms_timeout_s: float
    #: minimum spacing between two controller commands to one module (s)
    command_spacing_s: float
    #: alarms that mean the module cannot deliver its share (it is taken out of the split)
    blocking_alarms: frozenset[str]
    #: every alarm name the codec can report, for docs and ``edge scan can``
    alarm_names: frozenset[str]

    def set_output(self, address: int | None, voltage_v: float, current_a: float) -> list[Frame]:
        """Set voltage and current of one module, or of the whole group when ``address`` is None."""
        ...

    def output_on(self, address: int | None, on: bool) -> list[Frame]: ...

    def poll(self, address: int) -> list[Frame]:
        """The read requests that refresh one module's state (output, status, temperature)."""
        ...

    def discover(self) -> list[Frame]:
        """Group/broadcast read requests that every module on the bus answers (commissioning scan)."""
        ...

    def identify(self, address: int) -> list[Frame]:
        """Read requests for the module's fixed data (capabilities), sent once after it appears; empty when
        the protocol has no such request (the configured maxima then stand alone)."""
        ...

    def decode(self, arbitration_id: int, data: bytes) -> ModuleReply | None:
        """Decode a reply (or an acknowledgement, ``ack=True``); None when the frame is not a reply of this
        protocol. Never raises."""
        ...

    def check_config(
        self, addresses: Sequence[int], lost_after_s: float, poll_period_s: float
    ) -> list[tuple[str, str]]:
        """What the vendor forbids in a configuration: addresses outside the protocol's range or repeated,
        a ``lost_after_s`` not shorter than the module's own comms watchdog, a poll period too slow to see
        a module before ``lost_after_s``. One (setting, message) per problem, the setting being
        ``addresses`` or ``lost_after``; empty when the config is fine."""
        ...

    def reply_mask(self) -> tuple[int, int]:
        """(id, mask) that matches every reply of this protocol, for hardware filters."""
        ...


def check_module_config(
    codec: ModuleCodec,
    addresses: Sequence[int],
    lost_after_s: float,
    poll_period_s: float,
    address_range: tuple[int, int],
) -> list[tuple[str, str]]:
    """The checks every vendor shares, for the codecs' ``check_config``."""
    low, high = address_range
    out = [
        ("addresses", f"{codec.name} module address {a} is outside {low}..{high}")
        for a in addresses
        if not low <= a <= high
    ]
    repeated = sorted({a for a in addresses if list(addresses).count(a) > 1})
    if repeated:
        out.append(("addresses", f"module addresses must be unique; repeated: {repeated}"))
    if lost_after_s >= codec.module_comms_timeout_s:
        out.append(
            (
                "lost_after",
                f"lost after {lost_after_s:g} s must be shorter than the {codec.name} module's own comms "
                f"watchdog ({codec.module_comms_timeout_s:g} s) so the controller notices first",
            )
        )
    if lost_after_s < 2 * poll_period_s:
        out.append(
            (
                "lost_after",
                f"lost after {lost_after_s:g} s must be at least two poll periods ({2 * poll_period_s:g} s): "
                "one missed answer must not lose a module",
            )
        )
    return out
