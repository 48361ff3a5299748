"""The cluster's secrets, as files: the cluster secret and the admin token.

* The **cluster secret** (32 random bytes, hex, one line; mode 0600) is shared by every
  sheep of a cluster.  Keys are derived from it per purpose (`ClusterSecret.derive`):
  the peer protocol's HMAC key and the ZooKeeper digest credentials, so one file proves
  membership everywhere and no derived key can be turned into another.
* The **admin token** is the bearer token of the HTTP admin API.  It lives in ZooKeeper
  under a digest ACL (readable by sheep only) and every sheep writes a copy to its
  token file so operators can find it.

Pure file handling and derivation; no network.  docs/security.md has the trust model.
"""
from __future__ import annotations

import base64
import hashlib
import hmac
import os
import secrets as _random
from pathlib import Path

SECRET_BYTES = 32
ZK_USER = "sheep"


class SecretError(Exception):
    """A secret file that cannot be read, written or parsed; the message is one line."""


def same(a: str | bytes, b: str | bytes) -> bool:
    """Constant-time comparison (tokens, MACs)."""
    if isinstance(a, str):
        a = a.encode()
    if isinstance(b, str):
        b = b.encode()
    return hmac.compare_digest(a, b)


def new_token() -> str:
    return _random.token_urlsafe(32)


def write_private(path: Path, text: str, *, exclusive: bool = False) -> None:
    """Write ``text`` to ``path`` with mode 0600, creating its directory (0700).  The file
    appears whole or not at all (a temporary file, fsynced, then renamed, or with
    ``exclusive`` hard-linked: FileExistsError if ``path`` exists, and a racing reader
    never sees it empty)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.{_random.token_hex(4)}.tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    try:
        try:
            os.write(fd, text.encode())
            os.fsync(fd)
        finally:
            os.close(fd)
        if exclusive:
            os.link(tmp, path)
        else:
            os.replace(tmp, path)
    finally:
        if tmp.exists():
            tmp.unlink()


def read_line(path: Path) -> str | None:
    """The first line of a secret file, stripped; None if the file does not exist."""
    try:
        text = Path(path).read_text()
    except FileNotFoundError:
        return None
    except (OSError, UnicodeDecodeError) as exc:
        raise SecretError(f"cannot read {path}: {exc}") from None
    line = text.strip().splitlines()[0].strip() if text.strip() else ""
    if not line:
        raise SecretError(f"{path} is empty")
    return line


class ClusterSecret:
    """The cluster secret and the keys derived from it."""

    def __init__(self, raw: bytes) -> None:
        if len(raw) < 16:
            raise SecretError("a cluster secret needs at least 16 bytes")
        self._raw = bytes(raw)

    @classmethod
    def parse(cls, text: str, where: str = "cluster secret") -> "ClusterSecret":
        try:
            return cls(bytes.fromhex(text.strip()))
        except ValueError:
            raise SecretError(f"{where} is not hex (make one with: "
                              f"python3 -c 'import secrets; print(secrets.token_hex(32))')") from None

    @classmethod
    def load_or_create(cls, path: Path) -> tuple["ClusterSecret", bool]:
        """Read the secret at ``path``, or create a new random one there (0600).
        Returns (secret, created).  Two processes racing to create agree (O_EXCL)."""
        line = read_line(path)
        if line is not None:
            return cls.parse(line, str(path)), False
        try:
            write_private(path, _random.token_hex(SECRET_BYTES) + "\n", exclusive=True)
            created = True
        except FileExistsError:
            created = False
        except OSError as exc:
            raise SecretError(f"cannot create {path}: {exc}") from None
        return cls.parse(read_line(path) or "", str(path)), created

    def derive(self, purpose: str) -> bytes:
        """A 32-byte key for one purpose (HMAC-SHA256 of the secret over its name)."""
        return hmac.new(self._raw, b"sheepdog-py/" + purpose.encode(), hashlib.sha256).digest()

    @property
    def peer_key(self) -> bytes:
        return self.derive("peer")

    @property
    def zk_password(self) -> str:
        return base64.urlsafe_b64encode(self.derive("zookeeper")).decode().rstrip("=")

    @property
    def zk_credentials(self) -> str:
        """``user:password`` for kazoo's ``auth_data=[("digest", ...)]``."""
        return f"{ZK_USER}:{self.zk_password}"

    @property
    def fingerprint(self) -> str:
        """A short public name of this secret (logs: do two nodes share one?)."""
        return self.derive("fingerprint").hex()[:12]
