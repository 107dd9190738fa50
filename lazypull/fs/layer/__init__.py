"""The lazy layer filesystem: a FUSE ``Tree`` for one eStargz / zstd:chunked layer (see ``tree``)."""

from lazypull.format.layerkind import is_lazy
from lazypull.fs.layer.open import open_layer_tree
from lazypull.fs.layer.tree import LayerTree

__all__ = ["LayerTree", "is_lazy", "open_layer_tree"]
