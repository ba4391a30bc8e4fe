"""Vocabulary and token files: round trips, <unk>, splits, dtypes, content-addressed cache."""

from __future__ import annotations

import multiprocessing as mp
from pathlib import Path

import numpy as np
import pytest
from helpers import make_text

from charrnn.data.corpus import fetch_corpus
from charrnn.data.tokens import load_split, prepare_tokens
from charrnn.data.vocab import UNK_ID, Vocab, token_dtype_for, utf8_codepoints
from charrnn.errors import CorpusError


def _prepare(tmp_path, text: str, **kwargs):
    path = tmp_path / "corpus.txt"
    path.write_text(text, encoding="utf-8")
    return prepare_tokens(fetch_corpus(str(path)), **kwargs)


def test_vocab_round_trip_with_newlines_and_non_ascii():
    text = "Ça va?\n\nNaïve — ok.\n日本語\n🎭\n"
    vocab = Vocab.from_text(text)
    ids = vocab.encode(text)
    assert vocab.decode(ids) == text
    assert list(vocab.chars) == sorted(set(text))  # code-point order: deterministic
    assert UNK_ID not in ids


def test_vectorised_utf8_decoding_matches_python():
    text = "plain ascii\nÇa va — naïve ß ÿ Ā 日本語 🎭𝄞 end\n" * 3
    raw = np.frombuffer(text.encode("utf-8"), dtype=np.uint8)
    assert utf8_codepoints(raw).tolist() == [ord(c) for c in text]
    ascii_raw = np.frombuffer(b"just ascii\n", dtype=np.uint8)
    assert utf8_codepoints(ascii_raw) is ascii_raw  # zero copy
    # some of the text's characters are unseen: <unk>
    vocab = Vocab.from_text("plain ascii\nÇa — 日本 🎭")
    assert vocab.encode_utf8(raw, dtype=np.uint16).tolist() == vocab.encode(text).tolist()
    assert UNK_ID in vocab.encode_utf8(raw)


def test_unseen_characters_map_to_unk_or_raise():
    vocab = Vocab.from_text("abc")
    ids = vocab.encode("abz")
    assert ids.tolist() == [1, 2, UNK_ID]
    with pytest.raises(
        CorpusError, match=r"'z' \(U\+007A\) first at line 1, column 3 \(position 2\)"
    ):
        vocab.encode("abz", unk_policy="error")
    with pytest.raises(CorpusError) as info:
        Vocab.from_text("abc\n").encode("ab\ncé\n€a😀é", unk_policy="error", source="held_out.txt")
    text = str(info.value)
    assert text.startswith("held_out.txt: 3 character(s) not in the vocabulary (4 occurrence(s))")
    assert "'é' (U+00E9) first at line 2, column 2 (position 4)" in text
    assert "'€' (U+20AC) first at line 3, column 1 (position 6)" in text
    assert "'😀' (U+1F600) first at line 3, column 3 (position 8)" in text
    assert "data.unk_policy=unk" in text


def test_vocab_json_round_trip(tmp_path):
    vocab = Vocab.from_text("hello\nworld é")
    vocab.save(tmp_path / "vocab.json")
    assert Vocab.load(tmp_path / "vocab.json") == vocab


def test_token_files_reassemble_the_corpus_with_newlines(tmp_path):
    text = make_text(20_000)
    tokens = _prepare(tmp_path, text, val_fraction=0.1, test_fraction=0.1)
    vocab = tokens.vocab
    parts = {s: load_split(tokens, s) for s in ("train", "val", "test")}
    assert {s: len(p) for s, p in parts.items()} == {"train": 16_000, "val": 2_000, "test": 2_000}
    assert vocab.decode(np.concatenate(list(parts.values()))) == text
    assert parts["train"].dtype == np.uint8 and isinstance(parts["train"], np.memmap)
    assert "\n" in vocab.chars and "é" in vocab.chars


