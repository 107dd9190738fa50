"""The FUSE request journal (``lazypull.fs.fuse.journal``): what a next server finds in a predecessor's
memfd, and the memfds it refuses to map. The restart itself: tests/reliability/test_restart.py."""

from __future__ import annotations

import fcntl
import os
import threading
import time
from pathlib import Path

import pytest

from lazypull.fs.fuse import protocol
from lazypull.fs.fuse.journal import HEADER_SIZE, MAX_REPLAYS, Journal, JournalError
from lazypull.fs.fuse.passthrough import kernel_version
from lazypull.fs.fuse.session import FuseMount
from tests.fs.memtree import MemTree


def _request(unique: int, body: bytes = b"name\0") -> bytes:
    return protocol.IN_HEADER.pack(protocol.IN_HEADER.size + len(body), protocol.Op.LOOKUP, unique, 1,
                                   0, 0, 0, 0, 0) + body


def test_a_next_server_finds_the_unanswered_requests() -> None:
    """Slots written and not cleared are held, with their bytes; cleared ones and replay counts reset."""
    journal = Journal.create(4)
    try:
        for unique in (11, 12, 13):
            slot = journal.acquire()
            assert slot is not None
            journal.buffer(slot)[:len(_request(unique))] = _request(unique)
        journal.clear(1)                                    # answered
        assert journal.count_replay(2) == 1
        successor = Journal.adopt(os.dup(journal.fd))
        try:
            assert successor.held() == [0, 2]
            assert successor.request(2) == _request(13)
            assert protocol.parse_request(successor.request(0)).unique == 11
            assert successor.count_replay(2) == 2         # counted across servers
            assert [successor.acquire(), successor.acquire(), successor.acquire()] == [1, 3, None]
            successor.clear(2)
            assert successor.count_replay(2) == 1
        finally:
            successor.close()
    finally:
        journal.close()
    assert MAX_REPLAYS >= 1


def _memfd(size: int, head: bytes, seal: bool = True) -> int:
    fd = os.memfd_create("test-journal", os.MFD_CLOEXEC | os.MFD_ALLOW_SEALING)
    os.ftruncate(fd, size)
    os.pwrite(fd, head, 0)
    if seal:
        fcntl.fcntl(fd, fcntl.F_ADD_SEALS, fcntl.F_SEAL_SHRINK | fcntl.F_SEAL_GROW)
    return fd


def _head(slots: int, slot_size: int, magic: bytes = b"LPFUSEJ\x01") -> bytes:
    return magic + (1).to_bytes(4, "little") + slots.to_bytes(4, "little") + slot_size.to_bytes(8, "little")


@pytest.mark.parametrize(("make", "message"), [
    (lambda: _memfd(HEADER_SIZE + protocol.READ_BUFFER, _head(1, protocol.READ_BUFFER, b"NOTAJRNL")),
     "unknown format"),
    (lambda: _memfd(HEADER_SIZE + protocol.READ_BUFFER, _head(1, protocol.READ_BUFFER), seal=False),
     "not a sealed journal memfd"),
    (lambda: _memfd(HEADER_SIZE + protocol.READ_BUFFER, _head(9, protocol.READ_BUFFER)), "do not fit"),
    (lambda: _memfd(HEADER_SIZE + 4096, _head(1, 4096)), "do not fit"),
    (lambda: os.open("/dev/null", os.O_RDONLY), "not a sealed journal memfd"),
])
def test_a_journal_it_cannot_use_is_refused_naming_why(make: object, message: str) -> None:
    """Wrong magic, unsealed, slots past the size, slots smaller than a read buffer, not a memfd:
    a JournalError naming it, the fd taken (closed)."""
    assert callable(make)
    fd = make()
    with pytest.raises(JournalError, match=message):
        Journal.adopt(fd)
    with pytest.raises(OSError):
        os.fstat(fd)


