"""A container's confinement with the real runc: Docker's default seccomp profile, capabilities,
no_new_privs, masked paths, ``--privileged``, and the flags' errors."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import tempfile
from collections.abc import Iterable
from pathlib import Path

import pytest

from lazypull.errors import ContainerError
from lazypull.image.runconfig import run_config
from lazypull.runtime import ContainerOptions, Containers, Stdio, extract_layer
from lazypull.runtime.confinement import (
    CAPABILITIES,
    DEFAULT_CAPABILITIES,
    Confinement,
    host_devices,
    parse_confinement,
)
from lazypull.runtime.seccomp import default_profile, load_profile, resolve
from tests.helpers.registry import RegistryServer
from tests.helpers.rootfs import Entry, busybox_specs, busybox_tar, push_image_layers

REPO_ROOT = Path(__file__).resolve().parents[2]
APPLETS = ("unshare", "chown", "grep", "touch", "mkdir", "wc")


@pytest.fixture(scope="module")
def busybox_layer(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """busybox with the applets these tests call (unshare, chown, ...) as an extracted layer."""
    base = tmp_path_factory.mktemp("confinement-layer")
    links = [Entry(f"bin/{applet}", "symlink", linkname="busybox") for applet in APPLETS]
    (base / "blob.tar").write_bytes(busybox_tar(extra=links))
    extract_layer(base / "blob.tar", base / "fs")
    return base / "fs"


# A static probe of calls busybox has no applet for; each line: the call, its result or errno.
PROBE_C = r"""
#define _GNU_SOURCE
#include <errno.h>
#include <pthread.h>
#include <stdio.h>
#include <sys/personality.h>
#include <sys/socket.h>
#include <sys/syscall.h>
#include <unistd.h>
static void *nothing(void *arg) { return arg; }
static void show(const char *name, long result) { printf("%s=%ld\n", name, result < 0 ? -errno : 0L); }
int main(void) {
    pthread_t thread;
    int created = pthread_create(&thread, NULL, nothing, NULL);
    if (created == 0) pthread_join(thread, NULL);
    printf("pthread=%d\n", created);
    show("keyctl", syscall(SYS_keyctl, 0 /* KEYCTL_GET_KEYRING_ID */, -3 /* session */, 0));
    show("vsock", socket(40 /* AF_VSOCK */, SOCK_STREAM, 0));
    show("inet", socket(AF_INET, SOCK_STREAM, 0));
    show("noaslr", personality(ADDR_NO_RANDOMIZE));
    show("clone3", syscall(435 /* clone3 */, NULL, 0));
    return 0;
}
"""


# i386 calls from a 64-bit program (int $0x80; x86-64 runs i386 code): socketcall(SYS_SOCKET) with
# its arguments in memory, socketcall(SYS_SOCKETPAIR), and the direct i386 socket() call.
I386_PROBE_C = r"""
#define _GNU_SOURCE
#include <stdint.h>
#include <stdio.h>
#include <sys/mman.h>
#include <sys/socket.h>
static long i386(long nr, long a, long b, long c) {
    long ret;
    __asm__ volatile ("int $0x80" : "=a"(ret) : "a"(nr), "b"(a), "c"(b), "d"(c) : "memory");
    return ret;
}
static long fd(long ret) { return ret < 0 ? ret : 0; }
int main(void) {
    uint32_t *args = mmap(NULL, 4096, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS | MAP_32BIT, -1, 0);
    args[0] = 40 /* AF_VSOCK */; args[1] = SOCK_STREAM; args[2] = 0;
    printf("socketcall-vsock=%ld\n", fd(i386(102, 1 /* SYS_SOCKET */, (long)(uintptr_t)args, 0)));
    args[0] = 38 /* AF_ALG */; args[1] = SOCK_SEQPACKET;
    printf("socketcall-alg=%ld\n", fd(i386(102, 1, (long)(uintptr_t)args, 0)));
    args[0] = AF_UNIX; args[1] = SOCK_STREAM; args[3] = (uint32_t)(uintptr_t)(args + 8);
    printf("socketcall-pair=%ld\n", fd(i386(102, 8 /* SYS_SOCKETPAIR */, (long)(uintptr_t)args, 0)));
    printf("socket-vsock=%ld\n", fd(i386(359 /* socket */, 40, SOCK_STREAM, 0)));
    printf("socket-inet=%ld\n", fd(i386(359, AF_INET, SOCK_STREAM, 0)));
    return 0;
}
"""


def static_probe_layer(base: Path, source: str) -> Path:
    """busybox plus ``/bin/probe`` built from ``source`` (gcc -static, from scripts/install-deps.sh)."""
    (base / "probe.c").write_text(source)
    subprocess.run(["gcc", "-static", "-O2", "-o", str(base / "probe"), str(base / "probe.c"), "-lpthread"],
                   check=True, capture_output=True)
    probe = Entry("bin/probe", data=(base / "probe").read_bytes(), mode=0o755)
    (base / "blob.tar").write_bytes(busybox_tar(extra=[probe]))
    extract_layer(base / "blob.tar", base / "fs")
    return base / "fs"


@pytest.fixture(scope="module")
def probe_layer(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """busybox plus ``/bin/probe``, the static program PROBE_C."""
    return static_probe_layer(tmp_path_factory.mktemp("probe-layer"), PROBE_C)


def run(root: Path, layer: Path, script: str, confinement: Confinement | None = None) -> tuple[int, str, str]:
    """Run ``sh -c script`` in a container confined as asked; exit status, stdout, stderr."""
    containers = Containers(root)
    options = ContainerOptions(command=("sh", "-c", script), confinement=confinement or Confinement())
    record = containers.create(image="test/busybox:latest", lowers_top_first=[layer], options=options,
                               image_config=run_config({}, "test"))
    with tempfile.TemporaryFile() as out, tempfile.TemporaryFile() as err:
        try:
            code = containers.run(record, tty=False, stdio=Stdio(stdout=out, stderr=err))
        finally:
            containers.remove(record)
        out.seek(0)
        err.seek(0)
        return code, out.read().decode(), err.read().decode()


def status(text: str) -> dict[str, str]:
    """The ``Key: value`` lines of /proc/self/status as printed in ``text``."""
    return {k.strip(): v.strip() for k, _, v in (line.partition(":") for line in text.splitlines()) if v}


def mask(names: Iterable[str]) -> str:
    """A capability set as /proc/self/status prints it."""
    return f"{sum(1 << CAPABILITIES.index(n) for n in names):016x}"


def host_bounding() -> str:
    return status(Path("/proc/self/status").read_text())["CapBnd"]


SHOW = "grep -E '^(CapEff|NoNewPrivs|Seccomp):' /proc/self/status"


def test_default_is_dockers_confinement(tmp_path: Path, busybox_layer: Path) -> None:
    script = (f"{SHOW}; echo hi; unshare -U true; echo unshare=$?; wc -c < /proc/keys; "
              "wc -c < /proc/interrupts; echo x > /proc/sysrq-trigger; echo sysrq=$?")
    code, out, err = run(tmp_path, busybox_layer, script)
    assert code == 0, err
    lines = status(out)
    assert lines["Seccomp"] == "2"                       # a filter is installed
    assert lines["CapEff"] == mask(DEFAULT_CAPABILITIES)
    assert lines["NoNewPrivs"] == "0"
    rest = [line for line in out.splitlines() if ":" not in line]
    assert rest == ["hi", "unshare=1", "0", "0", "sysrq=1"]  # masked files read empty; read-only /proc
    assert "unshare(0x10000000): Operation not permitted" in err


def test_calls_docker_blocks_and_what_still_works(tmp_path: Path, probe_layer: Path) -> None:
    """keyctl (keyrings are not namespaced), AF_VSOCK, turning ASLR off: EPERM; clone3: ENOSYS, so
    the C library's threads fall back to clone and still work; unconfined, the same calls pass."""
    code, out, err = run(tmp_path, probe_layer, "/bin/probe")
    assert code == 0, err
    assert out.splitlines() == ["pthread=0", "keyctl=-1", "vsock=-1", "inet=0", "noaslr=-1", "clone3=-38"]
    code, out, err = run(tmp_path, probe_layer, "/bin/probe",
                         parse_confinement(security_opts=["seccomp=unconfined"]))
    assert code == 0, err
    lines = dict(line.split("=") for line in out.splitlines())
    assert lines["keyctl"] != "-1", "not EPERM (0 here; ENOSYS on a kernel without keyrings)"
    assert (lines["noaslr"], lines["clone3"]) == ("0", "-22")     # clone3: EINVAL, it had no arguments


