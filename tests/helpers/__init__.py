"""Test helpers: real servers (docker-registry, token server) and small fault-injecting proxies."""
