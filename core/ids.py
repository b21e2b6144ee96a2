"""Public ids for things customers see and quote to support: a type prefix and random letters
without look-alikes (no 0/o, 1/l)."""

import secrets

ALPHABET = "abcdefghijkmnpqrstuvwxyz23456789"


def public_id(prefix: str, length: int = 14) -> str:
    return prefix + "".join(secrets.choice(ALPHABET) for _ in range(length))
