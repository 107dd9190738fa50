"""Realistic benchmark input: a Debian rootfs built with debootstrap, as a tar, cached by package list.

`build_rootfs(packages, cache_dir)` runs `debootstrap --variant=minbase` (bookworm by default) from the
Debian mirror configured for apt on this machine, plus the extra packages, and tars the result; the tar is
cached under `cache_dir`, keyed by suite and package list, so only the first call takes minutes.
`split_layers(tar, out_dir, groups)` cuts such a tar into several layer tars for multi-layer images.

    python bench/rootfs.py --cache-dir /var/tmp/lazypull-bench python3 gcc   # prints the tar path
"""

from __future__ import annotations

import argparse
import contextlib
import hashlib
import os
import re
import shutil
import subprocess
import tarfile
import tempfile
from collections.abc import Sequence
from pathlib import Path

SOURCES_DIR = Path("/etc/apt/sources.list.d")
DEFAULT_SUITE = "bookworm"


class RootfsError(Exception):
    """debootstrap, the mirror lookup or the tarring failed; the message says which."""


def apt_mirror(suite: str = DEFAULT_SUITE, sources_dir: Path = SOURCES_DIR) -> str:
    """The URI apt uses for `suite` (deb822 `.sources` or one-line `.list` files); the demo's lookup."""
    from devtools.demo import DemoError
    from devtools.demo import apt_mirror as demo_apt_mirror

    try:
        return demo_apt_mirror(suite, sources_dir)
    except DemoError as err:
        raise RootfsError(str(err)) from err


def cache_key(packages: Sequence[str], suite: str) -> str:
    """Stable name for one (suite, package list): the list's order does not matter."""
    pkgs = sorted(set(packages))
    for p in pkgs:
        if not re.fullmatch(r"[a-z0-9][a-z0-9+.-]*", p):
            raise RootfsError(f"not a Debian package name: {p!r}")
    h = hashlib.sha256(("\n".join([suite, "minbase", *pkgs])).encode()).hexdigest()[:12]
    return f"debian-{suite}-minbase-{h}"


def build_rootfs(
    packages: list[str],
    cache_dir: Path,
    *,
    suite: str = DEFAULT_SUITE,
    mirror: str | None = None,
) -> Path:
    """Returns the path of a tar of a Debian `suite` minbase rootfs plus `packages`, building it once.

    The tar (PAX, numeric owners, xattrs, sorted names) holds the rootfs at its top level (`./bin`, ...).
    Downloaded .debs are kept in `cache_dir/debs` for later builds. Needs root and debootstrap.
    """
    cache_dir = Path(cache_dir)
    cache_dir.mkdir(parents=True, exist_ok=True)
    key = cache_key(packages, suite)
    out = cache_dir / f"{key}.tar"
    if out.exists():
        return out
    if shutil.which("debootstrap") is None:
        raise RootfsError("debootstrap is not installed (scripts/install-deps.sh installs it)")
    mirror = mirror or apt_mirror(suite)
    debs = cache_dir / "debs"
    debs.mkdir(exist_ok=True)
    work = Path(tempfile.mkdtemp(prefix=f"{key}-", dir=cache_dir))
    target = work / "root"
    try:
        cmd = ["debootstrap", "--variant=minbase", f"--cache-dir={debs}"]
        if packages:
            cmd.append("--include=" + ",".join(sorted(set(packages))))
        cmd += [suite, str(target), mirror]
        proc = subprocess.run(cmd, capture_output=True, text=True)
        if proc.returncode != 0:
            log = target / "debootstrap" / "debootstrap.log"
            detail = log.read_text(errors="replace")[-3000:] if log.exists() else proc.stderr[-3000:]
            raise RootfsError(f"debootstrap {suite} ({', '.join(packages) or 'minbase'}) failed:\n{detail}")
        # Leftovers that make the tar depend on the build host and time, not on the packages.
        for rel in ("var/cache/apt/archives", "var/lib/apt/lists"):
            d = target / rel
            if d.is_dir():
                for child in d.iterdir():
                    if child.is_file() and child.name != "lock":
                        child.unlink()
        tmp_tar = work / "rootfs.tar"
        tar_cmd = [
            "tar", "--create", "--file", str(tmp_tar), "--directory", str(target),
            "--format=pax", "--numeric-owner", "--sort=name", "--xattrs", "--xattrs-include=*",
            "--pax-option=delete=atime,delete=ctime", ".",
        ]  # fmt: skip
        proc = subprocess.run(tar_cmd, capture_output=True, text=True)
        if proc.returncode != 0:
            raise RootfsError(f"tar of {target} failed: {proc.stderr[-2000:]}")
        os.replace(tmp_tar, out)
        return out
    finally:
        shutil.rmtree(work, ignore_errors=True)


def _clean(name: str) -> str:
    name = name.lstrip("/")
    while name.startswith("./"):
        name = name[2:]
    return name.rstrip("/")


def split_layers(tar_path: Path, out_dir: Path, groups: Sequence[Sequence[str]]) -> list[Path]:
    """Cuts a rootfs tar into `len(groups) + 1` layer tars, returned base first.

    Layer i+1 holds the entries under any path prefix of `groups[i]` (first matching group wins,
    e.g. `[["usr/lib/python3"], ["usr/lib/gcc", "usr/libexec/gcc"]]`); layer 0 holds everything else.
    A hardlink goes with its target so every layer extracts on its own. Cached by file name.
    """
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    sig = hashlib.sha256(repr([tar_path.name, [list(g) for g in groups]]).encode()).hexdigest()[:12]
    outs = [out_dir / f"{tar_path.stem}-{sig}-layer{i}.tar" for i in range(len(groups) + 1)]
    if all(p.exists() for p in outs):
        return outs
    prefixes = [[_clean(p) for p in g] for g in groups]

    def layer_of(name: str) -> int:
        n = _clean(name)
        for i, group in enumerate(prefixes):
            if any(n == p or n.startswith(p + "/") for p in group):
                return i + 1
        return 0

    with tarfile.open(tar_path) as src:
        members = src.getmembers()
        where = {_clean(m.name): layer_of(m.name) for m in members}
        tmp = [p.with_suffix(".tmp") for p in outs]
        with contextlib.ExitStack() as stack:
            sinks = [stack.enter_context(tarfile.open(p, "w", format=tarfile.PAX_FORMAT)) for p in tmp]
            for m in members:
                i = where[_clean(m.name)]
                if m.islnk():
                    i = where.get(_clean(m.linkname), i)
                sinks[i].addfile(m, src.extractfile(m) if m.isreg() else None)
    for t, p in zip(tmp, outs, strict=True):
        os.replace(t, p)
    return outs


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("packages", nargs="*", help="extra Debian packages")
    parser.add_argument("--cache-dir", type=Path, default=Path("/var/tmp/lazypull-bench"))
    parser.add_argument("--suite", default=DEFAULT_SUITE)
    args = parser.parse_args()
    print(build_rootfs(list(args.packages), args.cache_dir, suite=args.suite))


if __name__ == "__main__":
    main()
