"""The network CA and site certificates (``hospitalnet.pki`` and ``hospitalnet pki``)."""

from __future__ import annotations

import datetime as dt
import ipaddress
import stat

import pytest
from cryptography import x509
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.hazmat.primitives.serialization import load_pem_private_key
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from hospitalnet import pki
from hospitalnet.cli import main
from hospitalnet.data.manifest import NetworkIdentity
from hospitalnet.errors import NetworkError


def _cert(path):
    return x509.load_pem_x509_certificate(path.read_bytes())


def _mode(path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


@pytest.mark.timeout(30)
def test_init_creates_a_ten_year_self_signed_ca_with_a_private_key(tmp_path):
    cert_path, key_path = pki.create_ca(tmp_path / "ca")
    cert = _cert(cert_path)
    assert cert.issuer == cert.subject
    cert.verify_directly_issued_by(cert)  # self-signed
    assert cert.extensions.get_extension_for_class(x509.BasicConstraints).value.ca
    lifetime = cert.not_valid_after_utc - cert.not_valid_before_utc
    assert lifetime == dt.timedelta(days=3650)
    assert _mode(key_path) == 0o600
    key = load_pem_private_key(key_path.read_bytes(), password=None)
    assert isinstance(key, ec.EllipticCurvePrivateKey) and key.curve.name == "secp256r1"


@pytest.mark.timeout(30)
def test_init_never_overwrites_an_existing_ca(tmp_path):
    pki.create_ca(tmp_path)
    before = (tmp_path / "ca.key").read_bytes()
    with pytest.raises(NetworkError, match="already holds a CA"):
        pki.create_ca(tmp_path)
    assert (tmp_path / "ca.key").read_bytes() == before


@pytest.mark.timeout(30)
def test_issue_names_the_site_in_cn_and_san_and_is_signed_by_the_ca(tmp_path):
    pki.create_ca(tmp_path)
    cert_path, key_path = pki.issue_site_certificate(
        "n3", tmp_path, tmp_path / "n3", hosts=["10.1.2.3", "n3.hospital.example"], days=30
    )
    cert, ca = _cert(cert_path), _cert(tmp_path / "ca.pem")
    cert.verify_directly_issued_by(ca)
    assert cert.subject.get_attributes_for_oid(NameOID.COMMON_NAME)[0].value == "n3"
    san = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    assert san.get_values_for_type(x509.UniformResourceIdentifier) == ["urn:hospitalnet:site:n3"]
    assert san.get_values_for_type(x509.DNSName) == ["n3", "n3.hospital.example"]
    assert san.get_values_for_type(x509.IPAddress) == [ipaddress.ip_address("10.1.2.3")]
    eku = cert.extensions.get_extension_for_class(x509.ExtendedKeyUsage).value
    assert set(eku) == {ExtendedKeyUsageOID.SERVER_AUTH, ExtendedKeyUsageOID.CLIENT_AUTH}
    assert not cert.extensions.get_extension_for_class(x509.BasicConstraints).value.ca
    assert cert.not_valid_after_utc - cert.not_valid_before_utc == dt.timedelta(days=30)
    assert _mode(key_path) == 0o600
    assert pki.site_id_of(cert) == "n3"


@pytest.mark.timeout(30)
def test_load_credentials_accepts_a_good_set_and_names_the_site(tmp_path):
    pki.create_ca(tmp_path)
    pki.issue_site_certificate("n1", tmp_path)
    creds = pki.site_credentials(tmp_path, "n1")
    assert creds.site == "n1"
    assert creds.ca_pem == (tmp_path / "ca.pem").read_bytes()
    assert b"PRIVATE KEY" in creds.key_pem and b"CERTIFICATE" in creds.cert_pem


@pytest.mark.timeout(30)
def test_load_credentials_refuses_wrong_ca_expired_foreign_key_and_wrong_site(tmp_path):
    main_ca, other_ca = tmp_path / "main", tmp_path / "other"
    pki.create_ca(main_ca)
    pki.create_ca(other_ca)
    pki.issue_site_certificate("n1", main_ca)
    pki.issue_site_certificate("n2", main_ca)
    pki.issue_site_certificate("n1", other_ca)
    past = dt.datetime.now(dt.timezone.utc) - dt.timedelta(days=10)
    pki.issue_site_certificate("n1", main_ca, tmp_path / "old", days=2, not_before=past)

    with pytest.raises(NetworkError, match="not issued by the CA"):
        pki.load_credentials(main_ca / "ca.pem", other_ca / "n1.pem", other_ca / "n1.key")
    with pytest.raises(NetworkError, match="not valid now"):
        pki.load_credentials(
            main_ca / "ca.pem", tmp_path / "old" / "n1.pem", tmp_path / "old" / "n1.key"
        )
    with pytest.raises(NetworkError, match="does not belong to"):
        pki.load_credentials(main_ca / "ca.pem", main_ca / "n1.pem", main_ca / "n2.key")
    with pytest.raises(NetworkError, match="issued for site 'n1', not 'n2'"):
        pki.load_credentials(main_ca / "ca.pem", main_ca / "n1.pem", main_ca / "n1.key", site="n2")
    with pytest.raises(NetworkError, match="certificate not found"):
        pki.site_credentials(main_ca, "n9")


@pytest.mark.timeout(30)
def test_credentials_from_a_manifest_resolve_relative_to_the_manifest(tmp_path):
    pki.create_ca(tmp_path / "pki")
    pki.issue_site_certificate("n4", tmp_path / "pki")
    identity = NetworkIdentity(ca="pki/ca.pem", certificate="pki/n4.pem", key="pki/n4.key")
    assert pki.credentials_from_identity(identity, "n4", tmp_path).site == "n4"
    with pytest.raises(NetworkError, match="network.ca"):
        pki.credentials_from_identity(NetworkIdentity(), "n4", tmp_path)


@pytest.mark.timeout(30)
def test_bad_site_ids_and_days_are_refused(tmp_path):
    pki.create_ca(tmp_path)
    with pytest.raises(NetworkError, match="site id"):
        pki.issue_site_certificate("../n1", tmp_path)
    with pytest.raises(NetworkError, match="--days"):
        pki.issue_site_certificate("n1", tmp_path, days=0)
    with pytest.raises(NetworkError, match="--host"):
        pki.issue_site_certificate("n1", tmp_path, hosts=["bad host!"])


@pytest.mark.timeout(30)
def test_cli_init_and_issue(tmp_path, capsys):
    ca = tmp_path / "ca"
    assert main(["pki", "init", "--out", str(ca)]) == 0
    assert main(["pki", "issue", "n2", "--ca", str(ca), "--host", "192.168.0.2"]) == 0
    out = capsys.readouterr().out
    assert "ca.pem" in out and "n2.pem" in out
    san = _cert(ca / "n2.pem").extensions.get_extension_for_class(x509.SubjectAlternativeName)
    assert san.value.get_values_for_type(x509.IPAddress) == [ipaddress.ip_address("192.168.0.2")]
    assert pki.site_credentials(ca, "n2").site == "n2"

    # User mistakes: one line, exit code 2, no traceback.
    assert main(["pki", "init", "--out", str(ca)]) == 2
    assert main(["pki", "issue", "n 2", "--ca", str(ca)]) == 2
    assert main(["pki", "issue", "n3", "--ca", str(tmp_path / "nowhere")]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 3 and all(line.startswith("hospitalnet: error: ") for line in err)
