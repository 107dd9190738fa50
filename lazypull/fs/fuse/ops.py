"""The adapter from FUSE requests to :class:`~lazypull.fs.fuse.tree.Tree` calls.

One method per opcode turns a decoded request into a reply payload or a ``FuseError``. This is the only
module that picks errno values (besides a Tree raising ``FuseError``): writes are EROFS, unknown
requests ENOSYS, and any other exception from the tree is logged with the op and inode and becomes EIO.
"""

from __future__ import annotations

import collections
import errno
import itertools
import logging
import os
import stat
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass

from lazypull.fs.fuse import protocol
from lazypull.fs.fuse.passthrough import BackingFiles
from lazypull.fs.fuse.protocol import Op, Request
from lazypull.fs.fuse.tree import (
    Attr,
    BackingAware,
    ExecAware,
    FuseError,
    MetadataInMemory,
    Tree,
    WriteObserver,
    XattrAware,
)

log = logging.getLogger(__name__)

#: The flags we ask for in INIT (those the kernel offers are kept). READDIRPLUS always, not
#: READDIRPLUS_AUTO: "auto" sends attributes with a directory's first page of entries only, and each
#: entry past it costs a LOOKUP when stat'ed (a tree's attributes are in memory: plus is cheap).
WANTED_FLAGS = (
    protocol.ASYNC_READ
    | protocol.PARALLEL_DIROPS
    | protocol.DO_READDIRPLUS
    | protocol.MAX_PAGES
    | protocol.CACHE_SYMLINKS
    | protocol.INIT_EXT
)
#: Directories whose listing is kept between READDIRs when the kernel opens directories itself.
LISTINGS_KEPT = 64
#: Stack depth announced with passthrough: backing files on a plain fs, and room for one overlayfs above.
MAX_STACK_DEPTH = 1

Reply = tuple[int, bytes]  # (errno or 0, payload)
#: Write requests naming an entry of the directory ``nodeid``: opcode -> bytes before the name.
_NAMED_WRITES: dict[int, int] = {Op.CREATE: 16, Op.MKNOD: 16, Op.MKDIR: 8, Op.RMDIR: 0, Op.UNLINK: 0}
#: OPEN reply flags of a passthrough open (nothing is ever written: no FLUSH at close).
_PASSTHROUGH_OPEN = protocol.FOPEN_PASSTHROUGH | protocol.FOPEN_NOFLUSH
#: Requests answered from the tree's metadata: quick when the tree is ``MetadataInMemory``.
_METADATA = frozenset({Op.LOOKUP, Op.GETATTR, Op.READLINK, Op.OPENDIR, Op.READDIR, Op.READDIRPLUS,
                       Op.STATFS, Op.GETXATTR, Op.LISTXATTR, Op.ACCESS})


@dataclass(frozen=True)
class Negotiated:
    """What FUSE_INIT settled on a connection. The kernel never sends INIT again on it, so a server
    taking over a live connection (``FuseMount.resume``, after a restart) starts from this."""

    minor: int
    passthrough: bool
    no_open: bool
    no_opendir: bool

    def to_json(self) -> dict[str, int | bool]:
        return {"minor": self.minor, "passthrough": self.passthrough, "no_open": self.no_open,
                "no_opendir": self.no_opendir}

    @classmethod
    def from_json(cls, data: object) -> Negotiated:
        """Parse what ``to_json`` wrote; ValueError if anything is missing or of the wrong type."""
        if not isinstance(data, dict):
            raise ValueError("negotiated FUSE state must be an object")
        minor = data.get("minor")
        flags = [data.get(k) for k in ("passthrough", "no_open", "no_opendir")]
        if type(minor) is not int or not all(isinstance(f, bool) for f in flags):
            raise ValueError(f"malformed negotiated FUSE state {data!r}")
        if not protocol.MIN_MINOR <= minor <= protocol.MAX_MINOR:
            raise ValueError(f"negotiated FUSE minor {minor} is not one this server speaks")
        return cls(minor, *(bool(f) for f in flags))


