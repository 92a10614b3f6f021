"""DC power modules on CAN: one pure codec module per vendor protocol, one ModuleBank for all."""
