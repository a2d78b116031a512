"""Hypertokenizer encode throughput against the raw base `tokenizers` encoder, same corpus, same run.

Run: python bench/tokenizer.py [--profile default] [--per-register 50] [--rounds 5]

Both encoders get the same texts one call at a time (what the data formatter does) and as one
batch; rounds alternate between them and the best round of each counts, so a noisy neighbour
on the machine slows both. The baseline is the base model's own `tokenizers.Tokenizer` with
nothing added; the ratio is hypertokenizer / baseline throughput (1.0 = no cost).
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))  # this checkout's engine


def _best_seconds(encode, texts, rounds: int, batch: bool) -> float:  # noqa: ANN001
    best = float("inf")
    for _ in range(rounds):
        started = time.perf_counter()
        if batch:
            encode(texts)
        else:
            for text in texts:
                encode(text)
        best = min(best, time.perf_counter() - started)
    return best


def main() -> None:
    """Print throughputs and the ratio for single-text and batch encoding."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--profile", default="default")
    parser.add_argument("--per-register", type=int, default=50)
    parser.add_argument("--rounds", type=int, default=5)
    args = parser.parse_args()

    from engine.machine import print_machine
    from engine.models import load_tokenizer
    from engine.profiles import load_profile
    from engine.tokenizer import Hypertokenizer
    from engine.tokenizer.texts import demo_texts

    profile = load_profile(args.profile)
    hyper = Hypertokenizer.from_profile(profile)
    raw = load_tokenizer(profile.model.base).backend_tokenizer  # the untouched base encoder
    texts = demo_texts(args.per_register)
    characters = sum(len(t) for t in texts)
    assert [hyper.encode_text(t) for t in texts[:20]] == [
        raw.encode(t, add_special_tokens=False).ids for t in texts[:20]], "encoders disagree"

    print(f"corpus: {len(texts)} demo texts, {characters} characters; profile {args.profile}; "
          f"{len(hyper.hypertokens)} hypertokens")
    for label, batch in (("one text per call", False), ("batch", True)):
        raw_seconds = hyper_seconds = float("inf")
        for _ in range(args.rounds):  # alternate so both see the same machine load
            raw_seconds = min(raw_seconds, _best_seconds(
                (lambda ts: raw.encode_batch(ts, add_special_tokens=False)) if batch else
                (lambda t: raw.encode(t, add_special_tokens=False)), texts, 1, batch))
            hyper_seconds = min(hyper_seconds, _best_seconds(
                hyper.encode_texts if batch else hyper.encode_text, texts, 1, batch))
        raw_rate = characters / raw_seconds
        hyper_rate = characters / hyper_seconds
        print(f"{label:>18}: baseline raw tokenizers {raw_rate / 1e6:7.2f} M chars/s | "
              f"Hypertokenizer {hyper_rate / 1e6:7.2f} M chars/s | "
              f"ratio {hyper_rate / raw_rate:.3f}")
    print_machine()  # after the timed rounds, so the probe cannot disturb them


if __name__ == "__main__":
    main()
