"""The /etc/resolv.conf, /etc/hosts and /etc/hostname a container sees (generated, bind-mounted).

With ``--net=host`` the container shares the host's network, so it gets the host's resolvers and
hosts entries; with ``--net=none`` only loopback exists, so resolvers are left out.
"""

from __future__ import annotations

from pathlib import Path

HOST_RESOLV_CONF = Path("/etc/resolv.conf")
HOST_HOSTS = Path("/etc/hosts")
DEFAULT_HOSTS = (
    "127.0.0.1\tlocalhost\n"
    "::1\tlocalhost ip6-localhost ip6-loopback\n"
    "fe00::0\tip6-localnet\n"
    "ff00::0\tip6-mcastprefix\n"
    "ff02::1\tip6-allnodes\n"
    "ff02::2\tip6-allrouters\n"
)


def _read(path: Path) -> str:
    try:
        return path.read_text()
    except OSError:
        return ""


def write_host_files(directory: Path, *, hostname: str, network: str) -> dict[str, Path]:
    """Write the three files under ``directory``; returns container path -> host file."""
    directory.mkdir(parents=True, exist_ok=True)
    hosts = DEFAULT_HOSTS + f"127.0.1.1\t{hostname}\n"
    if network == "host":
        resolv = _read(HOST_RESOLV_CONF)
        extra = [line for line in _read(HOST_HOSTS).splitlines()
                 if line.strip() and not line.lstrip().startswith("#") and line not in hosts]
        if extra:
            hosts += "# from the host\n" + "\n".join(extra) + "\n"
    else:
        resolv = "# --net=none: no network, no resolvers\n"
    files = {"/etc/resolv.conf": resolv, "/etc/hosts": hosts, "/etc/hostname": hostname + "\n"}
    result: dict[str, Path] = {}
    for target, content in files.items():
        path = directory / Path(target).name
        path.write_text(content)
        path.chmod(0o644)
        result[target] = path
    return result
