"""The network's small public-key infrastructure: one certificate authority, one certificate per site.

Every link between two hospitals is mutual TLS. Both ends present a certificate signed by the
network's CA (``hospitalnet pki init``) and issued for one site (``hospitalnet pki issue SITE``).

How a certificate names a site (the receiver's rule, used by :mod:`hospitalnet.transport.grpc`):

- the subject CN is the site id, and the subjectAltName carries ``URI:urn:hospitalnet:site:<id>``
  and ``DNS:<id>`` (plus the host IPs / DNS names given with ``--host``);
- a server identifies the calling site by the URI SAN of the client certificate that the TLS
  handshake verified against the CA; the CN must agree. The envelope's ``sender`` must equal it;
- a client checks the server it dialled is the intended neighbour by verifying the server
  certificate's hostname against the neighbour's *site id* (the ``DNS:<id>`` SAN), not against the
  address, so another member of the network cannot answer on a neighbour's address.

Keys are EC P-256, unencrypted PKCS#8 PEM files with mode 0600; certificates are PEM. Nothing here
touches the network.
"""

from __future__ import annotations

import datetime as dt
import ipaddress
import logging
import os
import re
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from cryptography import x509
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from hospitalnet.errors import NetworkError
from hospitalnet.rundir import atomic_write_bytes

if TYPE_CHECKING:
    from hospitalnet.data.manifest import NetworkIdentity

log = logging.getLogger(__name__)

CA_CERT = "ca.pem"
CA_KEY = "ca.key"
SITE_URI_PREFIX = "urn:hospitalnet:site:"
SITE_ID = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_-]{0,31}$")  # as in data.manifest.SiteManifest
CA_DAYS = 3650
SITE_DAYS = 365
CLOCK_SKEW = dt.timedelta(minutes=5)  # certificates start a little in the past


@dataclass(frozen=True)
class TlsCredentials:
    """What one site needs for mutual TLS: the network's CA and its own certificate and key."""

    site: str  # the site id the certificate was issued for
    ca_pem: bytes
    cert_pem: bytes
    key_pem: bytes
    not_valid_after: dt.datetime


def _now() -> dt.datetime:
    return dt.datetime.now(dt.timezone.utc)


def _write_key(path: Path, key: ec.EllipticCurvePrivateKey) -> None:
    data = key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    )
    atomic_write_bytes(path, data)  # mkstemp creates the file 0600 before any byte is written
    os.chmod(path, 0o600)


def _write_cert(path: Path, cert: x509.Certificate) -> None:
    atomic_write_bytes(path, cert.public_bytes(serialization.Encoding.PEM))
    os.chmod(path, 0o644)


def check_site_id(site: str) -> str:
    if not SITE_ID.match(site):
        raise NetworkError(
            f"site id {site!r}: use 1-32 letters, digits, '_' or '-', starting with a letter/digit"
        )
    return site


def create_ca(
    out: str | Path,
    *,
    name: str = "hospitalnet network CA",
    days: int = CA_DAYS,
    not_before: dt.datetime | None = None,
) -> tuple[Path, Path]:
    """Create ``out/ca.pem`` and ``out/ca.key`` (0600). Refuses to overwrite an existing CA key."""
    out = Path(out)
    cert_path, key_path = out / CA_CERT, out / CA_KEY
    if key_path.exists() or cert_path.exists():
        raise NetworkError(f"{out}: already holds a CA ({CA_CERT}/{CA_KEY}); not overwriting it")
    key = ec.generate_private_key(ec.SECP256R1())
    start = not_before or (_now() - CLOCK_SKEW)
    subject = x509.Name(
        [
            x509.NameAttribute(NameOID.ORGANIZATION_NAME, "hospitalnet"),
            x509.NameAttribute(NameOID.COMMON_NAME, name),
        ]
    )
    ski = x509.SubjectKeyIdentifier.from_public_key(key.public_key())
    cert = (
        x509.CertificateBuilder()
        .subject_name(subject)
        .issuer_name(subject)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(start)
        .not_valid_after(start + dt.timedelta(days=days))
        .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
        .add_extension(
            x509.KeyUsage(
                digital_signature=False,
                content_commitment=False,
                key_encipherment=False,
                data_encipherment=False,
                key_agreement=False,
                key_cert_sign=True,
                crl_sign=True,
                encipher_only=False,
                decipher_only=False,
            ),
            critical=True,
        )
        .add_extension(ski, critical=False)
        .sign(key, hashes.SHA256())
    )
    out.mkdir(parents=True, exist_ok=True)
    _write_key(key_path, key)
    _write_cert(cert_path, cert)
    return cert_path, key_path


