"""Release signatures (Ed25519 over version and sha256) and the resumable, bounded download over HTTP on
loopback: what is refused changes nothing; what breaks resumes where it stopped."""

from __future__ import annotations

import hashlib
import os
from collections.abc import Iterator
from pathlib import Path

import pytest

from edge.remote import download, signing
from tests.remote_support import FileServer, Served, Signer, bad_signature

BODY = os.urandom(700_000)
DIGEST = hashlib.sha256(BODY).hexdigest()


@pytest.fixture
def server() -> Iterator[FileServer]:
    srv = FileServer().start()
    yield srv
    srv.stop()


def test_signature_of_the_trusted_key_verifies() -> None:
    s = Signer()
    assert signing.verify(signing.sign(s.key, "1.2.0", DIGEST), "1.2.0", DIGEST, [s.public_b64]) is None


def test_signature_is_bound_to_the_version_and_the_hash() -> None:
    s = Signer()
    sig = signing.sign(s.key, "1.2.0", DIGEST)
    assert "does not match" in (signing.verify(sig, "1.3.0", DIGEST, [s.public_b64]) or "")
    other = hashlib.sha256(b"x").hexdigest()
    assert "does not match" in (signing.verify(sig, "1.2.0", other, [s.public_b64]) or "")


def test_signature_of_an_untrusted_key_or_garbage_is_refused() -> None:
    trusted, stranger = Signer(), Signer()
    sig = signing.sign(stranger.key, "1.2.0", DIGEST)
    assert signing.verify(sig, "1.2.0", DIGEST, [trusted.public_b64]) is not None
    assert "not base64" in (signing.verify("!!", "1.2.0", DIGEST, [trusted.public_b64]) or "")
    assert "64" in (signing.verify("AAAA", "1.2.0", DIGEST, [trusted.public_b64]) or "")
    assert signing.verify(bad_signature(), "1.2.0", DIGEST, [trusted.public_b64]) is not None
    assert "no trusted keys" in (signing.verify(sig, "1.2.0", DIGEST, []) or "")


@pytest.mark.parametrize(
    ("url", "allowed"),
    [
        ("https://updates.example.com/r.tar.gz", True),
        ("http://127.0.0.1:8000/r.tar.gz", True),
        ("http://[::1]:8000/r.tar.gz", True),
        ("http://updates.example.com/r.tar.gz", False),
        ("http://10.0.0.1/r.tar.gz", False),
        ("file:///etc/shadow", False),
        ("ftp://127.0.0.1/r", False),
    ],
)
def test_only_https_or_loopback_http_is_fetched(url: str, allowed: bool) -> None:
    assert (download.url_allowed(url) is None) == allowed


def test_download_checks_the_hash_and_leaves_only_the_file(server: FileServer, tmp_path: Path) -> None:
    server.files["r"] = Served(BODY)
    got = download.download(server.url("r"), tmp_path / "r.tar.gz", DIGEST, 10_000_000)
    assert (tmp_path / "r.tar.gz").read_bytes() == BODY and got.size_bytes == len(BODY)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["r.tar.gz"]


def test_wrong_hash_is_refused_and_nothing_is_kept(server: FileServer, tmp_path: Path) -> None:
    server.files["r"] = Served(BODY)
    with pytest.raises(download.DownloadError, match="sha256"):
        download.download(server.url("r"), tmp_path / "r.tar.gz", hashlib.sha256(b"other").hexdigest(), 10_000_000)
    assert list(tmp_path.iterdir()) == []


def test_a_broken_connection_resumes_with_range_where_it_stopped(server: FileServer, tmp_path: Path) -> None:
    server.files["r"] = Served(BODY, cut_after=300_000, cuts_left=1)
    got = download.download(server.url("r"), tmp_path / "r.tar.gz", DIGEST, 10_000_000)
    assert got.connections == 2
    assert server.requests == [("r", None), ("r", "bytes=300000-")]
    assert (tmp_path / "r.tar.gz").read_bytes() == BODY


def test_a_part_left_by_a_restart_is_resumed(server: FileServer, tmp_path: Path) -> None:
    server.files["r"] = Served(BODY)
    (tmp_path / "r.tar.gz.part").write_bytes(BODY[:123_456])
    got = download.download(server.url("r"), tmp_path / "r.tar.gz", DIGEST, 10_000_000)
    assert got.resumed_from == 123_456 and server.requests == [("r", "bytes=123456-")]
    assert (tmp_path / "r.tar.gz").read_bytes() == BODY


def test_a_server_ignoring_range_sends_the_whole_file_again(server: FileServer, tmp_path: Path) -> None:
    server.files["r"] = Served(BODY, ignore_range=True)
    (tmp_path / "r.tar.gz.part").write_bytes(b"garbage that must not stay in front")
    download.download(server.url("r"), tmp_path / "r.tar.gz", DIGEST, 10_000_000)
    assert (tmp_path / "r.tar.gz").read_bytes() == BODY


def test_a_download_that_keeps_breaking_is_refused_after_the_attempts(server: FileServer, tmp_path: Path) -> None:
    server.files["r"] = Served(BODY, cut_after=1000, cuts_left=99)
    with pytest.raises(download.DownloadError, match="5 connections") as exc:
        download.download(server.url("r"), tmp_path / "r.tar.gz", DIGEST, 10_000_000)
    assert exc.value.retry
    assert not (tmp_path / "r.tar.gz").exists()


def test_a_truncated_file_is_refused_by_its_hash(server: FileServer, tmp_path: Path) -> None:
    server.files["r"] = Served(BODY[:-1000])
    with pytest.raises(download.DownloadError, match="sha256"):
        download.download(server.url("r"), tmp_path / "r.tar.gz", DIGEST, 10_000_000)
    assert list(tmp_path.iterdir()) == []


@pytest.mark.parametrize("no_length", [False, True], ids=["content-length", "no-length"])
def test_size_bound_holds_with_and_without_content_length(server: FileServer, tmp_path: Path, no_length: bool) -> None:
    server.files["r"] = Served(BODY, no_length=no_length)
    with pytest.raises(download.DownloadError, match="bound of 100000 bytes"):
        download.download(server.url("r"), tmp_path / "r.tar.gz", DIGEST, 100_000)
    assert list(tmp_path.iterdir()) == []
    if not no_length:
        assert len(server.requests) == 1  # refused from the header, not retried


def test_plain_http_to_another_host_is_refused_before_connecting(tmp_path: Path) -> None:
    with pytest.raises(download.DownloadError, match="loopback"):
        download.download("http://192.0.2.1/r", tmp_path / "r", DIGEST, 100)
