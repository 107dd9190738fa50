"""``lazypull build``: Dockerfile builds whose base images are mounted lazily.

Modules, one concept each: :mod:`.dockerfile` (parsing), :mod:`.words` (Docker's variable expansion
and word splitting), :mod:`.dockerignore` (context patterns), :mod:`.context` (sources from the build
context, refused when they leave it), :mod:`.fsops` (file operations inside a root filesystem),
:mod:`.diff` (an overlay upper directory as an OCI layer), :mod:`.layer` (layers into the store),
:mod:`.cache` (step reuse), :mod:`.progress` (BuildKit's plain output), :mod:`.export` (OCI layout
output) and :mod:`.executor` (the instructions' semantics). Public names load their module on first
use, so importing the package costs nothing.
"""

import typing

from lazypull._lazy import lazy_attributes as _lazy_attributes

if typing.TYPE_CHECKING:
    from lazypull.build.dockerfile import Dockerfile as Dockerfile
    from lazypull.build.dockerfile import Instruction as Instruction
    from lazypull.build.dockerfile import parse_dockerfile as parse_dockerfile
    from lazypull.build.errors import BuildError as BuildError
    from lazypull.build.errors import DockerfileError as DockerfileError
    from lazypull.build.errors import RunError as RunError
    from lazypull.build.executor import BaseImage as BaseImage
    from lazypull.build.executor import Builder as Builder
    from lazypull.build.executor import BuildOptions as BuildOptions
    from lazypull.build.executor import BuildResult as BuildResult
    from lazypull.build.executor import build_image as build_image

__all__ = [
    "BaseImage",
    "BuildError",
    "BuildOptions",
    "BuildResult",
    "Builder",
    "Dockerfile",
    "DockerfileError",
    "Instruction",
    "RunError",
    "build_image",
    "parse_dockerfile",
]

_SOURCES: dict[str, str] = {
    "BaseImage": ".executor",
    "BuildError": ".errors",
    "BuildOptions": ".executor",
    "BuildResult": ".executor",
    "Builder": ".executor",
    "Dockerfile": ".dockerfile",
    "DockerfileError": ".errors",
    "Instruction": ".dockerfile",
    "RunError": ".errors",
    "build_image": ".executor",
    "parse_dockerfile": ".dockerfile",
}

if not typing.TYPE_CHECKING:     # mypy sees the imports above, so a misspelt name stays an error
    __getattr__, __dir__ = _lazy_attributes(__name__, globals(), _SOURCES, __all__)