def _load_ca(ca_dir: Path) -> tuple[x509.Certificate, ec.EllipticCurvePrivateKey]:
    cert = load_certificate(ca_dir / CA_CERT)
    key_path = ca_dir / CA_KEY
    try:
        key = serialization.load_pem_private_key(key_path.read_bytes(), password=None)
    except FileNotFoundError:
        raise NetworkError(f"{key_path}: CA key not found (create it with 'pki init')") from None
    except OSError as err:
        raise NetworkError(f"{key_path}: cannot read ({err.strerror})") from None
    except (ValueError, TypeError) as err:
        raise NetworkError(f"{key_path}: not a readable unencrypted PEM key ({err})") from None
    if not isinstance(key, ec.EllipticCurvePrivateKey):
        raise NetworkError(f"{key_path}: expected an EC private key")
    return cert, key


def _san_entries(site: str, hosts: list[str]) -> list[x509.GeneralName]:
    names: list[x509.GeneralName] = [
        x509.UniformResourceIdentifier(SITE_URI_PREFIX + site),
        x509.DNSName(site),
    ]
    for host in hosts:
        try:
            names.append(x509.IPAddress(ipaddress.ip_address(host)))
        except ValueError:
            if not re.match(r"^[A-Za-z0-9*]([A-Za-z0-9.*_-]{0,252})$", host):
                raise NetworkError(f"--host {host!r}: not an IP address or DNS name") from None
            if host != site:
                names.append(x509.DNSName(host))
    return names


def issue_site_certificate(
    site: str,
    ca_dir: str | Path,
    out: str | Path | None = None,
    *,
    hosts: list[str] | tuple[str, ...] = ("127.0.0.1", "localhost"),
    days: int = SITE_DAYS,
    not_before: dt.datetime | None = None,
) -> tuple[Path, Path]:
    """Issue ``out/SITE.pem`` and ``out/SITE.key`` (0600), signed by the CA in ``ca_dir``.

    ``out`` defaults to ``ca_dir``. ``not_before`` (default: now minus 5 minutes) and ``days`` set
    the validity window; a window in the past gives an expired certificate (used by the tests).
    """
    check_site_id(site)
    if days <= 0:
        raise NetworkError(f"--days {days}: must be positive")
    ca_dir = Path(ca_dir)
    out = Path(out) if out is not None else ca_dir
    ca_cert, ca_key = _load_ca(ca_dir)
    key = ec.generate_private_key(ec.SECP256R1())
    start = not_before or (_now() - CLOCK_SKEW)
    end = start + dt.timedelta(days=days)
    if end > ca_cert.not_valid_after_utc:
        end = ca_cert.not_valid_after_utc
        log.warning("site certificate %s shortened to the CA's expiry (%s)", site, end.date())
    cert = (
        x509.CertificateBuilder()
        .subject_name(
            x509.Name(
                [
                    x509.NameAttribute(NameOID.ORGANIZATION_NAME, "hospitalnet"),
                    x509.NameAttribute(NameOID.COMMON_NAME, site),
                ]
            )
        )
        .issuer_name(ca_cert.subject)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(start)
        .not_valid_after(end)
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .add_extension(
            x509.KeyUsage(
                digital_signature=True,
                content_commitment=False,
                key_encipherment=False,
                data_encipherment=False,
                key_agreement=True,
                key_cert_sign=False,
                crl_sign=False,
                encipher_only=False,
                decipher_only=False,
            ),
            critical=True,
        )
        # Every site is both a server (its neighbours call it) and a client (it calls them).
        .add_extension(
            x509.ExtendedKeyUsage(
                [ExtendedKeyUsageOID.SERVER_AUTH, ExtendedKeyUsageOID.CLIENT_AUTH]
            ),
            critical=False,
        )
        .add_extension(x509.SubjectAlternativeName(_san_entries(site, list(hosts))), critical=False)
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(key.public_key()), critical=False)
        .add_extension(
            x509.AuthorityKeyIdentifier.from_issuer_public_key(ca_key.public_key()),
            critical=False,
        )
        .sign(ca_key, hashes.SHA256())
    )
    out.mkdir(parents=True, exist_ok=True)
    cert_path, key_path = out / f"{site}.pem", out / f"{site}.key"
    _write_key(key_path, key)
    _write_cert(cert_path, cert)
    return cert_path, key_path


