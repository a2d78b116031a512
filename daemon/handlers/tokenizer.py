"""Tokenizer requests: tokenize a text, run the edge-case suite (worker threads)."""

from __future__ import annotations

import threading
from typing import TYPE_CHECKING, Any

from daemon import api
from daemon import protocol as proto

if TYPE_CHECKING:
    from daemon.server import Server

_lock = threading.Lock()
_tokenizers: dict[str, Any] = {}  # profile name -> its hypertokenizer, built once per daemon


def tokenize(server: Server, req: api.TokenizeRequest, msg: proto.Message) -> api.TokenizeReply:
    """Token ids and pieces of `text` under a profile's hypertokenizer (cached per profile)."""
    tokenizer = hypertokenizer(req.profile or server.profile)
    ids = tokenizer.encode_text(req.text)
    return api.TokenizeReply(ids=ids, pieces=tokenizer.pieces(ids), count=len(ids),
                             hypertoken_ids=[i for i in ids if tokenizer.is_hypertoken_id(i)])


def suite(server: Server, req: api.ProfileRequest,
          msg: proto.Message) -> api.TokenizerSuiteReply:
    """engine.tokenizer's edge-case suite on the profile's hypertokenizer."""
    result = tokenizer_suite(req.profile or server.profile)
    return api.TokenizerSuiteReply(profile=result.pop("profile"), extra=result)


def hypertokenizer(profile_name: str) -> Any:
    """The profile's hypertokenizer, built once per daemon."""
    with _lock:
        tokenizer = _tokenizers.get(profile_name)
    if tokenizer is None:
        from engine.profiles import load_profile
        from engine.tokenizer import Hypertokenizer

        tokenizer = Hypertokenizer.from_profile(load_profile(profile_name))
        with _lock:
            _tokenizers[profile_name] = tokenizer
    return tokenizer


def tokenizer_suite(profile_name: str) -> dict[str, Any]:
    """engine.tokenizer's edge-case suite on the profile's hypertokenizer (cases, rates)."""
    from engine.tokenizer.suite import run_suite

    return {"profile": profile_name, **run_suite(hypertokenizer(profile_name))}
