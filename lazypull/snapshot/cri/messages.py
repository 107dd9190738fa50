"""The few CRI ``runtime.v1`` (and identical ``v1alpha2``) ImageService messages the credential path reads,
on the protobuf wire codec of :mod:`lazypull.snapshot.protobuf` (no generated code). Everything else
passes through as bytes. Field numbers are those of the public ``api.proto``, written beside each codec.
"""

from __future__ import annotations

import base64
import binascii
from dataclasses import dataclass, field

from lazypull.registry import Credentials
from lazypull.snapshot.protobuf import WireError, enc_msg, enc_str, fields, text

SERVICES = ("runtime.v1.ImageService", "runtime.v1alpha2.ImageService")
METHODS = ("ListImages", "ImageStatus", "PullImage", "RemoveImage", "ImageFsInfo")


@dataclass(frozen=True)
class AuthConfig:
    """AuthConfig: username=1, password=2, auth=3 (base64 ``user:password``), server_address=4,
    identity_token=5, registry_token=6. Its repr shows no secret."""

    username: str = field(default="", repr=False)
    password: str = field(default="", repr=False)
    auth: str = field(default="", repr=False)
    server_address: str = ""
    identity_token: str = field(default="", repr=False)
    registry_token: str = field(default="", repr=False)

    def credentials(self) -> Credentials | None:
        """What the registry client can use: username/password (or ``auth``), else an identity token;
        None for none (a bare ``registry_token`` is not usable here: the node's files serve instead).
        A malformed ``auth`` raises WireError (naming no part of it)."""
        if self.username or self.password:
            return Credentials(self.username, self.password)
        if self.auth:
            try:
                user, sep, password = base64.b64decode(self.auth, validate=True).decode().partition(":")
            except (binascii.Error, UnicodeDecodeError) as err:
                raise WireError("PullImage auth.auth is not base64 of user:password") from err
            if not sep:
                raise WireError("PullImage auth.auth is not base64 of user:password")
            return Credentials(user, password)
        if self.identity_token:
            return Credentials("<token>", self.identity_token)
        return None


@dataclass(frozen=True)
class PullImageRequest:
    """PullImageRequest: image=1 (ImageSpec), auth=2 (AuthConfig), sandbox_config=3 (not read)."""

    image: str
    auth: AuthConfig | None


def _strings(raw: bytes, numbers: dict[int, str]) -> dict[str, str]:
    out: dict[str, str] = {}
    for number, _, value in fields(raw):
        if number in numbers and isinstance(value, bytes):
            out[numbers[number]] = text(value)
    return out


def image_spec(raw: bytes) -> str:
    """ImageSpec: image=1 (annotations=2, user_specified_image=18, runtime_handler=19 not read)."""
    return _strings(raw, {1: "image"}).get("image", "")


def spec_of(raw: bytes) -> str:
    """The image named by a request whose field 1 is an ImageSpec: PullImageRequest, RemoveImageRequest,
    ImageStatusRequest."""
    spec = b""
    for number, _, value in fields(raw):
        if number == 1 and isinstance(value, bytes):
            spec = value
    return image_spec(spec)


def decode_pull_request(raw: bytes) -> PullImageRequest:
    spec: bytes | None = None
    auth: bytes | None = None
    for number, _, value in fields(raw):
        if not isinstance(value, bytes):
            continue
        if number == 1:
            spec = value
        elif number == 2:
            auth = value
    image = image_spec(spec) if spec is not None else ""
    if auth is None:
        return PullImageRequest(image, None)
    names = {1: "username", 2: "password", 3: "auth", 4: "server_address", 5: "identity_token",
             6: "registry_token"}
    return PullImageRequest(image, AuthConfig(**_strings(auth, names)))


def decode_pull_response(raw: bytes) -> str:
    """PullImageResponse: image_ref=1."""
    return _strings(raw, {1: "image_ref"}).get("image_ref", "")


def enc_image_request(image: str) -> bytes:
    """RemoveImageRequest / ImageStatusRequest with ImageSpec{image}: image=1."""
    return enc_msg(1, enc_str(1, image))


@dataclass(frozen=True)
class ImageNames:
    """Image (in ImageStatusResponse.image=1): id=1, repo_tags=2 (repeated), repo_digests=3 (repeated)."""

    id: str
    repo_tags: list[str]
    repo_digests: list[str]


def decode_image_status_response(raw: bytes) -> ImageNames | None:
    """ImageStatusResponse: image=1 (absent: no such image), info=2 (not read)."""
    image: bytes | None = None
    for number, _, value in fields(raw):
        if number == 1 and isinstance(value, bytes):
            image = value
    if image is None:
        return None
    ident, tags, digests = "", [], []
    for number, _, value in fields(image):
        if not isinstance(value, bytes):
            continue
        if number == 1:
            ident = text(value)
        elif number == 2:
            tags.append(text(value))
        elif number == 3:
            digests.append(text(value))
    return ImageNames(ident, tags, digests)