@pytest.mark.skipif(os.uname().machine != "x86_64", reason="i386 calls from an x86-64 program")
def test_i386_socketcall_cannot_open_what_socket_refuses(tmp_path: Path,
                                                         tmp_path_factory: pytest.TempPathFactory) -> None:
    """libseccomp turns each socket() family rule into an allowed i386 socketcall(SYS_SOCKET), whose
    family it cannot read: the profile answers that call ENOSYS (the direct i386 socket() call is
    checked as the 64-bit one), while socketcall's other calls still work."""
    layer = static_probe_layer(tmp_path_factory.mktemp("i386-probe-layer"), I386_PROBE_C)
    code, out, err = run(tmp_path, layer, "/bin/probe")
    assert code == 0, err
    assert out.splitlines() == ["socketcall-vsock=-38", "socketcall-alg=-38", "socketcall-pair=0",
                                "socket-vsock=-1", "socket-inet=0"]


def test_unconfined_lets_the_blocked_call_through(tmp_path: Path, busybox_layer: Path) -> None:
    if subprocess.run(["unshare", "-U", "true"], capture_output=True).returncode != 0:
        pytest.skip("this host does not allow user namespaces at all")
    code, out, err = run(tmp_path, busybox_layer, f"{SHOW}; unshare -U true; echo unshare=$?",
                         parse_confinement(security_opts=["seccomp=unconfined"]))
    assert code == 0, err
    assert status(out)["Seccomp"] == "0"
    assert out.splitlines()[-1] == "unshare=0", err


