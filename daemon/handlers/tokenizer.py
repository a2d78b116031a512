"""Tokenizer requests: tokenize a text, run the edge-case suite (worker threads)."""

from __future__ import annotations

from typing import TYPE_CHECKING

from daemon import api, services
from daemon import protocol as proto

if TYPE_CHECKING:
    from daemon.server import Server


def tokenize(server: Server, req: api.TokenizeRequest, msg: proto.Message) -> api.TokenizeReply:
    """Token ids and pieces of `text` under a profile's hypertokenizer (cached per profile)."""
    tokenizer = services.hypertokenizer(req.profile or server.profile)
    ids = tokenizer.encode_text(req.text)
    return api.TokenizeReply(ids=ids, pieces=tokenizer.pieces(ids), count=len(ids),
                             hypertoken_ids=[i for i in ids if tokenizer.is_hypertoken_id(i)])


def suite(server: Server, req: api.ProfileRequest,
          msg: proto.Message) -> api.TokenizerSuiteReply:
    """engine.tokenizer's edge-case suite on the profile's hypertokenizer."""
    result = services.tokenizer_suite(req.profile or server.profile)
    return api.TokenizerSuiteReply(profile=result.pop("profile"), extra=result)
