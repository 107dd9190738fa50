"""The public API of lazypull.registry: sorted __all__, matching what is exported; error basics."""

from __future__ import annotations

import lazypull.registry as registry
from lazypull.errors import ImageError, LazypullError
from lazypull.registry import Diagnostic, ManifestError, NotFoundError, RegistryError
from lazypull.registry.errors import parse_diagnostics, redact_url


def test_all_is_sorted_and_complete() -> None:
    assert registry.__all__ == sorted(registry.__all__, key=lambda n: (not n.isupper(), n))
    public = {n for n in dir(registry) if not n.startswith("_")} - {"errors"}
    assert set(registry.__all__) == public


def test_error_tree() -> None:
    assert issubclass(RegistryError, LazypullError)
    assert issubclass(NotFoundError, RegistryError)
    assert issubclass(ManifestError, ImageError)


def test_redaction_hides_secrets() -> None:
    url = "https://user:pw@blobs.example:8443/path/data?X-Amz-Signature=abc&digest=sha256:1&token=t"
    text = redact_url(url)
    assert "pw" not in text and "abc" not in text and "=t" not in text
    assert "digest=sha256%3A1" in text and "blobs.example:8443/path/data" in text
    err = RegistryError("fetching", status=503, method="GET", url=url)
    assert "abc" not in str(err) and err.temporary


def test_diagnostics_parsing() -> None:
    body = b'{"errors":[{"code":"DENIED","message":"no","detail":{"x":1}},{"bad":1}]}'
    assert parse_diagnostics(body) == (Diagnostic("DENIED", "no", {"x": 1}),)
    assert parse_diagnostics(b"<html>") == ()
    oauth = parse_diagnostics(b'{"error":"invalid_grant","error_description":"bad"}')
    assert oauth[0].code == "INVALID_GRANT"
    assert RegistryError("x", diagnostics=(Diagnostic("TOOMANYREQUESTS"),)).temporary
    assert not RegistryError("x", status=400).temporary