def test_capability_gated_rules_follow_cap_add(tmp_path: Path, busybox_layer: Path) -> None:
    """mount(2) needs CAP_SYS_ADMIN and the profile's rule for it: both come with --cap-add."""
    script = "mkdir /m; mount -t tmpfs none /m; echo mount=$?"
    code, out, err = run(tmp_path, busybox_layer, script)
    assert (code, out) == (0, "mount=1\n"), err
    code, out, err = run(tmp_path, busybox_layer, f"{SHOW}; {script}",
                         parse_confinement(cap_add=["sys_admin"]))
    assert code == 0, err
    assert out.splitlines()[-1] == "mount=0", err
    assert status(out)["CapEff"] == mask([*DEFAULT_CAPABILITIES, "CAP_SYS_ADMIN"])
    assert status(out)["Seccomp"] == "2"


def test_cap_drop_and_no_new_privileges(tmp_path: Path, busybox_layer: Path) -> None:
    script = f"{SHOW}; touch /f; chown 5 /f; echo chown=$?"
    code, out, err = run(tmp_path, busybox_layer, script,
                         parse_confinement(cap_drop=["CHOWN"], security_opts=["no-new-privileges"]))
    assert code == 0, err
    assert status(out)["CapEff"] == mask([c for c in DEFAULT_CAPABILITIES if c != "CAP_CHOWN"])
    assert status(out)["NoNewPrivs"] == "1"
    assert out.splitlines()[-1] == "chown=1" and "Operation not permitted" in err
    code, out, err = run(tmp_path, busybox_layer, SHOW, parse_confinement(cap_drop=["ALL"]))
    assert (code, status(out)["CapEff"]) == (0, "0000000000000000"), err
    code, out, err = run(tmp_path, busybox_layer, SHOW, parse_confinement(cap_add=["ALL"], cap_drop=["KILL"]))
    assert code == 0, err
    expected = int(host_bounding(), 16) & ~(1 << CAPABILITIES.index("CAP_KILL"))
    assert int(status(out)["CapEff"], 16) == expected


def test_profile_from_a_file(tmp_path: Path, busybox_layer: Path) -> None:
    """A user's profile (Docker's format) replaces the default: here mkdir fails with EACCES."""
    profile = tmp_path / "profile.json"
    profile.write_text(json.dumps({
        "defaultAction": "SCMP_ACT_ALLOW",
        "archMap": [{"architecture": "SCMP_ARCH_X86_64", "subArchitectures": ["SCMP_ARCH_X86"]},
                    {"architecture": "SCMP_ARCH_AARCH64", "subArchitectures": ["SCMP_ARCH_ARM"]}],
        "syscalls": [{"names": ["mkdir", "mkdirat"], "action": "SCMP_ACT_ERRNO", "errnoRet": 13},
                     {"names": ["unshare"], "action": "SCMP_ACT_ERRNO", "includes": {"caps": ["CAP_BPF"]}}],
    }))
    code, out, err = run(tmp_path, busybox_layer, "mkdir /d; echo mkdir=$?; touch /f; echo touch=$?",
                         parse_confinement(security_opts=[f"seccomp={profile}"]))
    assert (code, out) == (0, "mkdir=1\ntouch=0\n"), err
    assert "Permission denied" in err


