"""The run report reads the engines' jobs with the TLS trust the backend's ``Access`` carries:
through a Kubernetes API server's proxy with a private CA, the parts run-end and the reaper
write list the cluster's jobs. Against a real local HTTPS server whose certificate a CA made
here signed (not in any trust store)."""

from __future__ import annotations

import datetime
import ipaddress
import json
import ssl
import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest

from ephemeral.backends.base import Access, ClusterHandle
from ephemeral.backends.fake import InMemoryBackend
from ephemeral.backends.http import get_json
from ephemeral.report.engines import engine_jobs
from ephemeral.specs import ClusterIdentity, resolve

T0 = 1_800_000_000


def _pki(folder: Path) -> tuple[Path, Path, Path]:
    """A CA (its certificate file) and a server certificate and key for 127.0.0.1 it signed."""
    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import NameOID

    now = datetime.datetime.now(datetime.UTC)

    def cert(subject: str, key: ec.EllipticCurvePrivateKey, issuer: str,
             signer: ec.EllipticCurvePrivateKey, *, ca: bool) -> x509.Certificate:
        builder = (x509.CertificateBuilder()
                   .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, subject)]))
                   .issuer_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, issuer)]))
                   .public_key(key.public_key()).serial_number(x509.random_serial_number())
                   .not_valid_before(now - datetime.timedelta(minutes=5))
                   .not_valid_after(now + datetime.timedelta(hours=1))
                   .add_extension(x509.BasicConstraints(ca=ca, path_length=None), critical=True))
        if ca:
            builder = builder.add_extension(x509.KeyUsage(
                digital_signature=True, key_cert_sign=True, crl_sign=True,
                content_commitment=False, key_encipherment=False, data_encipherment=False,
                key_agreement=False, encipher_only=False, decipher_only=False), critical=True)
        else:
            builder = builder.add_extension(x509.SubjectAlternativeName(
                [x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]), critical=False)
        return builder.sign(signer, hashes.SHA256())

    ca_key, server_key = ec.generate_private_key(ec.SECP256R1()), ec.generate_private_key(
        ec.SECP256R1())
    ca = cert("test private CA", ca_key, "test private CA", ca_key, ca=True)
    server = cert("127.0.0.1", server_key, "test private CA", ca_key, ca=False)
    pem = serialization.Encoding.PEM
    paths = folder / "ca.pem", folder / "server.pem", folder / "server.key"
    paths[0].write_bytes(ca.public_bytes(pem))
    paths[1].write_bytes(server.public_bytes(pem))
    paths[2].write_bytes(server_key.private_bytes(
        pem, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()))
    return paths


class _Dashboard(BaseHTTPRequestHandler):
    """The Ray Jobs API's list, one finished job of ours."""

    def do_GET(self) -> None:
        body = json.dumps([{"submission_id": "train-a1", "status": "SUCCEEDED",
                            "start_time": (T0 + 20) * 1000, "end_time": (T0 + 50) * 1000}])
        data = body.encode() if self.path == "/api/jobs/" else b"{}"
        self.send_response(200 if self.path == "/api/jobs/" else 404)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    def log_message(self, *args: object) -> None:
        pass


@pytest.fixture
def https(tmp_path: Path) -> Iterator[tuple[str, str]]:
    """(base URL, CA file) of an HTTPS dashboard on 127.0.0.1."""
    ca, server_cert, server_key = _pki(tmp_path)
    server = ThreadingHTTPServer(("127.0.0.1", 0), _Dashboard)
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    context.load_cert_chain(server_cert, server_key)
    server.socket = context.wrap_socket(server.socket, server_side=True)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"https://127.0.0.1:{server.server_address[1]}", str(ca)
    finally:
        server.shutdown()
        server.server_close()


class ProxiedBackend(InMemoryBackend):
    """Clusters reached as through an API server's proxy: an https URL and a private CA."""

    def __init__(self, url: str, verify: bool | str) -> None:
        super().__init__()
        self.url, self.verify = url, verify

    def access(self, handle: ClusterHandle) -> Access:
        return Access(dashboard=self.url, headers={"Authorization": "Bearer t"},
                      verify=self.verify)


def _cluster(backend: InMemoryBackend, run_id: str = "r1") -> ClusterHandle:
    return backend.create(resolve("ray/adhoc-cpu", "ci-cpu"), identity=ClusterIdentity(
        spec_name="adhoc-cpu", dag_id="d", run_id=run_id, task_id="create"))


def test_get_json_trusts_the_ca_it_is_given_and_only_that(https: tuple[str, str]) -> None:
    url, ca = https
    assert get_json(f"{url}/api/jobs/", verify=ca) is not None
    assert get_json(f"{url}/api/jobs/", verify=str(Path(ca).parent / "missing.pem")) is None
    assert get_json(f"{url}/api/jobs/") is None  # the default trust store knows no such CA
    assert get_json(f"{url}/api/jobs/", verify=False) is not None  # k8s_verify_ssl off


def test_the_engines_jobs_are_read_with_the_backends_tls_trust(https: tuple[str, str]) -> None:
    url, ca = https
    backend = ProxiedBackend(url, ca)
    jobs = engine_jobs(backend, _cluster(backend))
    assert jobs is not None
    assert [(j.job_id, j.start, j.end) for j in jobs] == [("train-a1", T0 + 20.0, T0 + 50.0)]
    # Without the CA the engine cannot be asked: unknown (None), not "no jobs".
    assert engine_jobs(ProxiedBackend(url, True), _cluster(InMemoryBackend())) is None


def test_a_run_end_part_through_a_private_ca_lists_the_clusters_jobs(
        https: tuple[str, str]) -> None:
    from ephemeral.airflow.run_end import delete_run_clusters
    from ephemeral.report import load_report

    url, ca = https
    backend = ProxiedBackend(url, ca)
    name = _cluster(backend).name
    assert delete_run_clusters("d", "r1", backend=backend) == [name]
    report = load_report("d", "r1")
    assert report is not None
    [cluster] = report["clusters"]
    assert cluster["released_by"] == "run-end"
    assert [j["job_id"] for j in report["jobs"]] == ["train-a1"]
