"""API key format: `hbk_<public id>_<secret><checksum>`.

- `hbk_` says what it is (secret scanners match the prefix);
- the public id (12 characters) names the key in lists and logs without revealing it;
- the secret is 32 random base62 characters (about 190 bits);
- the checksum is the last 6 base62 characters of CRC32 over everything before it, so a
  scanner (and our parser) can tell a real key from a typo without a database lookup.

Only a SHA-256 digest of the whole key is stored: keys are random, so a slow password hash
would add no safety, only latency on every request.
"""

import hashlib
import hmac
import secrets
import zlib

PREFIX = "hbk_"
BASE62 = "0123456789ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz"
PUBLIC_LENGTH = 12
SECRET_LENGTH = 32
CHECKSUM_LENGTH = 6


def _base62(number: int, width: int) -> str:
    digits = []
    for _ in range(width):
        number, rest = divmod(number, 62)
        digits.append(BASE62[rest])
    return "".join(reversed(digits))


def _random(length: int) -> str:
    return "".join(secrets.choice(BASE62) for _ in range(length))


def _checksum(body: str) -> str:
    return _base62(zlib.crc32(body.encode()), CHECKSUM_LENGTH)


def generate() -> tuple[str, str, str]:
    """A new key: (the key, its public id, its digest)."""
    public_id = _random(PUBLIC_LENGTH)
    body = f"{PREFIX}{public_id}_{_random(SECRET_LENGTH)}"
    key = body + _checksum(body)
    return key, public_id, digest(key)


def digest(key: str) -> str:
    return hashlib.sha256(key.encode()).hexdigest()


def parse(key: str) -> str | None:
    """The public id of a well-formed key whose checksum matches, else None."""
    expected = len(PREFIX) + PUBLIC_LENGTH + 1 + SECRET_LENGTH + CHECKSUM_LENGTH
    if (
        len(key) != expected
        or not key.startswith(PREFIX)
        or key[len(PREFIX) + PUBLIC_LENGTH] != "_"
    ):
        return None
    body, checksum = key[:-CHECKSUM_LENGTH], key[-CHECKSUM_LENGTH:]
    if not hmac.compare_digest(_checksum(body), checksum):
        return None
    return key[len(PREFIX) : len(PREFIX) + PUBLIC_LENGTH]


def matches(key: str, stored_digest: str) -> bool:
    return hmac.compare_digest(digest(key), stored_digest)
