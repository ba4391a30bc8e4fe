"""Data preparation as one call: fetch the corpus, then tokenise it (both cached by content)."""

from __future__ import annotations

import logging
import time

from .config import Config
from .corpus import CorpusRef, fetch_corpus
from .tokens import TokenSet, check_trainable, prepare_tokens, split_sizes

log = logging.getLogger("charrnn")


def prepare(cfg: Config) -> tuple[CorpusRef, TokenSet]:
    """Fetch the corpus and tokenise it (both cached by content); returns (corpus, tokens)."""
    d = cfg.data
    started = time.perf_counter()

    def usable(text: str) -> None:
        # Checked on the fetched text, before anything is cached: a refused corpus leaves the cache as it was.
        # One character is one token, so the split sizes are known before tokenising.
        sizes = split_sizes(len(text), d.val_fraction, d.test_fraction, d.corpus)
        check_trainable(sizes["train"], cfg.train.batch_size, cfg.train.seq_len, d.corpus)

    corpus = fetch_corpus(d.corpus, d.cache_dir or None, timeout_s=d.http_timeout_s, retries=d.http_retries, check=usable)
    tokens = prepare_tokens(corpus, val_fraction=d.val_fraction, test_fraction=d.test_fraction, token_dtype=d.token_dtype, cache_dir=d.cache_dir or None)
    log.info(
        "corpus %s: %s chars, sha256 %s | tokens %s (%s) | vocab %d | train/val/test %s in %.1fs",
        d.corpus,
        f"{corpus.num_chars:,}",
        corpus.sha256[:12],
        tokens.dir,
        "cache hit" if tokens.cache_hit else "built",
        tokens.vocab_size,
        "/".join(f"{tokens.num_tokens[s]:,}" for s in ("train", "val", "test")),
        time.perf_counter() - started,
    )
    return corpus, tokens
