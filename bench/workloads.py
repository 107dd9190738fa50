"""The benchmark's images and what runs in them (HelloBench's python, gcc and postgres, built from Debian).

Each image is a Debian minbase layer plus an application layer holding what the packages add; the
workload is either a command run to its exit (``ready`` None) or a server whose start is measured to
the first line containing ``ready``.
"""

from __future__ import annotations

from dataclasses import dataclass, field

HELLO_C = b'#include <stdio.h>\nint main(void) { printf("hello from gcc\\n"); return 0; }\n'

_PG = "/usr/lib/postgresql/15/bin/postgres"
_PG_ARGS = ("-D /var/lib/postgresql/15/main -c config_file=/etc/postgresql/15/main/postgresql.conf "
            "-c listen_addresses= -c unix_socket_directories=/tmp -c ssl=off")


@dataclass(frozen=True)
class Workload:
    """One image (by its Debian packages) and its start-up workload."""

    name: str
    packages: tuple[str, ...]
    command: tuple[str, ...]
    expect: str                      # output line that proves the workload ran
    ready: str | None = None         # for servers: stop timing at the first line containing this
    extra_files: dict[str, bytes] = field(default_factory=dict)   # added to the application layer
    prioritized_hint: tuple[str, ...] = ()   # hand list used when no access record exists


WORKLOADS: dict[str, Workload] = {
    "python": Workload(
        name="python",
        packages=("python3", "python3-pip", "gcc"),
        command=("python3", "-c", 'print("hi")'),
        expect="hi",
        prioritized_hint=("usr/bin/python3.11", "usr/lib/python3.11/encodings/__init__.py",
                          "usr/lib/python3.11/site.py", "usr/lib/python3.11/os.py"),
    ),
    "gcc": Workload(
        name="gcc",
        packages=("gcc", "libc6-dev"),
        command=("sh", "-c", "gcc -o /tmp/hello /hello.c && /tmp/hello"),
        expect="hello from gcc",
        extra_files={"hello.c": HELLO_C},
        prioritized_hint=("usr/bin/x86_64-linux-gnu-gcc-12", "usr/libexec/gcc/x86_64-linux-gnu/12/cc1",
                          "usr/bin/x86_64-linux-gnu-as", "usr/bin/x86_64-linux-gnu-ld.bfd"),
    ),
    "postgres": Workload(
        name="postgres",
        packages=("postgresql",),
        command=("su", "postgres", "-s", "/bin/sh", "-c", f"exec {_PG} {_PG_ARGS}"),
        expect="database system is ready to accept connections",
        ready="database system is ready to accept connections",
        prioritized_hint=(_PG.lstrip("/"),),
    ),
}


def parse_names(text: str) -> list[Workload]:
    """``python,gcc`` -> workloads; unknown names are an error naming the choices."""
    out = []
    for name in (n.strip() for n in text.split(",") if n.strip()):
        if name not in WORKLOADS:
            raise ValueError(f"unknown image {name!r}; choose from {', '.join(WORKLOADS)}")
        out.append(WORKLOADS[name])
    return out
