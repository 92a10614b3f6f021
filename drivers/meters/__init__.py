"""Modbus smart meters: one register table per model, one generic decoder and reader."""
