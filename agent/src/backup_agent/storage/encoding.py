"""How a job encodes what it stores (issue #20): one place that turns `storage.*` settings into
codecs and a chunker, and turns codec errors into the agent's errors.

- Data pieces (a small file in a pack, a chunk of a big file, a command job's dump) go through
  `Encoding.data`: zstd when it pays, AES-256-GCM when `storage.encryption_key` is set. A piece's
  associated data is the SHA-256 (hex) of its plaintext, which the manifest records: a piece
  copied over another fails to open.
- Manifests go through `Encoding.manifest` (never compressed again: they are gzip'd JSON lines
  already) only when a key is set; their associated data is the job root and snapshot id, so a
  manifest copied to another node's prefix or snapshot name fails to open.
- Without a key, manifests stay plain gzip (`zcat` reads them) and data pieces carry the codec's
  5-byte header so a reader knows whether they are compressed.
"""

from __future__ import annotations

import functools
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from typing import TYPE_CHECKING

from backup_agent.config import Storage
from backup_agent.errors import ConfigError, IntegrityError
from backup_agent.storage import codec
from backup_agent.storage.codec import Codec, CodecError, DamagedPieceError, Keyring, WrongKeyError

if TYPE_CHECKING:
    from backup_agent.storage import chunker

# The first bytes of an encoded piece (a sealed manifest starts with them; a gzip one with 1f 8b).
MAGIC = codec.MAGIC


class WrongKey(ConfigError):
    """A piece or manifest is sealed with a key this node does not have: exit 2."""


@dataclass(frozen=True)
class Encoding:
    data: Codec
    manifest: Codec
    gear_seed: bytes | None  # None: chunker.DEFAULT_SEED (no key)
    key_id: str | None  # the current key's id (hex); None: no encryption
    read_unencrypted: bool

    def chunker(self) -> chunker.Chunker:
        """A chunker of its own for each big file (it keeps buffers between blocks). Imported
        here: it brings numpy (0.1 s, and OpenBLAS threads), which restore, check and dump never use."""
        from backup_agent.storage import chunker

        return chunker.Chunker(seed=self.gear_seed or chunker.DEFAULT_SEED)

    @property
    def sealed(self) -> bool:
        return self.key_id is not None

    def header(self) -> dict[str, object]:
        """What a manifest header records of the encoding its data was written with."""
        return {"key_id": self.key_id, "compression_level": self.data.level if self.data.compress else 0}

    def seal_data(self, data: bytes | memoryview, aad: str, probe: bool = False) -> bytes:
        """A data piece held in memory (a small file, a chunk), encoded (`probe`: Codec.encode)."""
        return self.data.encode(data, aad.encode(), probe=probe)

    def manifest_aad(self, root: str, sid: str) -> bytes:
        return f"{root}{sid}".encode()

    def open_data(self, blob: bytes, aad: str, size: int, what: str) -> bytes:
        """A data piece held in memory, as plaintext; WrongKey (exit 2) or IntegrityError.
        `aad`: what it was sealed for (the plaintext's SHA-256 hex for pack pieces and chunks)."""
        try:
            return self.data.decode(blob, aad.encode(), size)
        except WrongKeyError as exc:
            raise WrongKey(f"storage.encryption_key does not open {what}: {exc}") from None
        except CodecError as exc:
            raise IntegrityError(f"{what}: {exc}") from None

    def open_data_iter(self, parts: Iterable[bytes], aad: str, size: int | None, what: str) -> Iterator[bytes]:
        """A streamed data piece (a dump), a MiB at a time; raises as open_data does."""
        try:
            yield from self.data.decode_iter(parts, aad.encode(), size)
        except WrongKeyError as exc:
            raise WrongKey(f"storage.encryption_key does not open {what}: {exc}") from None
        except CodecError as exc:
            raise IntegrityError(f"{what}: {exc}") from None


def damaged(exc: BaseException) -> bool:
    """Whether an error from reading a piece means the stored object is damaged (not the key)."""
    return isinstance(exc, DamagedPieceError | IntegrityError) and not isinstance(exc, WrongKey)


@functools.lru_cache(maxsize=8)
def _keyring(current: str, previous: tuple[str, ...]) -> Keyring:
    # scrypt costs 0.2 s: once per secret and process (the daemon runs many jobs).
    return Keyring(current, previous)


def for_storage(storage: Storage) -> Encoding:
    keyring: Keyring | None = None
    if storage.encryption_key:
        try:
            keyring = _keyring(storage.encryption_key, tuple(storage.previous_encryption_keys))
        except ValueError as exc:
            raise ConfigError(f"storage.encryption_key: {exc}") from None
    level = storage.compression_level
    data = Codec(keyring, codec.PURPOSE_DATA, level=max(level, 1), compress=level > 0)
    manifest = Codec(keyring, codec.PURPOSE_MANIFEST, compress=False)
    seed = keyring.current.gear_seed if keyring is not None else None
    return Encoding(data=data, manifest=manifest, gear_seed=seed,
                    key_id=keyring.current.key_id.hex() if keyring is not None else None,
                    read_unencrypted=storage.read_unencrypted_snapshots)
