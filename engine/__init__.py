"""hyperlex engine: the library that turns text into scenes, tokens, adapters and answers.

The engine knows nothing of the daemon or the console: no ZeroMQ, no Textual. Front ends call it.
"""

__version__ = "0.1.0"


def _quiet_bitsandbytes_hub_kernel() -> None:
    """Drop one import-time warning of bitsandbytes that tells a person nothing they can act on.

    On a CPU with AVX512-BF16, bitsandbytes asks the `kernels` package (which transformers now
    installs) for a hub-hosted 4-bit GEMM, which an offline or untrusted machine refuses; it then
    uses its own CPU kernel, as without `kernels`, and logs the refusal on every import. Only
    that record is dropped; the logger's other messages pass.
    """
    import logging

    class _DropHubKernelNotice(logging.Filter):
        def filter(self, record: logging.LogRecord) -> bool:
            return not str(record.msg).startswith("Failed to load CPU gemm_4bit_forward")

    logging.getLogger("bitsandbytes.backends.cpu.ops").addFilter(_DropHubKernelNotice())


_quiet_bitsandbytes_hub_kernel()
