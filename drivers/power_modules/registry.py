"""Vendor protocol name (config ``power_modules.protocol``) -> codec class.

The one place a new vendor is registered. The daemon, the simulator and ``edge scan can`` all look the
codec up here, so nothing else in the control path changes when a vendor is added.
"""

from __future__ import annotations

from drivers.power_modules.codec import ModuleCodec
from drivers.power_modules.infypower import InfyPowerCodec
from drivers.power_modules.uugreen import UUGreenCodec

CODECS: dict[str, type[ModuleCodec]] = {
    "infypower": InfyPowerCodec,
    "uugreen": UUGreenCodec,
}


def make_codec(protocol: str) -> ModuleCodec:
    try:
        return CODECS[protocol]()
    except KeyError:
        raise ValueError(f"unknown power module protocol {protocol!r}; known: {sorted(CODECS)}") from None
