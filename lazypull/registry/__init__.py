"""OCI distribution client: references, auth, manifests, blobs, byte ranges and pushes.

``RegistryClient`` is the entry point; see docs/architecture.md for the contract other packages
use. Errors are in :mod:`lazypull.registry.errors` (re-exported here).
"""

import typing

from lazypull._lazy import lazy_attributes as _lazy_attributes

if typing.TYPE_CHECKING:
    from lazypull.registry._auth import Anonymous as Anonymous
    from lazypull.registry._auth import Challenge as Challenge
    from lazypull.registry._auth import Credentials as Credentials
    from lazypull.registry._auth import CredentialSource as CredentialSource
    from lazypull.registry._auth import StaticAuth as StaticAuth
    from lazypull.registry._auth import parse_challenges as parse_challenges
    from lazypull.registry._budget import NetLimits as NetLimits
    from lazypull.registry._client import RegistryBlobSource as RegistryBlobSource
    from lazypull.registry._client import RegistryClient as RegistryClient
    from lazypull.registry._client import compute_digest as compute_digest
    from lazypull.registry._dockerconfig import DockerConfigAuth as DockerConfigAuth
    from lazypull.registry._dockerconfig import default_auth as default_auth
    from lazypull.registry._dockerconfig import default_config_path as default_config_path
    from lazypull.registry._dockerconfig import normalize_server as normalize_server
    from lazypull.registry._manifest import ACCEPT_MANIFESTS as ACCEPT_MANIFESTS
    from lazypull.registry._manifest import DOCKER_CONFIG as DOCKER_CONFIG
    from lazypull.registry._manifest import DOCKER_MANIFEST as DOCKER_MANIFEST
    from lazypull.registry._manifest import DOCKER_MANIFEST_LIST as DOCKER_MANIFEST_LIST
    from lazypull.registry._manifest import MAX_MANIFEST_SIZE as MAX_MANIFEST_SIZE
    from lazypull.registry._manifest import OCI_CONFIG as OCI_CONFIG
    from lazypull.registry._manifest import OCI_INDEX as OCI_INDEX
    from lazypull.registry._manifest import OCI_MANIFEST as OCI_MANIFEST
    from lazypull.registry._manifest import Descriptor as Descriptor
    from lazypull.registry._manifest import ImageIndex as ImageIndex
    from lazypull.registry._manifest import ImageManifest as ImageManifest
    from lazypull.registry._manifest import Platform as Platform
    from lazypull.registry._manifest import default_platform as default_platform
    from lazypull.registry._manifest import detect_media_type as detect_media_type
    from lazypull.registry._manifest import is_index as is_index
    from lazypull.registry._manifest import parse_index as parse_index
    from lazypull.registry._manifest import parse_manifest as parse_manifest
    from lazypull.registry._manifest import parse_manifest_document as parse_manifest_document
    from lazypull.registry._manifest import select_all as select_all
    from lazypull.registry._manifest import select_platform as select_platform
    from lazypull.registry._ranges import merge_spans as merge_spans
    from lazypull.registry._reference import Reference as Reference
    from lazypull.registry._reference import parse_reference as parse_reference
    from lazypull.registry._transport import RetryPolicy as RetryPolicy
    from lazypull.registry.errors import AuthError as AuthError
    from lazypull.registry.errors import CredentialsError as CredentialsError
    from lazypull.registry.errors import Diagnostic as Diagnostic
    from lazypull.registry.errors import DigestMismatchError as DigestMismatchError
    from lazypull.registry.errors import ManifestError as ManifestError
    from lazypull.registry.errors import NotFoundError as NotFoundError
    from lazypull.registry.errors import ReferenceError_ as ReferenceError_
    from lazypull.registry.errors import RegistryConnectionError as RegistryConnectionError
    from lazypull.registry.errors import RegistryError as RegistryError
    from lazypull.registry.errors import RegistryUnavailableError as RegistryUnavailableError
    from lazypull.registry.errors import TooLargeError as TooLargeError

__all__ = [
    "ACCEPT_MANIFESTS",
    "DOCKER_CONFIG",
    "DOCKER_MANIFEST",
    "DOCKER_MANIFEST_LIST",
    "MAX_MANIFEST_SIZE",
    "OCI_CONFIG",
    "OCI_INDEX",
    "OCI_MANIFEST",
    "Anonymous",
    "AuthError",
    "Challenge",
    "CredentialSource",
    "Credentials",
    "CredentialsError",
    "Descriptor",
    "Diagnostic",
    "DigestMismatchError",
    "DockerConfigAuth",
    "ImageIndex",
    "ImageManifest",
    "ManifestError",
    "NetLimits",
    "NotFoundError",
    "Platform",
    "Reference",
    "ReferenceError_",
    "RegistryBlobSource",
    "RegistryClient",
    "RegistryConnectionError",
    "RegistryError",
    "RegistryUnavailableError",
    "RetryPolicy",
    "StaticAuth",
    "TooLargeError",
    "compute_digest",
    "default_auth",
    "default_config_path",
    "default_platform",
    "detect_media_type",
    "is_index",
    "merge_spans",
    "normalize_server",
    "parse_challenges",
    "parse_index",
    "parse_manifest",
    "parse_manifest_document",
    "parse_reference",
    "select_all",
    "select_platform",
]

# Public name -> the submodule defining it, imported on first use: the manifest model and references
# are needed without httpx (store, runtime), which _client, _auth and _transport import.
_SOURCES: dict[str, str] = {
    "ACCEPT_MANIFESTS": "._manifest",
    "Anonymous": "._auth",
    "AuthError": ".errors",
    "Challenge": "._auth",
    "CredentialSource": "._auth",
    "Credentials": "._auth",
    "CredentialsError": ".errors",
    "DOCKER_CONFIG": "._manifest",
    "DOCKER_MANIFEST": "._manifest",
    "DOCKER_MANIFEST_LIST": "._manifest",
    "Descriptor": "._manifest",
    "Diagnostic": ".errors",
    "DigestMismatchError": ".errors",
    "DockerConfigAuth": "._dockerconfig",
    "ImageIndex": "._manifest",
    "ImageManifest": "._manifest",
    "MAX_MANIFEST_SIZE": "._manifest",
    "ManifestError": ".errors",
    "NotFoundError": ".errors",
    "OCI_CONFIG": "._manifest",
    "OCI_INDEX": "._manifest",
    "OCI_MANIFEST": "._manifest",
    "Platform": "._manifest",
    "Reference": "._reference",
    "ReferenceError_": ".errors",
    "RegistryBlobSource": "._client",
    "RegistryClient": "._client",
    "RegistryConnectionError": ".errors",
    "RegistryUnavailableError": ".errors",
    "RegistryError": ".errors",
    "RetryPolicy": "._transport",
    "NetLimits": "._budget",
    "StaticAuth": "._auth",
    "TooLargeError": ".errors",
    "compute_digest": "._client",
    "default_auth": "._dockerconfig",
    "default_config_path": "._dockerconfig",
    "default_platform": "._manifest",
    "detect_media_type": "._manifest",
    "is_index": "._manifest",
    "merge_spans": "._ranges",
    "normalize_server": "._dockerconfig",
    "parse_challenges": "._auth",
    "parse_index": "._manifest",
    "parse_manifest": "._manifest",
    "parse_manifest_document": "._manifest",
    "parse_reference": "._reference",
    "select_all": "._manifest",
    "select_platform": "._manifest",
}

if not typing.TYPE_CHECKING:     # mypy sees the imports above, so a misspelt name stays an error
    __getattr__, __dir__ = _lazy_attributes(__name__, globals(), _SOURCES, __all__)
