"""Insulation monitoring devices (IEC 61557-8 IMDs) over Modbus: one register table per family, one driver."""
