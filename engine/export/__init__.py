"""Export: adapters and merged models to PEFT dirs, GGUF LoRA files and full GGUF models.

Every export is checked against transformers by the parity tests (tests/engine/test_export*.py).
"""

from engine.export.gguf_lora import export_gguf_lora
from engine.export.gguf_model import export_gguf

__all__ = ["export_gguf", "export_gguf_lora"]
