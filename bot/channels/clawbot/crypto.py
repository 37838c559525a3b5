"""AES-128-ECB with PKCS#7 padding, the cipher of the WeChat CDN (channels-2026.md §1.6/§1.7).

ECB is what the platform uses; we do not choose it. Keys travel in three textual forms, all decoded
by `parse_aes_key`: 32 hex characters (`image_item.aeskey`, our own uploads), base64 of 16 raw bytes
(inbound `media.aes_key` of images) and base64 of the 32-character hex string (file/voice/video).
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import secrets

from cryptography.hazmat.primitives import padding
from cryptography.hazmat.primitives.ciphers import Cipher, algorithms, modes

BLOCK = 16
KEY_BYTES = 16


class CryptoError(ValueError):
    """A key or ciphertext could not be used (wrong length, bad padding, undecodable key)."""


def new_key() -> bytes:
    return secrets.token_bytes(KEY_BYTES)


def padded_size(raw_size: int) -> int:
    """Ciphertext size of `raw_size` plaintext bytes: PKCS#7 always adds 1..16 bytes."""
    return (raw_size // BLOCK + 1) * BLOCK


def _check_key(key: bytes) -> None:
    if len(key) != KEY_BYTES:
        raise CryptoError(f"AES-128 key must be {KEY_BYTES} bytes, got {len(key)}")


def encrypt(plaintext: bytes, key: bytes) -> bytes:
    _check_key(key)
    padder = padding.PKCS7(BLOCK * 8).padder()
    data = padder.update(plaintext) + padder.finalize()
    encryptor = Cipher(algorithms.AES(key), modes.ECB()).encryptor()  # noqa: S305 - the platform's cipher
    return encryptor.update(data) + encryptor.finalize()


def decrypt(ciphertext: bytes, key: bytes) -> bytes:
    _check_key(key)
    if not ciphertext or len(ciphertext) % BLOCK:
        raise CryptoError(f"ciphertext length {len(ciphertext)} is not a positive multiple of {BLOCK}")
    decryptor = Cipher(algorithms.AES(key), modes.ECB()).decryptor()  # noqa: S305
    data = decryptor.update(ciphertext) + decryptor.finalize()
    unpadder = padding.PKCS7(BLOCK * 8).unpadder()
    try:
        return unpadder.update(data) + unpadder.finalize()
    except ValueError as exc:
        raise CryptoError("bad PKCS#7 padding (wrong key?)") from exc


def _hex_key(text: str) -> bytes | None:
    if len(text) != 2 * KEY_BYTES:
        return None
    try:
        return bytes.fromhex(text)
    except ValueError:
        return None


def parse_aes_key(value: str) -> bytes:
    """The 16 key bytes from any of the platform's key forms; CryptoError when none fits."""
    text = (value or "").strip()
    direct = _hex_key(text)
    if direct is not None:
        return direct
    try:
        raw = base64.b64decode(text + "=" * (-len(text) % 4), validate=True)
    except (binascii.Error, ValueError) as exc:
        raise CryptoError("AES key is neither hex nor base64") from exc
    if len(raw) == KEY_BYTES:
        return raw
    try:
        decoded = _hex_key(raw.decode("ascii"))
    except UnicodeDecodeError:
        decoded = None
    if decoded is None:
        raise CryptoError(f"AES key decodes to {len(raw)} bytes, expected 16 raw or 32 hex characters")
    return decoded


def media_aes_key(key: bytes) -> str:
    """The `media.aes_key` we send for our uploads: base64 of the 32-character hex string."""
    _check_key(key)
    return base64.b64encode(key.hex().encode("ascii")).decode("ascii")


def md5_hex(data: bytes) -> str:
    return hashlib.md5(data, usedforsecurity=False).hexdigest()
