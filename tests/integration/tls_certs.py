"""x509 files for NBD over TLS tests, made with ``openssl`` in a tmp dir (qemu's names).

``make_certs(base)`` makes a CA, a server certificate (SAN ``DNS:localhost,IP:127.0.0.1``)
and a client certificate signed by it, plus a second, foreign CA with a client
certificate of its own, and lays them out as the directories the tools load:

* ``server``: ``ca-cert.pem``, ``server-cert.pem``, ``server-key.pem`` (``--nbd-tls-dir``)
* ``client``: ``ca-cert.pem``, ``client-cert.pem``, ``client-key.pem`` (qemu ``dir=``,
  libnbd ``tls-certificates=``), CN ``nbd-client``
* ``foreign``: a client certificate of the foreign CA, CN ``intruder``; its
  ``ca-cert.pem`` holds both CAs (the client trusts the server, and qemu, which checks
  its own certificate against that file, agrees to send it)
* ``nocert``: our CA only, no client certificate
"""
from __future__ import annotations

import shutil
import subprocess
from dataclasses import dataclass
from pathlib import Path

CLIENT_CN = "nbd-client"
FOREIGN_CN = "intruder"


@dataclass(frozen=True)
class TlsCerts:
    server: Path
    client: Path
    foreign: Path
    nocert: Path


def _openssl(*args: str, cwd: Path) -> None:
    subprocess.run(["openssl", *args], cwd=cwd, check=True, capture_output=True, timeout=60)


def _ca(work: Path, name: str) -> None:
    _openssl("req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "30",
             "-keyout", f"{name}-key.pem", "-out", f"{name}-cert.pem", "-subj", f"/CN={name}",
             "-addext", "basicConstraints=critical,CA:TRUE",
             "-addext", "keyUsage=critical,keyCertSign,cRLSign", cwd=work)


def _leaf(work: Path, name: str, cn: str, ca: str, usage: str, san: str = "") -> None:
    ext = work / f"{name}.ext"
    lines = ["basicConstraints=CA:FALSE", "keyUsage=critical,digitalSignature,keyEncipherment",
             f"extendedKeyUsage={usage}"]
    if san:
        lines.append(f"subjectAltName={san}")
    ext.write_text("\n".join(lines) + "\n")
    _openssl("req", "-newkey", "rsa:2048", "-nodes", "-keyout", f"{name}-key.pem",
             "-out", f"{name}.csr", "-subj", f"/CN={cn}", cwd=work)
    _openssl("x509", "-req", "-in", f"{name}.csr", "-CA", f"{ca}-cert.pem",
             "-CAkey", f"{ca}-key.pem", "-CAcreateserial", "-days", "30",
             "-out", f"{name}-cert.pem", "-extfile", ext.name, cwd=work)


def _layout(work: Path, target: Path, files: dict[str, str]) -> Path:
    target.mkdir()
    for dest, src in files.items():
        shutil.copy(work / src, target / dest)
    return target


def make_certs(base: Path) -> TlsCerts:
    work = base / "pki"
    work.mkdir(parents=True)
    _ca(work, "ca")
    _ca(work, "foreign-ca")
    _leaf(work, "server", "localhost", "ca", "serverAuth", "DNS:localhost,IP:127.0.0.1")
    _leaf(work, "client", CLIENT_CN, "ca", "clientAuth")
    _leaf(work, "intruder", FOREIGN_CN, "foreign-ca", "clientAuth")
    (work / "both-ca.pem").write_bytes((work / "ca-cert.pem").read_bytes()
                                       + (work / "foreign-ca-cert.pem").read_bytes())
    return TlsCerts(
        server=_layout(work, base / "server", {"ca-cert.pem": "ca-cert.pem",
                                               "server-cert.pem": "server-cert.pem",
                                               "server-key.pem": "server-key.pem"}),
        client=_layout(work, base / "client", {"ca-cert.pem": "ca-cert.pem",
                                               "client-cert.pem": "client-cert.pem",
                                               "client-key.pem": "client-key.pem"}),
        foreign=_layout(work, base / "foreign", {"ca-cert.pem": "both-ca.pem",
                                                 "client-cert.pem": "intruder-cert.pem",
                                                 "client-key.pem": "intruder-key.pem"}),
        nocert=_layout(work, base / "nocert", {"ca-cert.pem": "ca-cert.pem"}))