def test_privileged(tmp_path: Path, busybox_layer: Path) -> None:
    extra = next((d["path"] for d in host_devices()
                  if d["path"] not in ("/dev/null", "/dev/zero", "/dev/full", "/dev/random", "/dev/urandom",
                                       "/dev/tty", "/dev/ptmx")), None)
    if extra is None:
        pytest.skip("this host's /dev has only the devices every container gets")
    script = f"{SHOW}; mkdir /m; mount -t tmpfs none /m; echo mount=$?; test -e {extra}; echo dev=$?"
    code, out, err = run(tmp_path, busybox_layer, script, parse_confinement(privileged=True))
    assert code == 0, err
    assert status(out)["Seccomp"] == "0"
    assert status(out)["CapEff"] == host_bounding()
    assert out.splitlines()[-2:] == ["mount=0", "dev=0"], err


# --- flags and profiles refused (no container needed) ---

@pytest.mark.parametrize(("kwargs", "message"), [
    ({"security_opts": ["seccomp="]}, 'invalid security-opt "seccomp"'),
    ({"security_opts": ["no-new-privileges=maybe"]}, 'invalid "no-new-privileges" value: "maybe"'),
    ({"security_opts": ["systempaths=confined"]}, 'invalid security-opt "systempaths=unconfined"'),
    ({"security_opts": ["apparmor=docker-default"]}, 'unsupported security-opt: "apparmor=docker-default"'),
    ({"security_opts": ["label=type:container_t"]}, 'unsupported security-opt: "label=type:container_t"'),
    ({"security_opts": ["label:level:s0"]}, 'unsupported security-opt: "label:level:s0"'),
    ({"security_opts": ["apparmor"]}, 'unsupported security-opt: "apparmor"'),
    ({"security_opts": ["no-new-privileges="]}, 'invalid "no-new-privileges" value: ""'),
    ({"security_opts": ["no-new-privileges:yes"]}, 'invalid "no-new-privileges" value: "yes"'),
    ({"security_opts": ["seccomp"]}, 'invalid security-opt "seccomp"'),
    ({"security_opts": ["userns=host"]}, 'unknown security-opt: "userns"'),
    ({"cap_add": ["NET_FLY"]}, 'unknown capability: "CAP_NET_FLY"'),
    ({"cap_drop": ["chown,bogus"]}, 'unknown capability: "CAP_BOGUS"'),
    ({"security_opts": ["seccomp=/nonexistent/profile.json"]},
     'cannot load seccomp profile "/nonexistent/profile.json": No such file or directory'),
    ({"security_opts": ["seccomp=/dev/zero"]}, "seccomp profile /dev/zero is not a regular file"),
    ({"security_opts": ["seccomp=/"]}, "seccomp profile / is not a regular file"),
])
def test_bad_flags_are_one_line_errors(kwargs: dict[str, list[str]], message: str) -> None:
    with pytest.raises(ContainerError) as caught:
        parse_confinement(**kwargs)  # type: ignore[arg-type]
    assert str(caught.value).startswith(message)
    assert "\n" not in str(caught.value)


@pytest.mark.parametrize(("profile", "message"), [
    (b"{not json", "decoding seccomp profile failed"),
    (b'{"syscalls": []}', "Object missing required field `defaultAction`"),
    (b'{"defaultAction": "SCMP_ACT_NOTIFY"}', "`$.defaultAction`"),
    (b'{"defaultAction": "SCMP_ACT_ALLOW", "syscalls": [{"names": ["read"], "action": "SCMP_ACT_ERRNO",'
     b' "args": [{"index": 6, "value": 1, "op": "SCMP_CMP_EQ"}]}]}', "`$.syscalls[0].args[0].index`"),
    (b'{"defaultAction": "SCMP_ACT_ALLOW", "syscalls": [{"names": ["read"], "action": "SCMP_ACT_ERRNO",'
     b' "args": [{"index": 0, "value": 18446744073709551616, "op": "SCMP_CMP_EQ"}]}]}', "over 2^64-1"),
    (b'{"defaultAction": "SCMP_ACT_ALLOW",'
     b' "syscalls": [{"names": ["read\\nwrite"], "action": "SCMP_ACT_LOG"}]}',
     "`$.syscalls[0].names[0]`"),
    (b'{"defaultAction": "SCMP_ACT_ALLOW", "architectures": ["SCMP_ARCH_X86"],'
     b' "archMap": [{"architecture": "SCMP_ARCH_X86"}]}',
     "both 'architectures' and 'archMap'"),
    (b"[" * 100_000, "decoding seccomp profile failed"),
    (b" " * (1 << 20) + b"{}", "is larger than"),
])
def test_bad_profiles_are_refused(tmp_path: Path, profile: bytes, message: str) -> None:
    path = tmp_path / "p.json"
    path.write_bytes(profile)
    with pytest.raises(ContainerError) as caught:
        load_profile(path)
    assert message in str(caught.value)
    assert "\n" not in str(caught.value)


