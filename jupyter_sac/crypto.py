"""Encryption at rest for provider keys (Fernet; the first key encrypts, all decrypt)."""

from __future__ import annotations

from cryptography.fernet import Fernet, InvalidToken, MultiFernet


class KeyBox:
    def __init__(self, keys: list[str]):
        if not keys:
            raise ValueError("at least one Fernet key is required (c.SacService.fernet_keys)")
        self._fernet = MultiFernet([Fernet(k.encode() if isinstance(k, str) else k) for k in keys])

    def encrypt(self, secret: str) -> bytes:
        return self._fernet.encrypt(secret.encode("utf-8"))

    def decrypt(self, token: bytes) -> str:
        try:
            return self._fernet.decrypt(bytes(token)).decode("utf-8")
        except InvalidToken as e:
            raise ValueError("provider key cannot be decrypted with the configured keys") from e


def generate_key() -> str:
    return Fernet.generate_key().decode()
