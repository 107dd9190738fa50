"""containerd proxy-plugin snapshotter (gRPC) backed by the mount server's lazy layers."""
