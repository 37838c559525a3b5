"""AES-256-CBC for WeCom inbound media (images, files, videos in callbacks).

WeCom encrypts media behind `image.url` with the callback's `aeskey`: key = base64-decode(aeskey)
(32 bytes; the server may drop the trailing `=`), IV = key[:16], PKCS#7 padding to a multiple of
**32** bytes (not 16: the SDK turns auto-padding off and strips 1..32 bytes itself).
"""

from __future__ import annotations

import base64
import binascii

from cryptography.hazmat.primitives.ciphers import Cipher, algorithms, modes

PAD_BLOCK = 32


class MediaDecryptError(ValueError):
    """The key or the ciphertext is malformed (wrong key, truncated download, bad padding)."""


def decode_aeskey(aeskey: str) -> bytes:
    """The 32-byte key of a callback's `aeskey` (standard or URL-safe base64, padding optional)."""
    text = aeskey.strip()
    text += "=" * (-len(text) % 4)
    try:
        key = base64.b64decode(text.replace("-", "+").replace("_", "/"), validate=True)
    except (binascii.Error, ValueError) as exc:
        raise MediaDecryptError("aeskey is not base64") from exc
    if len(key) != 32:
        raise MediaDecryptError(f"aeskey decodes to {len(key)} bytes, expected 32")
    return key


def _cipher(key: bytes) -> Cipher:
    return Cipher(algorithms.AES(key), modes.CBC(key[:16]))


def pad(data: bytes, block: int = PAD_BLOCK) -> bytes:
    """PKCS#7 to a multiple of `block` (always adds 1..block bytes)."""
    n = block - len(data) % block
    return data + bytes([n]) * n


def unpad(data: bytes, block: int = PAD_BLOCK) -> bytes:
    if not data or len(data) % block:
        raise MediaDecryptError("ciphertext length is not a multiple of the padding block")
    n = data[-1]
    if not 1 <= n <= block or data[-n:] != bytes([n]) * n:
        raise MediaDecryptError("bad padding (wrong key or corrupt download)")
    return data[:-n]


def decrypt(blob: bytes, aeskey: str) -> bytes:
    """Plaintext of a downloaded media blob; MediaDecryptError when it does not decrypt cleanly."""
    key = decode_aeskey(aeskey)
    if not blob or len(blob) % 16:
        raise MediaDecryptError("ciphertext length is not a multiple of 16")
    decryptor = _cipher(key).decryptor()
    return unpad(decryptor.update(blob) + decryptor.finalize())


def encrypt(plain: bytes, aeskey: str) -> bytes:
    """The inverse of `decrypt` (used by tests; WeCom never asks a bot to encrypt)."""
    encryptor = _cipher(decode_aeskey(aeskey)).encryptor()
    return encryptor.update(pad(plain)) + encryptor.finalize()
