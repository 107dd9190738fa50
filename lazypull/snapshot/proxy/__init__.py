"""containerd proxy-plugin snapshotter (gRPC) backed by the mount server's lazy layers."""

__all__: list[str] = []  # the mount server starts proxy.service.SnapshotService itself