@dataclass
class _File:
    ino: int
    passthrough: bool


@dataclass
class _Dir:
    ino: int
    entries: list[tuple[bytes, int, int, Attr | None]] | None = None  # name, ino, mode, attr


class Operations:
    """Answers requests for one mount; thread-safe (called from the session's workers)."""

    def __init__(
        self,
        tree: Tree,
        *,
        entry_timeout: float,
        attr_timeout: float,
        passthrough: bool,
        negative_timeout: float | None = None,
        dev_fd: int,
        max_errors: int = 20,
        cache_symlinks: bool = True,
        no_open: bool = False,
    ) -> None:
        self.tree = tree
        #: Ask the kernel to open files and directories itself (ENOSYS to the first OPEN/OPENDIR) when
        #: reads are served: no OPEN, RELEASE or FLUSH round trip per open, and the page cache kept. Only
        #: for read-only mounts (a write open would then reach no one who refuses it).
        self.want_no_open = no_open
        self.no_open = False
        self.no_opendir = False
        self._listings: collections.OrderedDict[int, list[tuple[bytes, int, int, Attr | None]]] = (
            collections.OrderedDict()
        )
        self.cache_symlinks = cache_symlinks
        self.entry_timeout = entry_timeout
        self.negative_timeout = entry_timeout if negative_timeout is None else negative_timeout
        self.attr_timeout = attr_timeout
        self.want_passthrough = passthrough
        self.passthrough_active = False
        self._passthrough_warned = False
        self.backing = BackingFiles(dev_fd)
        if isinstance(tree, BackingAware):      # (the chunk cache counts what the kernel holds)
            self.backing.on_closed = tree.backing_closed
        self.last_errors: collections.deque[str] = collections.deque(maxlen=max_errors)
        self.minor = 0
        self.resumed = False
        # Handles start at the clock (ns): those of a server taking over the connection after a restart
        # never collide with the ones its predecessor gave out, which the kernel still uses.
        self._fh = itertools.count(time.time_ns())
        self._files: dict[int, _File] = {}
        self._dirs: dict[int, _Dir] = {}
        self._cached_opens: collections.Counter[int] = collections.Counter()
        self._open_lock = threading.Lock()  # guards _files, _dirs, _cached_opens and the open-mode choice
        self._inline_open = threading.local()   # .ino: the OPEN this reading thread answers itself
        self._parents: dict[int, int] = {}
        self._metadata_inline = isinstance(tree, MetadataInMemory) and tree.metadata_in_memory()
        self._observed_writes = isinstance(tree, WriteObserver)
        self._read_exec = tree.read_exec if isinstance(tree, ExecAware) else None
        self._handlers: dict[int, Callable[[Request], Reply]] = {
            Op.LOOKUP: self.lookup,
            Op.GETATTR: self.getattr,
            Op.READLINK: self.readlink,
            Op.OPEN: self.open,
            Op.READ: self.read,
            Op.RELEASE: self.release,
            Op.STATFS: self.statfs,
            Op.GETXATTR: self.getxattr,
            Op.LISTXATTR: self.listxattr,
            Op.FLUSH: _no_flush,
            Op.FSYNC: _ok,
            Op.FSYNCDIR: _ok,
            Op.OPENDIR: self.opendir,
            Op.READDIR: self.readdir,
            Op.READDIRPLUS: self.readdirplus,
            Op.RELEASEDIR: self.releasedir,
            Op.ACCESS: self.access,
            Op.DESTROY: _ok,
        }

    # -- dispatch ---------------------------------------------------------------------------------

    def inline(self, buf: bytes) -> bool:
        """Whether the request ``buf`` (as read from the device) never waits, so the thread that read it
        answers it before reading the next (``fuse.workers``). What may wait: READ (the network), an
        OPEN that looks for and registers a backing file (it may assemble one; registering tells the
        keeper), a RELEASE that may unregister an idle id (tells the keeper), a write a
        ``WriteObserver`` judges, and metadata unless the tree is ``MetadataInMemory``."""
        if len(buf) < protocol.IN_HEADER.size:
            return True  # unparsable: the session logs it and answers nothing
        opcode, nodeid = protocol.IN_OPCODE_NODEID.unpack_from(buf)
        if opcode == Op.OPEN:
            inline = (not self.passthrough_active or self.no_open or self.resumed
                      or self.backing.is_warm(nodeid))
            self._inline_open.ino = nodeid if inline else 0
            return inline
        if opcode in _METADATA:
            return self._metadata_inline
        if opcode == Op.READ:
            return False
        if opcode == Op.RELEASE:
            return not self.backing.release_may_wait()
        if opcode in _NAMED_WRITES:
            return not self._observed_writes
        return True  # RELEASE, FLUSH, FORGET, INIT, other writes (EROFS), unknown ones (ENOSYS)

    def handle(self, req: Request) -> Reply | None:
        """The reply to ``req``; None for requests the kernel expects no answer to."""
        if req.opcode in protocol.NO_REPLY:
            return None  # FORGET/BATCH_FORGET: inodes are static; INTERRUPT: requests finish quickly anyway
        if req.opcode in protocol.WRITE_OPS:
            return self._refuse_write(req)
        handler = self._handlers.get(req.opcode)
        if handler is None:
            return errno.ENOSYS, b""  # IOCTL, POLL, LSEEK, STATX, locks...: the kernel falls back
        try:
            return handler(req)
        except FuseError as err:
            if isinstance(err.errno, int) and 0 < err.errno < 512:
                return err.errno, b""
            # The kernel rejects a reply with any other error value and the caller would wait forever.
            return self._failed(req, err)
        except Exception as err:
            return self._failed(req, err)

    def _refuse_write(self, req: Request) -> Reply:
        """Writes fail: EROFS, or the errno a ``WriteObserver`` tree picks for a create/rmdir (it counts
        them: the additional layer store's ``use`` and release notifications)."""
        observe = self.tree.refuse_write if isinstance(self.tree, WriteObserver) else None
        skip = _NAMED_WRITES.get(req.opcode)
        if observe is None or skip is None:
            return errno.EROFS, b""
        try:
            err = observe(protocol.op_name(req.opcode), req.nodeid, protocol.cstring(req.body, skip))
        except Exception as exc:
            return self._failed(req, exc)
        return (err if 0 < err < 512 else errno.EROFS), b""

    def _failed(self, req: Request, err: Exception) -> Reply:
        """Log an unexpected failure, remember it for diagnostics, answer EIO."""
        message = f"{protocol.op_name(req.opcode)} on inode {req.nodeid} failed: {type(err).__name__}: {err}"
        log.error("FUSE %s", message, exc_info=err)
        self.last_errors.append(f"{time.strftime('%Y-%m-%dT%H:%M:%SZ', time.gmtime())} {message}")
        return errno.EIO, b""

    # -- INIT -------------------------------------------------------------------------------------

    def init(self, req: Request) -> Reply:
        """Negotiate the protocol version and features."""
        offer = protocol.decode_init(req.body)
        if offer.major > protocol.KERNEL_VERSION:
            # The kernel re-sends INIT with our major version.
            return 0, protocol.INIT_IN_OLD.pack(protocol.KERNEL_VERSION, protocol.MAX_MINOR, 0, 0)[:8]
        if offer.major < protocol.KERNEL_VERSION or offer.minor < protocol.MIN_MINOR:
            log.error("kernel FUSE protocol %d.%d is too old", offer.major, offer.minor)
            return errno.EPROTO, b""
        self.minor = min(offer.minor, protocol.MAX_MINOR)
        flags = WANTED_FLAGS & offer.flags
        if not self.cache_symlinks:
            flags &= ~protocol.CACHE_SYMLINKS
        depth = 0
        if self.want_passthrough and offer.flags & protocol.PASSTHROUGH and self.minor >= 40:
            flags |= protocol.PASSTHROUGH
            depth = MAX_STACK_DEPTH
            self.passthrough_active = True
        if self.want_no_open:
            # Passthrough needs an OPEN reply per open (it carries the backing id): files then keep OPEN.
            self.no_open = not self.passthrough_active and bool(offer.flags & protocol.NO_OPEN_SUPPORT)
            self.no_opendir = bool(offer.flags & protocol.NO_OPENDIR_SUPPORT)
        out = protocol.InitOut(
            minor=self.minor, max_readahead=offer.max_readahead, flags=flags, max_stack_depth=depth
        )
        return 0, protocol.encode_init(out)

    def negotiated(self) -> Negotiated:
        return Negotiated(self.minor, self.passthrough_active, self.no_open, self.no_opendir)

    def resume(self, state: Negotiated, backing: dict[int, int] | None = None) -> None:
        """Serve a connection another process negotiated. Its file and directory handles are unknown
        here: reads go by node id, listings by directory (``_entries``), RELEASE of them is a no-op.
        ``backing``: the passthrough ids it registered (``ino -> id``), the only ones used from now on."""
        self.backing.adopt(backing or {})
        if backing and isinstance(self.tree, BackingAware):
            self.tree.backing_adopted(list(backing))
        self.minor = state.minor
        self.passthrough_active = state.passthrough and self.want_passthrough
        self.no_open = state.no_open
        self.no_opendir = state.no_opendir
        self.resumed = True

    # -- metadata ---------------------------------------------------------------------------------

    def _note_parent(self, parent: int, attr: Attr) -> None:
        if stat.S_ISDIR(attr.mode):
            self._parents[attr.ino] = parent

    def lookup(self, req: Request) -> Reply:
        name = protocol.cstring(req.body)
        attr = self.tree.lookup(req.nodeid, name)
        if attr is not None:
            self._note_parent(req.nodeid, attr)
        # A missing name is answered as a cached negative entry (nodeid 0): layers never change.
        timeout = self.entry_timeout if attr is not None else self.negative_timeout
        return 0, protocol.encode_entry(attr, timeout, self.attr_timeout)

    def getattr(self, req: Request) -> Reply:
        return 0, protocol.encode_attr_out(self.tree.getattr(req.nodeid), self.attr_timeout)

    def readlink(self, req: Request) -> Reply:
        return 0, self.tree.readlink(req.nodeid)

    def statfs(self, req: Request) -> Reply:
        return 0, protocol.encode_statfs(self.tree.statfs())

    def access(self, req: Request) -> Reply:
        mask = protocol.ACCESS_IN.unpack_from(req.body)[0]
        if mask & os.W_OK:
            return errno.EROFS, b""
        self.tree.getattr(req.nodeid)
        return 0, b""

    def getxattr(self, req: Request) -> Reply:
        if isinstance(self.tree, XattrAware) and not self.tree.has_xattrs():
            # The kernel then answers EOPNOTSUPP itself for this mount: no request per file. LISTXATTR
            # still answers (an empty list, as an extracted layer gives), once per file asked.
            return errno.ENOSYS, b""
        size = protocol.GETXATTR_IN.unpack_from(req.body)[0]
        name = protocol.cstring(req.body, protocol.GETXATTR_IN.size)
        value = self.tree.getxattr(req.nodeid, name)
        if value is None:
            return errno.ENODATA, b""
        return _sized(value, size)

    def listxattr(self, req: Request) -> Reply:
        size = protocol.GETXATTR_IN.unpack_from(req.body)[0]
        names = self.tree.listxattr(req.nodeid)
        return _sized(b"".join(n + b"\0" for n in names), size)

    # -- files ------------------------------------------------------------------------------------

    def open(self, req: Request) -> Reply:
        flags = protocol.OPEN_IN.unpack_from(req.body)[0]
        if flags & os.O_ACCMODE != os.O_RDONLY or flags & os.O_TRUNC:
            return errno.EROFS, b""
        if self.no_open:
            return errno.ENOSYS, b""  # from now on the kernel opens files itself (FOPEN_KEEP_CACHE)
        ino = req.nodeid
        inline = getattr(self._inline_open, "ino", 0) == ino
        self._inline_open.ino = 0
        if self.passthrough_active:
            with self._open_lock:  # a warm open: the inode's id is kept and it has no cached-mode open
                backing_id = 0 if ino in self._cached_opens else self.backing.reuse(ino)
                if backing_id:
                    fh = next(self._fh)
                    self._files[fh] = _File(ino, True)
                    return 0, protocol.OPEN_OUT.pack(fh, _PASSTHROUGH_OPEN, backing_id)
        path = None
        # After a restart only the ids the previous server registered pass through: an inode it opened
        # in cached mode may still be open, and the kernel refuses a passthrough open of it (EIO).
        # The reading thread (inline) neither waits nor asks the tree (it may pin and assemble a file):
        # a warm id gone between inline() and here (a whole eviction) leaves it cached mode.
        if self.passthrough_active and not self.resumed and not inline:
            self.backing.wait_closed(ino)   # its id being unregistered: the tree's pin goes, then pins again
            if not self.backing.is_open(ino):
                path = self.tree.backing_path(ino)
        with self._open_lock:
            backing_id = 0
            # The kernel refuses to mix cached and passthrough opens of one inode: follow the current mode.
            if (
                self.passthrough_active
                and not inline      # (acquire may register an id and announce waits for the keeper)
                and self._cached_opens[ino] == 0
                and (path or self.backing.is_open(ino))
            ):
                try:
                    backing_id = self.backing.acquire(ino, path)
                except OSError as err:
                    # Usually the same for every file (EPERM without CAP_SYS_ADMIN, ELOOP when the
                    # backing files sit on a stacked fs): say it once, then quietly serve the reads.
                    level = logging.DEBUG if self._passthrough_warned else logging.WARNING
                    self._passthrough_warned = True
                    log.log(
                        level, "passthrough of inode %d (%s) unavailable, serving reads: %s", ino, path, err
                    )
            fh = next(self._fh)
            if backing_id:
                self._files[fh] = _File(ino, True)
            else:
                self._cached_opens[ino] += 1
                self._files[fh] = _File(ino, False)
        if backing_id:      # the keeper is told of the id outside _open_lock (warm opens need it)
            self.backing.announce(ino)
            return 0, protocol.OPEN_OUT.pack(fh, _PASSTHROUGH_OPEN, backing_id)
        return 0, protocol.OPEN_OUT.pack(fh, protocol.FOPEN_KEEP_CACHE | protocol.FOPEN_NOFLUSH, 0)

    def read(self, req: Request) -> Reply:
        _, offset, size, _, _, flags, _ = protocol.READ_IN.unpack_from(req.body)
        if flags & protocol.FMODE_EXEC and self._read_exec is not None:
            data = self._read_exec(req.nodeid, offset, size)
        else:
            data = self.tree.read(req.nodeid, offset, size)
        if len(data) < size:
            # The kernel takes a short read as the end of the file and would shrink its idea of the size.
            file_size = self.tree.getattr(req.nodeid).size
            if offset + len(data) < min(file_size, offset + size):
                raise ValueError(
                    f"short read: {len(data)} of {size} bytes at offset {offset} of a {file_size}-byte file"
                )
        return 0, data[:size]

    def release(self, req: Request) -> Reply:
        fh = protocol.RELEASE_IN.unpack_from(req.body)[0]
        with self._open_lock:
            f = self._files.get(fh)
            if f is None or f.ino != req.nodeid:
                return 0, b""       # a handle of the server before a restart
            del self._files[fh]
            if not f.passthrough:
                self._cached_opens[f.ino] -= 1
                if self._cached_opens[f.ino] <= 0:
                    del self._cached_opens[f.ino]
        if f.passthrough:
            self.backing.release(f.ino)
        return 0, b""

    def open_files(self) -> int:
        """Open file handles (diagnostics and tests)."""
        with self._open_lock:
            return len(self._files)

    # -- directories ------------------------------------------------------------------------------

    def opendir(self, req: Request) -> Reply:
        attr = self.tree.getattr(req.nodeid)
        if not stat.S_ISDIR(attr.mode):
            return errno.ENOTDIR, b""
        if self.no_opendir:
            return errno.ENOSYS, b""  # from now on READDIR comes with fh 0 (FOPEN_CACHE_DIR by default)
        fh = next(self._fh)
        with self._open_lock:
            self._dirs[fh] = _Dir(req.nodeid)
        return 0, protocol.OPEN_OUT.pack(fh, protocol.FOPEN_CACHE_DIR | protocol.FOPEN_KEEP_CACHE, 0)

    def releasedir(self, req: Request) -> Reply:
        fh = protocol.RELEASE_IN.unpack_from(req.body)[0]
        with self._open_lock:
            self._dirs.pop(fh, None)
        return 0, b""

    def _entries(self, req: Request) -> tuple[list[tuple[bytes, int, int, Attr | None]], int, int]:
        fh, offset, size, *_ = protocol.READ_IN.unpack_from(req.body)
        with self._open_lock:
            d = self._dirs.get(fh)
        if d is not None and d.ino != req.nodeid:
            d = None
        if d is None and ((fh == 0 and self.no_opendir) or self.resumed):
            # a handle of the server before a restart is served by the directory it was opened on
            return self._listing(req.nodeid), offset, size
        if d is None:
            raise FuseError(errno.EBADF, f"unknown directory handle {fh}")
        if d.entries is None:
            d.entries = self._fill(d)
        return d.entries, offset, size

    def _fill(self, d: _Dir) -> list[tuple[bytes, int, int, Attr | None]]:
        children = self.tree.readdir(d.ino)
        parent = self._parents.get(d.ino, d.ino)
        entries: list[tuple[bytes, int, int, Attr | None]] = [
            (b".", d.ino, stat.S_IFDIR, None),
            (b"..", parent, stat.S_IFDIR, None),
        ]
        for name, attr in children:
            self._note_parent(d.ino, attr)
            entries.append((name, attr.ino, attr.mode, attr))
        return entries

    def _listing(self, ino: int) -> list[tuple[bytes, int, int, Attr | None]]:
        """A directory's entries without a handle (no OPENDIR): kept for the few directories listed last,
        since one listing takes several READDIRs (offsets stay valid: a tree's listings never change)."""
        with self._open_lock:
            entries = self._listings.get(ino)
            if entries is not None:
                self._listings.move_to_end(ino)
                return entries
        d = _Dir(ino)
        entries = self._fill(d)
        with self._open_lock:
            self._listings[ino] = entries
            while len(self._listings) > LISTINGS_KEPT:
                self._listings.popitem(last=False)
        return entries

    def readdir(self, req: Request) -> Reply:
        return self._list(req, plus=False)

    def readdirplus(self, req: Request) -> Reply:
        return self._list(req, plus=True)

    def _list(self, req: Request, *, plus: bool) -> Reply:
        """READDIR / READDIRPLUS: as many entries from the offset as fit in the kernel's buffer."""
        entries, offset, size = self._entries(req)
        out = bytearray()
        for index in range(offset, len(entries)):
            name, ino, mode, attr = entries[index]
            if len(out) + protocol.dirent_size(name, plus) > size:
                break
            if plus:
                out += protocol.encode_direntplus(
                    ino, index + 1, name, attr, mode, self.entry_timeout, self.attr_timeout
                )
            else:
                out += protocol.encode_dirent(ino, index + 1, name, mode)
        return 0, bytes(out)


def _ok(req: Request) -> Reply:
    return 0, b""


def _no_flush(req: Request) -> Reply:
    """ENOSYS: nothing is ever written, so the kernel may stop sending FLUSH at every close."""
    return errno.ENOSYS, b""


def _sized(value: bytes, size: int) -> Reply:
    """xattr size-probe semantics: size 0 asks for the length, a too-small buffer is ERANGE."""
    if size == 0:
        return 0, protocol.GETXATTR_OUT.pack(len(value), 0)
    if len(value) > size:
        return errno.ERANGE, b""
    return 0, value
