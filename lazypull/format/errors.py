"""Errors of the format library (its own root: the format library imports nothing from lazypull)."""


class FormatError(Exception):
    """A layer blob, footer or TOC is malformed, or does not match its digest."""