def load_certificate(path: str | Path) -> x509.Certificate:
    path = Path(path)
    try:
        return x509.load_pem_x509_certificate(path.read_bytes())
    except FileNotFoundError:
        raise NetworkError(f"{path}: certificate not found") from None
    except OSError as err:  # a folder, a file where a folder should be, no permission
        raise NetworkError(f"{path}: cannot read ({err.strerror})") from None
    except ValueError as err:
        raise NetworkError(f"{path}: not a PEM certificate ({err})") from None


def site_id_of(cert: x509.Certificate) -> str | None:
    """The site a certificate was issued for: its ``urn:hospitalnet:site:`` URI SAN, if the CN
    agrees; ``None`` for a certificate that does not name exactly one site."""
    try:
        san = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    except x509.ExtensionNotFound:
        return None
    sites = [
        uri[len(SITE_URI_PREFIX) :]
        for uri in san.get_values_for_type(x509.UniformResourceIdentifier)
        if uri.startswith(SITE_URI_PREFIX)
    ]
    cns = [a.value for a in cert.subject.get_attributes_for_oid(NameOID.COMMON_NAME)]
    if len(sites) != 1 or cns != [sites[0]] or not SITE_ID.match(sites[0]):
        return None
    return sites[0]


def load_credentials(
    ca: str | Path, certificate: str | Path, key: str | Path, *, site: str | None = None
) -> TlsCredentials:
    """Read and check one site's TLS material; ``site`` (if given) must be the certificate's site.

    Checks: the certificate is signed by the CA, names one site, is currently valid, and the key
    belongs to it. Each failure is one line naming the file.
    """
    ca_cert = load_certificate(ca)
    cert = load_certificate(certificate)
    key_path = Path(key)
    try:
        key_pem = key_path.read_bytes()
        private = serialization.load_pem_private_key(key_pem, password=None)
    except FileNotFoundError:
        raise NetworkError(f"{key_path}: key not found") from None
    except OSError as err:
        raise NetworkError(f"{key_path}: cannot read ({err.strerror})") from None
    except (ValueError, TypeError) as err:
        raise NetworkError(f"{key_path}: not a readable unencrypted PEM key ({err})") from None
    try:
        cert.verify_directly_issued_by(ca_cert)
    except (ValueError, TypeError, InvalidSignature):
        raise NetworkError(f"{certificate}: not issued by the CA in {ca}") from None
    cert_site = site_id_of(cert)
    if cert_site is None:
        raise NetworkError(f"{certificate}: does not name a hospitalnet site (CN/URI SAN)")
    if site is not None and cert_site != site:
        raise NetworkError(f"{certificate}: issued for site {cert_site!r}, not {site!r}")
    now = _now()
    if not (cert.not_valid_before_utc <= now <= cert.not_valid_after_utc):
        raise NetworkError(
            f"{certificate}: not valid now (valid {cert.not_valid_before_utc:%Y-%m-%d} to "
            f"{cert.not_valid_after_utc:%Y-%m-%d})"
        )
    pub = serialization.PublicFormat.SubjectPublicKeyInfo
    if private.public_key().public_bytes(
        serialization.Encoding.DER, pub
    ) != cert.public_key().public_bytes(serialization.Encoding.DER, pub):
        raise NetworkError(f"{key_path}: does not belong to {certificate}")
    return TlsCredentials(
        site=cert_site,
        ca_pem=Path(ca).read_bytes(),
        cert_pem=Path(certificate).read_bytes(),
        key_pem=key_pem,
        not_valid_after=cert.not_valid_after_utc,
    )


def site_credentials(
    ca_dir: str | Path, site: str, cert_dir: str | Path | None = None
) -> TlsCredentials:
    """The credentials ``pki issue SITE`` wrote (``cert_dir`` defaults to ``ca_dir``)."""
    cert_dir = Path(cert_dir) if cert_dir is not None else Path(ca_dir)
    return load_credentials(
        Path(ca_dir) / CA_CERT, cert_dir / f"{site}.pem", cert_dir / f"{site}.key", site=site
    )


def credentials_from_identity(
    identity: NetworkIdentity, site: str, base: str | Path
) -> TlsCredentials:
    """Credentials named by a manifest's ``network`` section; relative paths are taken relative
    to ``base`` (the manifest's folder)."""
    missing = [k for k in ("ca", "certificate", "key") if not getattr(identity, k)]
    if missing:
        raise NetworkError(f"network.{missing[0]}: required to run a site over gRPC")

    def resolve(p: str) -> Path:
        path = Path(os.path.expanduser(p))
        return path if path.is_absolute() else Path(base) / path

    return load_credentials(
        resolve(identity.ca), resolve(identity.certificate), resolve(identity.key), site=site
    )