def test_default_profile_resolution() -> None:
    """Docker's rules: arches from archMap, capability-gated rules, minKernel, clone3 -> ENOSYS."""
    profile = default_profile()
    plain = resolve(profile, DEFAULT_CAPABILITIES, host_machine="x86_64", kernel=(6, 1), builtin=True)
    assert plain["defaultAction"] == "SCMP_ACT_ERRNO" and plain["defaultErrnoRet"] == 1
    assert plain["architectures"] == ["SCMP_ARCH_X86_64", "SCMP_ARCH_X86", "SCMP_ARCH_X32"]
    allowed = {n for s in plain["syscalls"] if s["action"] == "SCMP_ACT_ALLOW" and "args" not in s
               for n in s["names"]}
    assert {"read", "execve", "arch_prctl", "ptrace", "chroot"} <= allowed
    assert not {"mount", "unshare", "setns", "keyctl", "add_key", "bpf", "reboot", "kexec_load",
                "open_by_handle_at", "init_module", "clock_settime"} & allowed
    clone = [s for s in plain["syscalls"] if s["names"] == ["clone"]]
    assert clone == [{"names": ["clone"], "action": "SCMP_ACT_ALLOW",
                      "args": [{"index": 0, "value": 0x7E020000, "op": "SCMP_CMP_MASKED_EQ", "valueTwo": 0}]}]
    assert {"names": ["clone3"], "action": "SCMP_ACT_ERRNO", "errnoRet": 38} in plain["syscalls"]

    admin = resolve(profile, [*DEFAULT_CAPABILITIES, "CAP_SYS_ADMIN"], host_machine="x86_64", kernel=(6, 1))
    admin_allowed = {n for s in admin["syscalls"] if "args" not in s for n in s["names"]}
    assert {"mount", "unshare", "setns", "clone", "clone3"} <= admin_allowed
    assert [s["names"] for s in admin["syscalls"] if s["action"] != "SCMP_ACT_ALLOW"] == [["socketcall"]]

    arm = resolve(profile, (), host_machine="aarch64", kernel=(6, 1), builtin=True)
    arm_allowed = {n for s in arm["syscalls"] for n in s["names"]}
    assert arm["architectures"] == ["SCMP_ARCH_AARCH64", "SCMP_ARCH_ARM"]
    assert "set_tls" in arm_allowed and "arch_prctl" not in arm_allowed and "chroot" not in arm_allowed
    old = resolve(profile, (), host_machine="x86_64", kernel=(4, 4))
    assert "ptrace" not in {n for s in old["syscalls"] for n in s["names"]}
    with pytest.raises(ContainerError, match=r"does not cover this machine \(mips64\)"):
        resolve(profile, (), host_machine="mips64", builtin=True)


@pytest.mark.parametrize(("host", "architectures", "own_calls"), [
    ("x86_64", ["SCMP_ARCH_X86_64", "SCMP_ARCH_X86", "SCMP_ARCH_X32"], {"arch_prctl", "modify_ldt"}),
    ("aarch64", ["SCMP_ARCH_AARCH64", "SCMP_ARCH_ARM"], {"set_tls", "cacheflush"}),
    ("ppc64le", ["SCMP_ARCH_PPC64LE"], {"swapcontext"}),
    ("s390x", ["SCMP_ARCH_S390X", "SCMP_ARCH_S390"], {"s390_runtime_instr", "s390_pci_mmio_read"}),
    ("riscv64", ["SCMP_ARCH_RISCV64"], {"riscv_flush_icache"}),
])
def test_default_profile_covers_dockers_machines(host: str, architectures: list[str],
                                                own_calls: set[str]) -> None:
    """Each machine Docker's default profile covers resolves to its ABIs and its own calls, no one
    else's; clone's flags are its first argument everywhere but on s390 (the second)."""
    resolved = resolve(default_profile(), DEFAULT_CAPABILITIES, host_machine=host, kernel=(6, 1),
                       builtin=True)
    assert resolved["architectures"] == architectures
    names = {n for s in resolved["syscalls"] for n in s["names"]}
    every_own_call = {"arch_prctl", "modify_ldt", "set_tls", "cacheflush", "swapcontext",
                      "s390_runtime_instr", "s390_pci_mmio_read", "riscv_flush_icache"}
    assert names & every_own_call == own_calls
    clone = [s["args"] for s in resolved["syscalls"] if s["names"] == ["clone"]]
    assert clone == [[{"index": 1 if host == "s390x" else 0, "value": 0x7E020000, "op": "SCMP_CMP_MASKED_EQ",
                       "valueTwo": 0}]]


