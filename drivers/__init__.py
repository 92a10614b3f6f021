"""Device protocols: meters (Modbus register tables), power modules (CAN codecs), cable sensors (DBC).

Drivers turn bytes into :class:`drivers.readings.Reading` values and commands into bytes. They import
only ``hal`` and their own tables; they never reach into ``edge``.
"""
