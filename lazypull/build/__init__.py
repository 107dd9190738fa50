"""``lazypull build``: Dockerfile builds whose base images are mounted lazily.

Modules, one concept each: :mod:`.dockerfile` (parsing), :mod:`.words` (Docker's variable expansion
and word splitting), :mod:`.dockerignore` (context patterns), :mod:`.context` (sources from the build
context, refused when they leave it), :mod:`.fsops` (file operations inside a root filesystem),
:mod:`.diff` (an overlay upper directory as an OCI layer), :mod:`.cache` (step reuse),
:mod:`.progress` (BuildKit's plain output) and :mod:`.executor` (the instructions' semantics).
Nothing is imported here: the CLI loads the modules a build needs.
"""
