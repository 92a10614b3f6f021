"""Local control API on a Unix socket, for the technician CLI."""
