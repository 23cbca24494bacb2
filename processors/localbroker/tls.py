"""A throwaway certificate authority and broker certificate for the secured local broker.

Made with the JDK's ``keytool`` (the broker needs Java anyway, so this adds no dependency): a CA
key pair whose certificate clients trust (``ca.pem``), a broker key pair signed by it for
``localhost`` and ``127.0.0.1`` in a PKCS12 keystore, and a truststore holding the CA (the broker's
own inter-broker client verifies itself with it). EC keys, because they are made in milliseconds.

A second, unrelated CA (``other-ca.pem``) is made as well: a client that trusts only it sees the
broker's certificate as untrusted, which is what a wrong ``ssl.ca.location`` looks like.
"""

from __future__ import annotations

import secrets
import shutil
import subprocess
from dataclasses import dataclass
from pathlib import Path

from processors.localbroker.jars import ToolchainError

_VALIDITY_DAYS = "3650"
_SAN = "SAN=dns:localhost,ip:127.0.0.1"


@dataclass(frozen=True)
class BrokerTls:
    """Where the files are and the one password that opens the stores (a local test secret)."""

    directory: Path
    password: str

    @property
    def ca_pem(self) -> Path:
        return self.directory / "ca.pem"

    @property
    def other_ca_pem(self) -> Path:
        return self.directory / "other-ca.pem"

    @property
    def keystore(self) -> Path:
        return self.directory / "broker.p12"

    @property
    def truststore(self) -> Path:
        return self.directory / "truststore.p12"

    @property
    def password_file(self) -> Path:
        return self.directory / "store.password"

    def is_complete(self) -> bool:
        files = (self.ca_pem, self.other_ca_pem, self.keystore, self.truststore, self.password_file)
        return all(path.is_file() for path in files)


def ensure_broker_tls(directory: Path) -> BrokerTls:
    """The CA and broker certificate under `directory`, made on first use and reused after (a
    restarted broker keeps the certificate its clients already trust)."""
    directory.mkdir(parents=True, exist_ok=True)
    password_file = directory / "store.password"
    if password_file.is_file():
        tls = BrokerTls(directory, password_file.read_text().strip())
        if tls.is_complete():
            return tls
    tls = BrokerTls(directory, secrets.token_hex(16))
    for path in directory.iterdir():
        if path.suffix in (".p12", ".pem", ".csr"):
            path.unlink()
    _make(tls)
    password_file.write_text(tls.password + "\n")
    password_file.chmod(0o600)
    return tls


def _make(tls: BrokerTls) -> None:
    d, pw = tls.directory, tls.password
    ca_store, other_store = d / "ca.p12", d / "other-ca.p12"
    csr, signed = d / "broker.csr", d / "broker-signed.pem"
    _new_key(ca_store, "ca", "CN=choreo local CA", pw, "bc:c")
    _keytool("-exportcert", "-rfc", "-alias", "ca", "-keystore", ca_store, "-storepass", pw, "-file", tls.ca_pem)
    _new_key(other_store, "ca", "CN=some other CA", pw, "bc:c")
    _keytool(
        "-exportcert", "-rfc", "-alias", "ca", "-keystore", other_store, "-storepass", pw, "-file", tls.other_ca_pem
    )
    _new_key(tls.keystore, "broker", "CN=localhost", pw, _SAN)
    _keytool("-certreq", "-alias", "broker", "-keystore", tls.keystore, "-storepass", pw, "-file", csr)
    _keytool(
        "-gencert", "-rfc", "-alias", "ca", "-keystore", ca_store, "-storepass", pw, "-infile", csr,
        "-outfile", signed, "-ext", _SAN, "-validity", _VALIDITY_DAYS,
    )  # fmt: skip
    for store in (tls.keystore, tls.truststore):
        _keytool("-importcert", "-noprompt", "-alias", "ca", "-file", tls.ca_pem, "-keystore", store,
                 "-storetype", "PKCS12", "-storepass", pw)  # fmt: skip
    _keytool("-importcert", "-noprompt", "-alias", "broker", "-file", signed, "-keystore", tls.keystore,
             "-storepass", pw)  # fmt: skip
    for path in (ca_store, other_store, csr, signed):
        path.unlink()
    tls.keystore.chmod(0o600)  # the broker's private key


def _new_key(store: Path, alias: str, dname: str, password: str, extension: str) -> None:
    _keytool(
        "-genkeypair", "-alias", alias, "-keyalg", "EC", "-groupname", "secp256r1", "-dname", dname,
        "-ext", extension, "-validity", _VALIDITY_DAYS, "-keystore", store, "-storetype", "PKCS12",
        "-storepass", password, "-keypass", password,
    )  # fmt: skip


def _keytool(*args: str | Path) -> None:
    exe = shutil.which("keytool")
    if exe is None:
        raise ToolchainError("keytool not found on PATH: it comes with the JDK (e.g. `apt-get install openjdk-17-jdk`)")
    proc = subprocess.run([exe, *map(str, args)], capture_output=True, text=True, check=False)
    if proc.returncode != 0:
        raise ToolchainError(f"keytool {args[0]} failed: {' '.join((proc.stdout + proc.stderr).split())[:300]}")
