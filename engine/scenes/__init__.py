"""Scenes: sceneformers that turn documents into scenes, register labels, JSONL I/O, stats."""