def test_cli_flags_reach_the_container(tmp_path: Path, registry: RegistryServer) -> None:
    name = push_image_layers(tmp_path / "image", f"{registry.host}/lazypull-confinement/busybox:1",
                             [busybox_specs(extra=[Entry("bin/grep", "symlink", linkname="busybox")])])
    env = dict(os.environ, LAZYPULL_ROOT=str(tmp_path / "root"))

    def lazypull(*args: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run([sys.executable, "-m", "lazypull", *args], capture_output=True, text=True,
                              env=env, cwd=REPO_ROOT, timeout=300)

    result = lazypull("run", "--rm", "--snapshotter=overlayfs", "--cap-drop=ALL", "--cap-add", "kill,chown",
                      "--security-opt", "no-new-privileges=true", name, "sh", "-c", SHOW)
    assert result.returncode == 0, result.stderr
    assert status(result.stdout) == {"CapEff": mask(["CAP_KILL", "CAP_CHOWN"]), "NoNewPrivs": "1",
                                     "Seccomp": "2"}
    started = lazypull("run", "-d", "--snapshotter=overlayfs", "--name", "c", "--cap-drop", "chown", name,
                       "sleep", "600")
    assert started.returncode == 0, started.stderr
    try:        # a process exec'd into the container is confined as its first one
        shown = lazypull("exec", "c", "sh", "-c", SHOW)
        assert status(shown.stdout) == {"CapEff": mask(c for c in DEFAULT_CAPABILITIES if c != "CAP_CHOWN"),
                                        "NoNewPrivs": "0", "Seccomp": "2"}, shown.stderr
    finally:
        lazypull("rm", "-f", "c")
    bad = lazypull("run", "--rm", "--security-opt", "seccomp=/nonexistent.json", name, "true")
    assert bad.returncode == 1
    assert bad.stderr == ('lazypull: error: cannot load seccomp profile "/nonexistent.json": '
                          "No such file or directory\n")


def test_dockers_colon_separator_and_the_no_lsm_options() -> None:
    """``KEY:VALUE`` (compose writes it) reads as ``KEY=VALUE``; asking for no AppArmor profile or
    SELinux label is what every container gets, so it changes nothing."""
    colon = parse_confinement(security_opts=["no-new-privileges:true", "seccomp:unconfined",
                                             "systempaths:unconfined"])
    assert (colon.no_new_privileges, colon.seccomp, colon.system_paths) == (True, "unconfined", False)
    assert parse_confinement(security_opts=["no-new-privileges:false"]).no_new_privileges is False
    assert parse_confinement(security_opts=["no-new-privileges"]).no_new_privileges is True
    no_lsm = parse_confinement(security_opts=["apparmor=unconfined", "label=disable", "apparmor:unconfined",
                                              "label:disable"])
    assert no_lsm == Confinement()


def test_last_security_opt_wins_and_builtin_names_the_default() -> None:
    assert parse_confinement(security_opts=["seccomp=unconfined", "seccomp=builtin"]).seccomp == "builtin"
    assert parse_confinement(security_opts=["seccomp=builtin", "seccomp=unconfined"]).seccomp == "unconfined"
    nnp = parse_confinement(security_opts=["no-new-privileges", "no-new-privileges=0"])
    assert nnp.no_new_privileges is False
    default = resolve(default_profile(), DEFAULT_CAPABILITIES, builtin=True)
    assert Confinement().seccomp_spec(DEFAULT_CAPABILITIES) == default
    assert Confinement(privileged=True).seccomp_spec(DEFAULT_CAPABILITIES) is None
