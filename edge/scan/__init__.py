"""Bus scans for commissioning: ``edge scan can`` and ``edge scan modbus``."""
