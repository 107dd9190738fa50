"""``--hostname``: what runc and the kernel take (underscores too) reaches the container; what would add
names or lines to its /etc/hosts, or is no host name, is refused before anything is made."""

from __future__ import annotations

from pathlib import Path

import pytest

from lazypull.errors import ContainerError
from lazypull.runtime import ContainerOptions
from lazypull.runtime.options import MAX_HOSTNAME, check_hostname
from tests.runtime.test_container import assert_clean, busybox_layer, run  # noqa: F401  (fixture)


def test_an_underscore_hostname_is_the_containers(tmp_path: Path, busybox_layer: Path) -> None:  # noqa: F811
    name = "my_app.svc_1"
    script = "hostname; cat /etc/hostname; grep -c '\tmy_app.svc_1$' /etc/hosts; echo $HOSTNAME"
    code, out, err = run(tmp_path, [busybox_layer], ContainerOptions(network="none", hostname=name,
                                                                     command=("sh", "-c", script)))
    assert (code, out.splitlines()) == (0, [name, name, "1", name]), err
    assert_clean(tmp_path)


@pytest.mark.parametrize("name", ["_", "a_b", "A-1_b.c", "x" * 63, "a." * 31 + "bb"])
def test_accepted(name: str) -> None:
    assert check_hostname(name) == name


@pytest.mark.parametrize("name", ["", "a b", "a\nb", "a\tb", "a#b", "a/b", "-a", "a-", "a..b", ".a", "a.",
                                  "é", "x" * 64, "x" * 64 + ".", "a" * (MAX_HOSTNAME + 1)])
def test_refused(name: str) -> None:
    with pytest.raises(ContainerError, match="^invalid hostname .*: use letters, digits, '_', '-' and '.', "
                                             f"at most {MAX_HOSTNAME} characters$"):
        check_hostname(name)
