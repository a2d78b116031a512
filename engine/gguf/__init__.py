"""GGUF files read without llama.cpp: the header (`header`), how transformers tensors map onto
GGUF ones (`layout`), and what an adapter needs to know about its base (`base`).

The bottom of the engine: export writes GGUFs with it, inference checks adapters against a base
with it, models reads a file's figures with it. It imports nothing of the engine but its errors.
"""
