"""The console's widgets, one a file; each keeps its own messages nested in its class."""
