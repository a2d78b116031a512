"""Scene memory: scenes embedded into a FAISS index with SQLite metadata, searched for RAG.

Knows the engine's types and the embedder; nothing of the daemon or the console.
"""

from engine.memory.scene_memory import (
    AddReport,
    Hit,
    MemoryConfig,
    SceneMemory,
    SearchResult,
    default_memory_dir,
)

__all__ = ["AddReport", "Hit", "MemoryConfig", "SceneMemory", "SearchResult",
           "default_memory_dir"]
