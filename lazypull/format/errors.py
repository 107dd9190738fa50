"""Errors of the format library (its own root: the format library imports nothing from lazypull).

Tree::

    FormatError                 malformed blob, footer, TOC or tar input; unsupported option combination
     +-- DigestMismatchError    content (TOC or chunk) does not hash to the digest it must have
"""


class FormatError(Exception):
    """A layer blob, footer or TOC is malformed, or does not match its digest."""


class DigestMismatchError(FormatError):
    """A TOC or chunk did not hash to the digest it is authenticated by."""
