"""Data preparation: fetch the corpus, then tokenise it (both cached by content).

The content-addressed cache is the one record of what is done: a corpus is
``corpora/<sha256>.txt``, its tokens ``tokens/<key>/``. Callers (the CLI, the
Prefect flow's tasks) call these functions and let them decide what to redo.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from pathlib import Path

from charrnn.config import Config
from charrnn.data.corpus import CorpusRef, cache_root, fetch_corpus
from charrnn.data.tokens import (
    TokenSet,
    check_trainable,
    open_token_set,
    prepare_tokens,
    split_sizes,
    tokens_key,
)

log = logging.getLogger("charrnn")


def trainable_check(cfg: Config) -> Callable[[str], None]:
    """``check(text)`` for :func:`fetch_corpus`: refuse a corpus too small to train on with ``cfg``.

    It runs on the fetched text, before anything is cached, so a refused corpus leaves the
    cache as it was. One character is one token, so the split sizes are known before tokenising.
    """
    d = cfg.data

    def usable(text: str) -> None:
        sizes = split_sizes(len(text), d.val_fraction, d.test_fraction, d.corpus)
        check_trainable(sizes["train"], cfg.train.batch_size, cfg.train.seq_len, d.corpus)

    return usable


def fetch(cfg: Config) -> CorpusRef:
    """``data.corpus`` into the cache, refused before caching when it is too small to train on."""
    d = cfg.data
    return fetch_corpus(
        d.corpus,
        d.cache_dir or None,
        timeout_s=d.http_timeout_s,
        retries=d.http_retries,
        check=trainable_check(cfg),
    )


def corpus_tokens(corpus: CorpusRef, cfg: Config) -> TokenSet:
    """The corpus's tokens: a cache hit when they are there, else built from the corpus file.

    ``corpus`` may be an older reference (a Prefect cache hit) whose file was cleaned away
    since: tokens still in the cache need no corpus; otherwise the corpus is fetched again.
    """
    d = cfg.data
    cached = (
        cache_root(d.cache_dir or None)
        / "tokens"
        / tokens_key(corpus.sha256, d.val_fraction, d.test_fraction, d.token_dtype)
    )
    if (cached / "meta.json").is_file():
        tokens = open_token_set(cached)
    else:
        if not Path(corpus.path).is_file():
            log.info(
                "corpus file %s is gone from the cache: fetching %s again", corpus.path, corpus.uri
            )
            corpus = fetch(cfg)
        tokens = prepare_tokens(
            corpus,
            val_fraction=d.val_fraction,
            test_fraction=d.test_fraction,
            token_dtype=d.token_dtype,
            cache_dir=d.cache_dir or None,
        )
    # the tokens may have been accepted earlier with other settings: check them again
    check_trainable(tokens.num_tokens["train"], cfg.train.batch_size, cfg.train.seq_len, d.corpus)
    return tokens


def prepare(cfg: Config) -> tuple[CorpusRef, TokenSet]:
    """Fetch the corpus and tokenise it (both cached by content); returns (corpus, tokens)."""
    d = cfg.data
    started = time.perf_counter()
    corpus = fetch(cfg)
    tokens = prepare_tokens(
        corpus,
        val_fraction=d.val_fraction,
        test_fraction=d.test_fraction,
        token_dtype=d.token_dtype,
        cache_dir=d.cache_dir or None,
    )
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