@pytest.mark.parametrize("document_mode", [True, False], ids=["one-row", "row-per-line"])
def test_blocks_cut_only_at_character_boundaries(tmp_path, monkeypatch, document_mode):
    """Tiny blocks force cuts inside multi-byte characters and across rows.

    The files must not notice.
    """
    from charrnn.data import tokens as tokens_mod

    monkeypatch.setattr(tokens_mod, "BLOCK_BYTES", 7)
    monkeypatch.setattr(tokens_mod, "DOCUMENT_MODE_MAX_BYTES", 1 << 30 if document_mode else 0)
    text = "".join(f"{i} Ça va — naïve 日本語 🎭\nab\n\n" for i in range(200))
    tokens = _prepare(tmp_path, text, val_fraction=0.1, test_fraction=0.1)
    parts = [load_split(tokens, s) for s in ("train", "val", "test")]
    assert sum(map(len, parts)) == len(text)
    assert tokens.vocab.decode(np.concatenate(parts)) == text
    assert tokens.dtype == "uint8" and tokens.num_tokens["val"] == len(text) // 10


def test_vocabulary_comes_from_the_training_split(tmp_path):
    text = "abcab" * 100 + "xyz" * 5  # x, y, z only in the held-out tail
    tokens = _prepare(tmp_path, text, val_fraction=0.05, test_fraction=0.0)
    assert set(tokens.vocab.chars) == {"a", "b", "c"}
    val = load_split(tokens, "val")
    assert (val[-15:] == UNK_ID).all() and (val[:-15] != UNK_ID).all()
    assert tokens.vocab.decode(val[-3:]) == "\ufffd" * 3


def test_empty_test_split(tmp_path):
    tokens = _prepare(tmp_path, make_text(5_000), val_fraction=0.1, test_fraction=0.0)
    assert tokens.num_tokens["test"] == 0 and len(load_split(tokens, "test")) == 0


def test_second_prepare_is_a_cache_hit(tmp_path):
    text = make_text(10_000)
    first = _prepare(tmp_path, text)
    second = _prepare(tmp_path, text)
    assert not first.cache_hit and second.cache_hit and first.dir == second.dir
    changed = _prepare(tmp_path, text + "more")
    assert not changed.cache_hit and changed.dir != first.dir


def test_too_short_for_split(tmp_path, cache_dir):
    with pytest.raises(CorpusError, match="too short for a val split"):
        _prepare(tmp_path, "abcdefghij", val_fraction=0.1)
    assert not (cache_dir / "tokens").exists() or not [
        p for p in (cache_dir / "tokens").iterdir() if not p.name.endswith(".lock")
    ]


def test_vocab_too_large_for_dtype(tmp_path, cache_dir):
    text = "".join(chr(0x4E00 + i) for i in range(300)) * 10  # 300 distinct characters
    with pytest.raises(
        CorpusError, match="301 symbols .300 characters \\+ <unk>. does not fit uint8"
    ) as info:
        _prepare(tmp_path, text, token_dtype="uint8")
    assert "token_dtype=auto" in str(info.value)
    assert not [p for p in (cache_dir / "tokens").iterdir() if not p.name.endswith(".lock")]
    assert _prepare(tmp_path, text).dtype == "uint16"


def test_dtype_choice():
    assert token_dtype_for(256) == np.uint8
    assert token_dtype_for(257) == np.uint16
    assert token_dtype_for(70_000) == np.uint32


def _prepare_in_process(args):
    path, cache = args
    import os

    os.environ["CHARRNN_CACHE"] = cache
    tokens = prepare_tokens(fetch_corpus(path))
    return tokens.dir, tokens.cache_hit


def test_two_concurrent_prepares(tmp_path, cache_dir):
    path = tmp_path / "corpus.txt"
    path.write_text(make_text(400_000))
    with mp.get_context("spawn").Pool(2) as pool:
        results = pool.map(_prepare_in_process, [(str(path), str(cache_dir))] * 2)
    assert results[0][0] == results[1][0]
    assert sorted(hit for _, hit in results) == [False, True]  # built once, found once
    entries = [p.name for p in (cache_dir / "tokens").iterdir() if not p.name.endswith(".lock")]
    assert entries == [Path(results[0][0]).name]  # no temp directories left behind
