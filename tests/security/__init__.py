"""Hostile inputs (images, registries, local users): each refused with a clear error, bounded."""
