"""Tests of lazypull.registry against the real docker-registry."""
