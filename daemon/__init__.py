"""hyperlexd: the local daemon that owns the hardware, the jobs, the models and the memory."""
