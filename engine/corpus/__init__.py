"""Corpus sources: files, folders, JSONL and stdin decoded into `Document`s, plus a synthetic corpus.

Nothing here knows about scenes, tokenizers or models.
"""
