"""Ed25519 signatures of releases (the ``cryptography`` library).

What is signed is not the file but one line that binds the version to the file's SHA-256::

    cabinet-edge-release:v1:<version>:<sha256 hex, lower case>

so a signed old release cannot be offered under a new version number, and the signer never needs the
file again to re-sign. The cabinet trusts the public keys in ``[remote] trusted_keys`` (base64 of the 32
raw bytes); the signature in ``cmd/update`` is base64 of the 64 raw bytes.

For the release pipeline: ``python -m edge.remote.signing keygen KEYFILE`` writes a private key (PEM,
mode 0600) and prints its public key for the config; ``python -m edge.remote.signing sign KEYFILE VERSION
FILE`` prints the sha256 and the signature for the command.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import os
import re
import sys
from collections.abc import Iterable
from pathlib import Path
from typing import TYPE_CHECKING

# cryptography costs the daemon ~9 MB of resident memory (the soak's 60 MB goal): imported where a signature
# is made or checked, which on a cabinet is once per update
if TYPE_CHECKING:
    from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

SHA256_RE = re.compile(r"[0-9a-f]{64}")
VERSION_RE = re.compile(r"[A-Za-z0-9][A-Za-z0-9._+-]{0,63}")  # what deploy/install.sh accepts as a release name
SIGNATURE_BYTES = 64
CHUNK_BYTES = 64 * 1024


def message(version: str, sha256_hex: str) -> bytes:
    """The signed text for ``version`` with file hash ``sha256_hex``."""
    return f"cabinet-edge-release:v1:{version}:{sha256_hex.lower()}".encode()


def public_key_b64(key: Ed25519PrivateKey) -> str:
    from cryptography.hazmat.primitives import serialization

    raw = key.public_key().public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw)
    return base64.b64encode(raw).decode()


def sign(key: Ed25519PrivateKey, version: str, sha256_hex: str) -> str:
    """Base64 signature of (version, sha256) for ``cmd/update``."""
    return base64.b64encode(key.sign(message(version, sha256_hex))).decode()


def verify(signature_b64: str, version: str, sha256_hex: str, trusted_keys: Iterable[str]) -> str | None:
    """None when one of ``trusted_keys`` made this signature, else why not (for the InvalidSignature report)."""
    from cryptography.exceptions import InvalidSignature
    from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey

    keys = list(trusted_keys)
    if not keys:
        return "no trusted keys configured ([remote] trusted_keys)"
    try:
        sig = base64.b64decode(signature_b64, validate=True)
    except (binascii.Error, ValueError):
        return "signature is not base64"
    if len(sig) != SIGNATURE_BYTES:
        return f"signature is {len(sig)} bytes, an Ed25519 signature is {SIGNATURE_BYTES}"
    signed = message(version, sha256_hex)
    for key_b64 in keys:
        try:
            Ed25519PublicKey.from_public_bytes(base64.b64decode(key_b64)).verify(sig, signed)
        except (InvalidSignature, ValueError):
            continue
        return None
    return f"signature does not match {version}, sha256 {sha256_hex[:12]}... for any of {len(keys)} trusted keys"


def file_sha256(path: str | os.PathLike[str]) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while chunk := f.read(CHUNK_BYTES):
            h.update(chunk)
    return h.hexdigest()


def _main(argv: list[str]) -> int:
    from cryptography.hazmat.primitives import serialization
    from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

    if len(argv) == 2 and argv[0] == "keygen":
        key = Ed25519PrivateKey.generate()
        pem = key.private_bytes(
            serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
        )
        fd = os.open(argv[1], os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        with os.fdopen(fd, "wb") as f:
            f.write(pem)
        print(f'trusted_keys = ["{public_key_b64(key)}"]')
        return 0
    if len(argv) == 4 and argv[0] == "sign":
        loaded = serialization.load_pem_private_key(Path(argv[1]).read_bytes(), password=None)
        if not isinstance(loaded, Ed25519PrivateKey):
            print(f"{argv[1]} is not an Ed25519 private key", file=sys.stderr)
            return 2
        digest = file_sha256(argv[3])
        print(f'"version": "{argv[2]}", "sha256": "{digest}", "signature": "{sign(loaded, argv[2], digest)}"')
        return 0
    print(__doc__, file=sys.stderr)
    return 64


if __name__ == "__main__":
    sys.exit(_main(sys.argv[1:]))
