"""Deployment helpers: TEST certificates and a SuperLink that keeps working under load.

``make_test_certificates`` writes a self-signed CA, a SuperLink server certificate signed by
it (SANs: localhost, 127.0.0.1 and any ``hosts``) and one EC P-384 key pair per SuperNode
(the keys Flower's SuperNode authentication uses). For production, use your institution's
CA and keep private keys on the machines they identify; see docs/federated.md.

``run_superlink`` is ``flower-superlink`` with a longer SQLite busy timeout. Why: with
``--database FILE`` every Fleet / Runtime / Control request of the SuperLink is a SQLite
transaction on one file, and Flower 1.41 waits at most 5 s (``PRAGMA busy_timeout = 5000``,
hard-coded in ``flwr.supercore.sql_mixin``) for another request's write lock before failing
with ``database is locked``. Storing one message preregisters every array of the model as an
object inside one write transaction, so a transaction lasts a time proportional to the model's
array count divided by the CPU the SuperLink gets; on a loaded machine they held the lock
for more than 5 s, a heartbeat or a ServerApp push failed, and the run died
(``tests/federated/test_fed_superlink.py`` reproduces the failure with a 6 s lock holder). A
lock wait is not an error condition, so the wait is made long instead (``BUSY_TIMEOUT_S``).
"""

from __future__ import annotations

import datetime as dt
import ipaddress
import os
import sys
from pathlib import Path

#: Environment for SuperLink/SuperNode/flwr: never ``uv sync`` app dependencies at run time
#: (it would resolve and download a CUDA torch); sites install facepriv themselves.
DEPLOY_ENV = {"FLWR_DISABLE_RUNTIME_DEPENDENCY_INSTALLATION": "1"}

#: seconds a SuperLink request waits for SQLite's write lock (Flower's own default: 5).
BUSY_TIMEOUT_S = 300.0


def set_sqlite_busy_timeout(seconds: float) -> None:
    """Make every SQLite connection Flower opens from now on in this process wait up to
    ``seconds`` for a lock (see module docstring). Raises ``RuntimeError`` when the installed
    flwr has no ``busy_timeout`` pragma where 1.41 keeps it, instead of silently doing nothing."""
    import flwr.supercore.sql_mixin as sql_mixin

    pragmas = getattr(sql_mixin, "SQLITE_PRAGMAS", None)
    if not pragmas or not any(name == "busy_timeout" for name, _ in pragmas):
        raise RuntimeError("flwr.supercore.sql_mixin.SQLITE_PRAGMAS has no busy_timeout entry in this flwr version; "
                           "run flower-superlink directly (its SQLite lock wait stays at Flower's default)")
    if not seconds > 0:
        raise ValueError(f"busy timeout must be > 0 seconds, got {seconds}")
    sql_mixin.SQLITE_PRAGMAS = tuple((name, str(int(seconds * 1000)) if name == "busy_timeout" else value)
                                     for name, value in pragmas)


def run_superlink(argv: list[str], *, busy_timeout_s: float = BUSY_TIMEOUT_S) -> None:
    """``flower-superlink ARGV`` in this process, its SQLite lock wait ``busy_timeout_s``."""
    set_sqlite_busy_timeout(busy_timeout_s)
    from flwr.superlink.cli.flower_superlink import flower_superlink

    sys.argv = ["flower-superlink", *argv]
    flower_superlink()


def _write(path: Path, data: bytes, private: bool = False) -> Path:
    path.write_bytes(data)
    if private:
        os.chmod(path, 0o600)
    return path


def make_test_certificates(out: str | os.PathLike[str], *, nodes: int = 2, hosts: list[str] | None = None,
                           days: int = 30) -> dict[str, Path]:
    """CA + SuperLink TLS certificate + ``nodes`` SuperNode key pairs under ``out``."""
    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import NameOID

    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    now = dt.datetime.now(dt.timezone.utc)
    pem = serialization.Encoding.PEM
    nopass = serialization.NoEncryption()

    def name(cn: str) -> x509.Name:
        return x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, cn), x509.NameAttribute(NameOID.ORGANIZATION_NAME, "facepriv test")])

    ca_key = ec.generate_private_key(ec.SECP384R1())
    ca_cert = (x509.CertificateBuilder().subject_name(name("facepriv test CA")).issuer_name(name("facepriv test CA"))
               .public_key(ca_key.public_key()).serial_number(x509.random_serial_number())
               .not_valid_before(now - dt.timedelta(minutes=5)).not_valid_after(now + dt.timedelta(days=days))
               .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
               .sign(ca_key, hashes.SHA256()))
    sans: list[x509.GeneralName] = []
    for h in hosts or ["localhost", "127.0.0.1"]:
        try:
            sans.append(x509.IPAddress(ipaddress.ip_address(h)))
        except ValueError:
            sans.append(x509.DNSName(h))
    srv_key = ec.generate_private_key(ec.SECP384R1())
    srv_cert = (x509.CertificateBuilder().subject_name(name("superlink")).issuer_name(ca_cert.subject)
                .public_key(srv_key.public_key()).serial_number(x509.random_serial_number())
                .not_valid_before(now - dt.timedelta(minutes=5)).not_valid_after(now + dt.timedelta(days=days))
                .add_extension(x509.SubjectAlternativeName(sans), critical=False)
                .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
                .sign(ca_key, hashes.SHA256()))
    paths = {
        "ca_cert": _write(out / "ca.crt", ca_cert.public_bytes(pem)),
        "ca_key": _write(out / "ca.key", ca_key.private_bytes(pem, serialization.PrivateFormat.PKCS8, nopass), private=True),
        "server_cert": _write(out / "server.pem", srv_cert.public_bytes(pem)),
        "server_key": _write(out / "server.key", srv_key.private_bytes(pem, serialization.PrivateFormat.PKCS8, nopass), private=True),
    }
    for i in range(1, nodes + 1):
        key = ec.generate_private_key(ec.SECP384R1())
        # OpenSSH format for both halves: flower-supernode 1.41 reads the private key with
        # ``load_ssh_private_key`` (a PKCS8 PEM key is refused with exit code 302).
        paths[f"node{i}_key"] = _write(out / f"supernode{i}.key",
                                       key.private_bytes(pem, serialization.PrivateFormat.OpenSSH, nopass), private=True)
        paths[f"node{i}_pub"] = _write(out / f"supernode{i}.pub", key.public_key().public_bytes(
            serialization.Encoding.OpenSSH, serialization.PublicFormat.OpenSSH))
    return paths
