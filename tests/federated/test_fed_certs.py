"""The test-certificate generator: server cert signed by the CA, right SANs, node key pairs."""

from __future__ import annotations

import ipaddress

import pytest


def test_certificates_chain_and_sans(tmp_path):
    pytest.importorskip("cryptography")
    from cryptography import x509
    from cryptography.hazmat.primitives import serialization
    from cryptography.hazmat.primitives.asymmetric import ec

    from facepriv.federated.deploy import make_test_certificates

    paths = make_test_certificates(tmp_path, nodes=2, hosts=["localhost", "127.0.0.1", "link.example.org"])
    ca = x509.load_pem_x509_certificate(paths["ca_cert"].read_bytes())
    srv = x509.load_pem_x509_certificate(paths["server_cert"].read_bytes())
    srv.verify_directly_issued_by(ca)  # raises if the signature does not check out
    san = srv.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    assert "link.example.org" in san.get_values_for_type(x509.DNSName)
    assert ipaddress.ip_address("127.0.0.1") in san.get_values_for_type(x509.IPAddress)
    for i in (1, 2):
        key = serialization.load_ssh_private_key(paths[f"node{i}_key"].read_bytes(), password=None)  # what flwr reads
        pub = serialization.load_ssh_public_key(paths[f"node{i}_pub"].read_bytes())
        assert isinstance(key, ec.EllipticCurvePrivateKey)
        assert key.public_key().public_numbers() == pub.public_numbers()
    assert (paths["server_key"].stat().st_mode & 0o077) == 0  # private keys not world-readable
