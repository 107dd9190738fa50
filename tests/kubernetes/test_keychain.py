"""The CRI credential path's parts without containerd: the PullImage codec (against the test client's
encoder), what counts as credentials, and the keychain's naming, scoping, forgetting and bounds."""

from __future__ import annotations

import base64
from typing import Any

import pytest

from lazypull.registry import Credentials, CredentialSource, StaticAuth
from lazypull.snapshot.cri import messages
from lazypull.snapshot.cri.keychain import Keychain, normalise
from lazypull.snapshot.protobuf import WireError, enc_msg, enc_str
from tests.helpers.cri import Auth


def _pull_request(image: str, auth: Auth | None) -> bytes:
    spec = enc_str(1, image) + enc_msg(2, enc_str(1, "k") + enc_str(2, "v"))    # with an annotation
    sandbox = enc_msg(3, enc_msg(1, enc_str(1, "pod")))
    return enc_msg(1, spec) + (enc_msg(2, auth.encode()) if auth else b"") + sandbox


def test_pull_request_codec_and_credentials() -> None:
    req = messages.decode_pull_request(_pull_request("reg.example/app:1", Auth("alice", "pw")))
    assert req.image == "reg.example/app:1"
    assert req.auth is not None and req.auth.credentials() == Credentials("alice", "pw")
    assert "pw" not in repr(req) and "alice" not in repr(req)
    encoded = base64.b64encode(b"bob:s3:cret").decode()
    auth = messages.decode_pull_request(_pull_request("x", Auth(auth=encoded))).auth
    assert auth is not None and auth.credentials() == Credentials("bob", "s3:cret")
    assert messages.decode_pull_request(_pull_request("x", None)).auth is None
    assert messages.AuthConfig(identity_token="tok").credentials() == Credentials("<token>", "tok")
    assert messages.AuthConfig(registry_token="bearer", server_address="h").credentials() is None
    for bad in ("not base64!", base64.b64encode(b"no-colon").decode(), base64.b64encode(b"\xff:x").decode()):
        with pytest.raises(WireError, match="not base64 of user:password") as err:
            messages.AuthConfig(auth=bad).credentials()
        assert bad not in str(err.value)
    with pytest.raises(WireError):
        messages.decode_pull_request(b"\x0a\xff")                    # truncated length-delimited field
    assert messages.spec_of(messages.enc_image_request("sha256:" + "a" * 64)) == "sha256:" + "a" * 64


def test_image_status_codec() -> None:
    image = (enc_str(1, "sha256:id") + enc_str(2, "reg/a:1") + enc_str(2, "reg/a:2")
             + enc_str(3, "reg/a@sha256:" + "b" * 64))
    names = messages.decode_image_status_response(enc_msg(1, image))
    assert names == messages.ImageNames("sha256:id", ["reg/a:1", "reg/a:2"], ["reg/a@sha256:" + "b" * 64])
    assert messages.decode_image_status_response(b"") is None


class _Clients:
    def __init__(self) -> None:
        self.made: list[tuple[bool, CredentialSource]] = []

    def __call__(self, insecure: bool, auth: CredentialSource) -> Any:
        self.made.append((insecure, auth))
        return ("client", len(self.made))


def test_keychain_names_scopes_and_forgets() -> None:
    clients = _Clients()
    chain = Keychain(clients, fallback=StaticAuth("node", "file", hosts=("other.example",)))
    assert normalise("busybox") == "docker.io/library/busybox:latest"
    assert normalise("sha256:" + "a" * 64) is None            # an image id is not a reference
    assert not chain.add("sha256:" + "a" * 64, Credentials("u", "p"))
    assert chain.add("busybox", Credentials("u", "p"))
    assert chain.get("docker.io/library/busybox:latest") == Credentials("u", "p")
    # CRI's label may name the image by digest where the kubelet pulled a tag: same repository
    assert chain.get("docker.io/library/busybox@sha256:" + "c" * 64) == Credentials("u", "p")
    assert chain.get("docker.io/library/busybox@sha256:" + "c" * 64, exact=True) is None
    assert chain.get("docker.io/library/alpine:latest") is None
    assert chain.client("reg.example/none:1", False) is None

    first = chain.client("busybox", False)
    assert chain.client("docker.io/library/busybox:latest", False) is first      # one client per image
    assert chain.client("busybox", True) is not first                           # and TLS mode
    auth = clients.made[0][1]
    assert auth.credentials("docker.io") == Credentials("u", "p")
    assert auth.credentials("other.example") == Credentials("node", "file")   # node files elsewhere
    assert auth.credentials("third.example") is None

    chain.add("busybox", Credentials("u", "p"))          # same credentials again: the client stays
    assert chain.client("busybox", False) is first
    chain.add("busybox", Credentials("u", "new"))        # new ones: a new client
    assert chain.client("busybox", False) is not first
    assert chain.forget("busybox:latest") and not chain.forget("busybox")
    assert chain.get("busybox") is None and chain.client("busybox", False) is None
    assert chain.refs() == []


def test_keychain_is_bounded() -> None:
    chain = Keychain(_Clients(), fallback=StaticAuth("x", "y", hosts=("none",)), max_images=3)
    for i in range(5):
        chain.add(f"reg.example/app{i}:1", Credentials("u", str(i)))
    assert chain.refs() == [f"reg.example/app{i}:1" for i in (2, 3, 4)]
    assert chain.get("reg.example/app0:1") is None
