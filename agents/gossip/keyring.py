"""Shared-key AES-GCM keyring for gossip packets and push/pull frames, with rotation and replay protection.

Sealed form: version (1) | nonce (12: 4-byte sender epoch + 8-byte counter) | AES-GCM(timestamp_ms (8) | data).
The primary key seals; every installed key is tried to open, so keys rotate without a flag day: install the new key
everywhere, make it primary everywhere, then remove the old one.
"""

from __future__ import annotations

import base64
import os
import struct
import time
from collections import OrderedDict
from collections.abc import Callable

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives.ciphers.aead import AESGCM

SEAL_VERSION = 1
NONCE_SIZE = 12
TAG_SIZE = 16
OVERHEAD = 1 + NONCE_SIZE + 8 + TAG_SIZE
REPLAY_WINDOW = 1024


class KeyringError(ValueError):
    """A key that cannot be used, or a keyring operation that would lock the node out."""


class Unauthenticated(ValueError):
    """A sealed packet that no installed key opens (wrong key, tampered or not sealed at all)."""


class Replayed(ValueError):
    """A correctly sealed packet seen before, or too old to tell."""


def parse_key(text: str) -> bytes:
    try:
        key = base64.b64decode(text, validate=True)
    except ValueError as exc:
        raise KeyringError("gossip key is not valid base64") from exc
    if len(key) not in (16, 24, 32):
        raise KeyringError(f"gossip key must be 16, 24 or 32 bytes (AES-128/192/256), got {len(key)}")
    return key


class _Window:
    """Sliding replay window over one sender epoch's counters (like IPsec's)."""

    __slots__ = ("bitmap", "highest")

    def __init__(self) -> None:
        self.highest = -1
        self.bitmap = 0

    def check_and_set(self, counter: int) -> bool:
        if counter > self.highest:
            shift = counter - self.highest
            self.bitmap = ((self.bitmap << shift) | 1) & ((1 << REPLAY_WINDOW) - 1)
            self.highest = counter
            return True
        offset = self.highest - counter
        if offset >= REPLAY_WINDOW or self.bitmap >> offset & 1:
            return False
        self.bitmap |= 1 << offset
        return True


class Keyring:
    def __init__(
        self, keys: list[bytes], *, max_age_s: float = 60.0, clock: Callable[[], float] = time.time,
        max_epochs: int = 4096,
    ) -> None:  # fmt: skip
        if not keys:
            raise KeyringError("a keyring needs at least one key")
        for k in keys:
            if len(k) not in (16, 24, 32):
                raise KeyringError(f"gossip key must be 16, 24 or 32 bytes, got {len(k)}")
        self._keys: list[bytes] = list(dict.fromkeys(keys))
        self._aead = {k: AESGCM(k) for k in self._keys}
        self.max_age_s = max_age_s
        self.clock = clock
        self.max_epochs = max_epochs
        self._epoch = os.urandom(4)
        self._counter = 0
        self._windows: OrderedDict[bytes, _Window] = OrderedDict()

    @property
    def primary(self) -> bytes:
        return self._keys[0]

    @property
    def keys(self) -> list[bytes]:
        return list(self._keys)

    def add_key(self, key: bytes) -> None:
        if len(key) not in (16, 24, 32):
            raise KeyringError(f"gossip key must be 16, 24 or 32 bytes, got {len(key)}")
        if key not in self._aead:
            self._keys.append(key)
            self._aead[key] = AESGCM(key)

    def use_key(self, key: bytes) -> None:
        """Make an installed key the primary (the one that seals)."""
        if key not in self._aead:
            raise KeyringError("cannot use a key that is not installed; add it first")
        self._keys.remove(key)
        self._keys.insert(0, key)

    def remove_key(self, key: bytes) -> None:
        if key == self.primary:
            raise KeyringError("cannot remove the primary key; make another key primary first")
        if key in self._aead:
            self._keys.remove(key)
            del self._aead[key]

    def seal(self, data: bytes) -> bytes:
        self._counter += 1
        nonce = self._epoch + struct.pack("!Q", self._counter)
        header = bytes([SEAL_VERSION])
        plain = struct.pack("!Q", int(self.clock() * 1000)) + data
        return header + nonce + self._aead[self.primary].encrypt(nonce, plain, header)

    def open(self, sealed: bytes) -> bytes:
        """Authenticates and decrypts; raises Unauthenticated or Replayed (never returns unverified bytes)."""
        if len(sealed) < OVERHEAD:
            raise Unauthenticated(f"sealed packet of {len(sealed)} bytes is shorter than the {OVERHEAD}-byte overhead")
        if sealed[0] != SEAL_VERSION:
            raise Unauthenticated(f"unknown seal version {sealed[0]}")
        header, nonce, body = sealed[:1], sealed[1 : 1 + NONCE_SIZE], sealed[1 + NONCE_SIZE :]
        plain: bytes | None = None
        for k in self._keys:
            try:
                plain = self._aead[k].decrypt(nonce, body, header)
                break
            except InvalidTag:
                continue
        if plain is None:
            raise Unauthenticated("no installed key opens this packet")
        sent_ms = struct.unpack("!Q", plain[:8])[0]
        if abs(self.clock() * 1000 - sent_ms) > self.max_age_s * 1000:
            raise Replayed(f"packet timestamp is {abs(self.clock() * 1000 - sent_ms) / 1000:.0f}s off")
        epoch, counter = nonce[:4], struct.unpack("!Q", nonce[4:])[0]
        window = self._windows.get(epoch)
        if window is None:
            window = self._windows[epoch] = _Window()
            if len(self._windows) > self.max_epochs:
                self._windows.popitem(last=False)
        else:
            self._windows.move_to_end(epoch)
        if not window.check_and_set(counter):
            raise Replayed("packet already seen")
        return plain[8:]
