"""Interoperability with a real client: skopeo pushes through our token server and reads our pushes."""

from __future__ import annotations

import json
import subprocess
from pathlib import Path

from lazypull.registry import DOCKER_MANIFEST, OCI_MANIFEST, RegistryClient, StaticAuth, parse_manifest
from tests.helpers.registry import AuthRegistry
from tests.registry.conftest import make_image, push_image, sha256

SKOPEO = "/usr/bin/skopeo"


def _skopeo(*args: str) -> str:
    proc = subprocess.run([SKOPEO, "--insecure-policy", *args], capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr
    return proc.stdout


def _write_layout(directory: Path, tag: str) -> list[bytes]:
    image = make_image((2000, 3000))
    blobs = directory / "blobs" / "sha256"
    blobs.mkdir(parents=True)
    for blob in [image.manifest, image.config, *image.layers]:
        (blobs / sha256(blob).split(":")[1]).write_bytes(blob)
    (directory / "oci-layout").write_text('{"imageLayoutVersion": "1.0.0"}')
    (directory / "index.json").write_text(json.dumps({"schemaVersion": 2, "manifests": [{
        "mediaType": OCI_MANIFEST, "digest": image.digest, "size": len(image.manifest),
        "annotations": {"org.opencontainers.image.ref.name": tag}}]}))
    return image.layers


def test_skopeo_push_with_token_then_our_pull(registry_token: AuthRegistry, unique_repo: str,
                                              tmp_path: Path) -> None:
    reg = registry_token
    layers = _write_layout(tmp_path / "layout", "v1")
    ref = f"{reg.host}/{unique_repo}:v2s2"
    _skopeo("copy", "--dest-tls-verify=false", f"--dest-creds={reg.username}:{reg.password}",
            "--format", "v2s2", f"oci:{tmp_path / 'layout'}:v1", f"docker://{ref}")
    assert any(r.username == reg.username for r in reg.token_server.requests)
    with RegistryClient(insecure=True) as client:
        raw, media_type, _ = client.resolve_image(ref)
        assert media_type == DOCKER_MANIFEST
        manifest = parse_manifest(raw, media_type)
        assert [d.digest for d in manifest.layers] == [sha256(b) for b in layers]
        assert client.fetch_blob(ref, manifest.layers[1].digest) == layers[1]


def test_our_push_read_by_skopeo(registry_tls_basic: AuthRegistry, unique_repo: str, tmp_path: Path) -> None:
    reg = registry_tls_basic
    image = make_image((1234,))
    ref = f"{reg.host}/{unique_repo}:ours"
    with RegistryClient(ca_files=[reg.ca_file], auth=StaticAuth(reg.username, reg.password)) as client:
        push_image(client, ref, image)
    certs = tmp_path / "certs"
    certs.mkdir()
    (certs / "ca.crt").write_bytes(Path(reg.ca_file).read_bytes())
    out = tmp_path / "copy"
    _skopeo("copy", f"--src-cert-dir={certs}", f"--src-creds={reg.username}:{reg.password}",
            f"docker://{ref}", f"oci:{out}:copied")
    index = json.loads((out / "index.json").read_text())
    assert index["manifests"][0]["digest"] == image.digest
    assert (out / "blobs" / "sha256" / sha256(image.layers[0]).split(":")[1]).read_bytes() == image.layers[0]
