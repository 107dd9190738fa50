"""Development tools shared by the tests, the benchmarks and the demo (not part of the lazypull wheel):
the local registry and containerd launchers, the CRI client, image and rootfs builders, the Go oracle's
wrapper, the small HTTP servers around a registry, and the demo itself."""
