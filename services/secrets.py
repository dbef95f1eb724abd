"""Encryption of credentials at rest (Claude OAuth objects, GitHub tokens).

Fernet (AES-128-CBC + HMAC-SHA256) from `cryptography`, with a key derived by HKDF from
ENCRYPTION_KEY when set, otherwise from SESSION_SECRET. A value that no longer decrypts (the
secret was changed) reads as absent, so the person is asked to reconnect instead of seeing a 500.
"""

from __future__ import annotations

import base64
import logging
from typing import Any

import orjson
from cryptography.fernet import Fernet, InvalidToken
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.kdf.hkdf import HKDF

log = logging.getLogger(__name__)


class SecretBox:
    """Encrypts and decrypts small JSON values and strings."""

    def __init__(self, secret: str) -> None:
        key = HKDF(algorithm=hashes.SHA256(), length=32, salt=None, info=b"webedt credentials v1").derive(
            secret.encode()
        )
        self._fernet = Fernet(base64.urlsafe_b64encode(key))

    def encrypt_text(self, value: str) -> str:
        return self._fernet.encrypt(value.encode()).decode()

    def decrypt_text(self, token: str | None) -> str | None:
        if not token:
            return None
        try:
            return self._fernet.decrypt(token.encode()).decode()
        except InvalidToken:
            log.warning("a stored credential could not be decrypted (was the secret changed?)")
            return None

    def encrypt_json(self, value: Any) -> str:
        return self._fernet.encrypt(orjson.dumps(value)).decode()

    def decrypt_json(self, token: str | None) -> Any:
        text = self.decrypt_text(token)
        if text is None:
            return None
        try:
            return orjson.loads(text)
        except orjson.JSONDecodeError:
            return None
