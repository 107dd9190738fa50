"""The CRI credential path (``lazypull daemon --cri-image-service``): an image service in front of
containerd's that keeps each pulled image's registry credentials for the proxy snapshotter's lazy reads."""

__all__: list[str] = []  # the mount server starts cri.service.ImageServiceProxy itself
