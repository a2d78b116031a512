"""hyperlexd: the daemon that owns the hardware, the jobs, the loaded models and the scene memory.

Front ends reach it only through `daemon.client`. The daemon imports the engine, never the console.
"""

__version__ = "0.1.0"