def test_a_mount_journals_requests_until_answered(tmp_path: Path) -> None:
    """A READ held in the tree is in the mount's journal (a copy of the memfd sees it) until its reply,
    then no slot holds anything."""
    tree = MemTree()
    tree.add_file("slow", b"s" * 10)
    gate = threading.Event()
    tree.read_gate = gate
    mnt = tmp_path / "m"
    mnt.mkdir()
    mount = FuseMount(tree, mnt).start()
    try:
        peer = Journal.adopt(os.dup(mount.journal_fd))
        try:
            got: list[bytes] = []
            reader = threading.Thread(target=lambda: got.append((mnt / "slow").read_bytes()))
            reader.start()
            for _ in range(1200):
                if tree.reads_waiting == 1:
                    break
                time.sleep(0.05)
            held = [protocol.parse_request(peer.request(slot)) for slot in range(peer.slots)
                    if peer.unique(slot)]
            assert [req.opcode for req in held] == [protocol.Op.READ]
            gate.set()
            reader.join(60)
            assert got == [b"s" * 10]
            for _ in range(1200):       # the close's RELEASE may still be in hand
                if not any(peer.unique(slot) for slot in range(peer.slots)):
                    break
                time.sleep(0.05)
            assert [slot for slot in range(peer.slots) if peer.unique(slot)] == []
        finally:
            peer.close()
    finally:
        gate.set()
        mount.stop()


def test_a_replayed_request_the_kernel_no_longer_waits_for_is_dropped(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """A reply written just before a kill leaves its request in the journal (the slot is cleared after
    the write): the next server answers it again, the kernel refuses the reply (ENOENT: no such request),
    and the file handle that OPEN gave out is released again (no file counted open for ever)."""
    monkeypatch.setenv("LAZYPULL_FUSE_RESEND", "0")
    tree = MemTree()
    tree.add_file("f", b"x")
    mnt = tmp_path / "m"
    mnt.mkdir()
    # readonly=False: the kernel asks OPEN of the server (a read-only mount opens files itself)
    first = FuseMount(tree, mnt, passthrough=False, readonly=False).start()
    second = FuseMount(tree, mnt, passthrough=False, readonly=False)
    left = Journal.create(2)        # what a killed server of the connection left
    try:
        attr = tree.lookup(1, b"f")
        assert attr is not None and first.negotiated is not None
        body = protocol.OPEN_IN.pack(os.O_RDONLY, 0)
        stale = protocol.IN_HEADER.pack(protocol.IN_HEADER.size + len(body), protocol.Op.OPEN, 1 << 40,
                                        attr.ino, 0, 0, 0, 0, 0) + body
        slot = left.acquire()
        assert slot is not None
        left.buffer(slot)[:len(stale)] = stale
        second.resume(os.dup(first.dev_fd), first.negotiated, {}, os.dup(left.fd))
        for _ in range(1200):
            if not left.unique(slot):
                break
            time.sleep(0.05)
        assert left.unique(slot) == 0, "the replayed OPEN was answered"
        assert (second.replayed, second.replay_failed, second.open_files) == (1, 0, 0)
        assert (mnt / "f").read_bytes() == b"x"       # the connection is unharmed
    finally:
        left.close()
        second.stop()
        first.stop()


@pytest.mark.skipif((kernel_version() or (0, 0)) < (6, 9),
                    reason="FUSE_NOTIFY_RESEND needs Linux 6.9+ (before it, the journal answers: "
                           "the tests above)")
def test_with_resend_the_journals_copies_are_dropped(tmp_path: Path) -> None:
    """Where the kernel takes FUSE_NOTIFY_RESEND (6.9+: this one), it queues the unanswered requests
    again itself: the journal's copies are dropped, not answered (that would answer them twice)."""
    tree = MemTree()
    tree.add_file("f", b"x")
    mnt = tmp_path / "m"
    mnt.mkdir()
    first = FuseMount(tree, mnt, passthrough=False).start()
    second = FuseMount(tree, mnt, passthrough=False, workers=(1, 2))
    left = Journal.create(2)
    try:
        assert first.negotiated is not None
        slots = [left.acquire(), left.acquire()]
        for slot, unique in zip(slots, (1 << 40, (1 << 40) + 2), strict=True):
            assert slot is not None
            left.buffer(slot)[:len(_request(unique))] = _request(unique)
        second.resume(os.dup(first.dev_fd), first.negotiated, {}, os.dup(left.fd))
        assert [left.unique(slot) for slot in range(2)] == [0, 0]
        assert (second.replayed, second.replay_failed) == (0, 0)
        peer = Journal.adopt(os.dup(left.fd))
        try:
            assert peer.held() == []
        finally:
            peer.close()
        assert (mnt / "f").read_bytes() == b"x"
    finally:
        left.close()
        second.stop()
        first.stop()
