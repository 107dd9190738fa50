"""Entry names as Go's ``path`` package and the estargz reader normalise them.

``clean_entry_name`` is ``strings.TrimPrefix(path.Clean("/"+name), "/")``: ``./a/``, ``/a``, ``a/`` and
``../a`` all become ``a``; the root is ``""``. A cleaned name never contains ``..`` or a leading ``/``,
which is what keeps hostile names inside the layer.
"""

from __future__ import annotations

import posixpath


def go_clean(path: str) -> str:
    """Go's ``path.Clean``: lexical cleanup, ``""`` -> ``"."``, one leading slash at most."""
    if path == "":
        return "."
    rooted = path.startswith("/")
    out: list[str] = []
    for part in path.split("/"):
        if part in ("", "."):
            continue
        if part == "..":
            if out and out[-1] != "..":
                out.pop()
            elif not rooted:
                out.append("..")
            continue
        out.append(part)
    joined = "/".join(out)
    if rooted:
        return "/" + joined
    return joined or "."


def clean_entry_name(name: str) -> str:
    """The normalised name of a TOC/tar entry (root is ``""``)."""
    if name[:2] == "./":
        name = name[2:]     # "/./x" cleans as "/x" (tar files made with `tar -C dir .` spell names so)
    if (name and name[0] not in "./" and "//" not in name and "/." not in name) or name == "":
        return name.rstrip("/")  # fast path: nothing to clean but a trailing slash
    return go_clean("/" + name)[1:]


def parent_dir(name: str) -> str:
    """Parent of a cleaned name (``"a/b"`` -> ``"a"``, ``"a"`` -> ``""``)."""
    return posixpath.dirname(name)


def base_name(name: str) -> str:
    """Last component of a cleaned name."""
    return name.rsplit("/", 1)[-1]


def go_join(*parts: str) -> str:
    """Go's ``path.Join``: join non-empty parts with ``/`` and clean."""
    kept = [p for p in parts if p]
    if not kept:
        return ""
    return go_clean("/".join(kept))


def go_split(path: str) -> tuple[str, str]:
    """Go's ``path.Split``: split after the last slash."""
    i = path.rfind("/")
    return path[: i + 1], path[i + 1 :]
