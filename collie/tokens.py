"""Where collie finds the cluster's admin token (docs/security.md), first match wins:

1. ``--token-file FILE``;
2. the environment: ``SHEEP_ADMIN_TOKEN`` (the token), ``SHEEP_ADMIN_TOKEN_FILE`` (a file);
3. the per-user config file ``$XDG_CONFIG_HOME/collie/token`` (``~/.config/collie/token``),
   which ``sheepdog-local up`` and ``compose/cluster.sh up`` write;
4. on a sheep's own machine, ``/etc/sheepdog/<cluster>/admin.token`` when exactly one
   cluster has one there (each sheep keeps a copy).

No token found is not an error here: the sheep answers 401 and collie says so.
"""
from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

SYSTEM_DIR = Path("/etc/sheepdog")


@dataclass(frozen=True)
class Token:
    value: str | None
    source: str                  # where it came from, for error messages
    file: Path | None = None     # the file it was read from (rotation rewrites it)


class TokenError(Exception):
    """A token source that was named but cannot be read (one line)."""


def user_token_file(environ=os.environ) -> Path:
    base = environ.get("XDG_CONFIG_HOME") or str(Path(environ.get("HOME") or "~").expanduser()
                                                  / ".config")
    return Path(base) / "collie" / "token"


def _read(path: Path) -> str:
    try:
        text = path.read_text().strip()
    except OSError as exc:
        raise TokenError(f"cannot read token file {path}: {exc.strerror or exc}") from None
    if not text:
        raise TokenError(f"token file {path} is empty")
    return text.splitlines()[0].strip()


def write_token(path: Path, token: str) -> None:
    """Replace the token file (mode 0600, by rename: never a half-written token)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
    tmp = path.with_name(f".{path.name}.new")
    with open(os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600), "w") as f:
        f.write(token + "\n")
    os.replace(tmp, path)


def find_token(token_file: Path | None = None, environ=os.environ,
               system_dir: Path = SYSTEM_DIR) -> Token:
    if token_file is not None:
        return Token(_read(Path(token_file)), f"--token-file {token_file}", Path(token_file))
    if environ.get("SHEEP_ADMIN_TOKEN"):
        return Token(environ["SHEEP_ADMIN_TOKEN"].strip(), "SHEEP_ADMIN_TOKEN")
    if environ.get("SHEEP_ADMIN_TOKEN_FILE"):
        path = Path(environ["SHEEP_ADMIN_TOKEN_FILE"])
        return Token(_read(path), f"SHEEP_ADMIN_TOKEN_FILE={path}", path)
    user = user_token_file(environ)
    if user.exists():
        return Token(_read(user), str(user), user)
    try:
        found = sorted(p for p in system_dir.glob("*/admin.token") if os.access(p, os.R_OK))
    except OSError:
        found = []
    if len(found) == 1:
        return Token(_read(found[0]), str(found[0]), found[0])
    return Token(None, "nowhere (no --token-file, SHEEP_ADMIN_TOKEN or "
                       f"{user})")
