"""Loop devices leased to a machine (the devices/loop setting).

A guest root expects ``losetup``, ``mount -o loop IMAGE DIR`` and
``mkfs`` of a loop device to work, and the Linux Test Project acquires a
loop device for every test that needs a file system of its own.  None of
it can run natively in a machine: the host's devices are not in the
guest's /dev, and a block device's file system mounts only for a caller
with CAP_SYS_ADMIN in the initial user namespace (no FS_USERNS_MOUNT,
mount_namespaces(7)).  A machine run by root may therefore be given up to
N loop devices of the host at once, as a kernel lends a device to one
user:

* Its /dev holds ``loop-control``, the host's (10, 237), owned by the
  guest's root (sandbox.c, op_loopctl).  Every loop-control request stops
  (the seccomp filter traps their ioctl(2) numbers; syscalls/sys_ioctl.py):
  LOOP_CTL_GET_FREE *leases* a free host loop device to the machine
  (:meth:`MachineLoops.lease`) and makes its node, ``/dev/loopN`` with the
  host's N, in the caller's /dev, owned by the guest's root and group
  disk, mode 0660 as udev makes it.  LOOP_CTL_ADD and LOOP_CTL_REMOVE
  would create and destroy the host's devices: EPERM.
* Between the lease and the guest's attach, umld holds the device open
  with O_EXCL (a block device's exclusive claim): another host process's
  LOOP_CONFIGURE of it then fails with EBUSY (loop_configure claims the
  device, drivers/block/loop.c), so the device the guest was given is
  never bound to someone else's file under it.  The guest's LOOP_SET_FD
  and LOOP_CONFIGURE on a leased device therefore stop too, and umld
  makes them through its claim with the guest's backing file (reopened
  from /proc/TID/fd, read-only when the guest's device descriptor is),
  then lets the claim go: mkfs and mount claim the device themselves.
  Every other request on a leased device (LOOP_SET_STATUS, BLKGETSIZE64,
  LOOP_SET_CAPACITY, ...) runs natively, the caller's own.
* While a file is attached, umld keeps a plain descriptor of the device
  too, so that autoclear (``mount -o loop``'s LO_FLAGS_AUTOCLEAR, which
  detaches a device at its last close) never frees it while its node is
  still in the guest's /dev: a host process could otherwise bind its own
  file to the free device and the guest open it.  umld does the
  autoclear itself instead: after each of the guest's unmounts, a device
  with the flag that nothing of the machine holds any more (no mount
  claims it, no guest process has a descriptor of it) loses its node and
  its lease, then umld's close detaches it, as the guest's last close
  would have natively.  A device the guest still holds a descriptor of
  stays attached and leased until it detaches it or the machine ends.
* The guest's LOOP_CLR_FD runs natively; the device detaches at its last
  close (loop_clr_fd sets autoclear) and the lease ends then: umld removes
  the node and closes its own descriptor at the call, so once the guest's
  descriptors are closed nothing of the machine reaches the device again.
  What is left: a guest that keeps a descriptor open keeps the device
  bound to its own file (others' attaches fail with EBUSY), and one that
  detached and still holds a descriptor of the now free device could read
  what another host process binds to it later; the same race Linux's
  GET_FREE has for any two users of loop-control, and the reason the
  setting is off by default.
* mount(2) of a leased device (syscalls/sys_mount.py) is done for the
  guest by ``umld-sandbox guestmount`` (sandbox.c, syscalls/_guest.py):
  the new mount API in the initial user namespace, *always nodev* (a device node on an image the
  guest wrote would otherwise open the host's disks), idmapped with the
  guest's user namespace (on-disk id k is guest id k, as for --disk), then
  attached in the guest's mount namespace at the target as the guest
  resolves it.  Only file systems that need a device (those
  /proc/filesystems does not mark ``nodev``) are mounted so; the guest
  unmounts natively (the mount is its own, not locked).  A remount
  (MS_REMOUNT) of such a mount, and its umount2(2) with MNT_FORCE, need
  the initial namespace too (do_remount checks the superblock's owner,
  can_umount MNT_FORCE): the helper makes them, on the mount it finds at
  the guest's path, nodev kept.  Binds and other remounts run natively.
* On its own file systems (its loop devices', and those it mounts itself,
  as a tmpfs) the guest's root may set the immutable and append-only
  flags (syscalls/sys_ioctl.py) and make device nodes of any kind on the
  former, where they never open (syscalls/sys_file.py).

The cost is trust: the host's kernel parses a file system the guest
wrote, and file system drivers are not hardened against crafted images.
Hence a setting, 0 by default, and root-run machines only (the guest's
root must be an id range of its own).  At the machine's end every device
still bound is detached (at its last close) and every claim released.
"""

from __future__ import annotations

import errno
import fcntl
import os
import stat
import struct
from dataclasses import dataclass

from umld.errors import GuestError

#: Documentation/admin-guide/devices.txt: misc 237.
LOOP_CONTROL = os.makedev(10, 237)

# linux/loop.h
LOOP_SET_FD = 0x4C00
LOOP_CLR_FD = 0x4C01
LOOP_GET_STATUS64 = 0x4C05
LOOP_CONFIGURE = 0x4C0A
LOOP_CTL_ADD = 0x4C80
LOOP_CTL_REMOVE = 0x4C81
LOOP_CTL_GET_FREE = 0x4C82
LO_FLAGS_READ_ONLY = 1
LO_FLAGS_AUTOCLEAR = 4
#: struct loop_config: __u32 fd, __u32 block_size, struct loop_info64
#: (232 bytes, lo_flags at 52), __u64 __reserved[8].
LOOP_CONFIG_SIZE = 304
_LO_FLAGS_AT = 8 + 52
_LOOP_INFO64_SIZE = 232

#: Requests that stop: those of loop-control, and the attaches of a
#: device (made through umld's claim) and its detach (the lease ends).
CONTROL_REQUESTS = (LOOP_CTL_ADD, LOOP_CTL_REMOVE, LOOP_CTL_GET_FREE)
DEVICE_REQUESTS = (LOOP_SET_FD, LOOP_CONFIGURE, LOOP_CLR_FD)

#: mount(2) flags (linux/mount.h): the new mount API takes the superblock's
#: as fsconfig(2) flags and the mount's as MOUNT_ATTR_* (linux/mount.h).
MS_RDONLY, MS_NOSUID, MS_NODEV, MS_NOEXEC = 1, 2, 4, 8
MS_SYNCHRONOUS, MS_REMOUNT, MS_DIRSYNC, MS_NOSYMFOLLOW = 16, 32, 128, 256
MS_NOATIME, MS_NODIRATIME, MS_BIND, MS_MOVE = 1024, 2048, 4096, 8192
MS_UNBINDABLE, MS_PRIVATE, MS_SLAVE, MS_SHARED = 1 << 17, 1 << 18, 1 << 19, 1 << 20
MS_STRICTATIME, MS_LAZYTIME = 1 << 24, 1 << 25
MS_MGC_MSK, MS_MGC_VAL = 0xFFFF0000, 0xC0ED0000
#: Flags that make mount(2) something other than a new mount.
NOT_NEW = MS_REMOUNT | MS_BIND | MS_MOVE | MS_UNBINDABLE | MS_PRIVATE | MS_SLAVE | MS_SHARED
_SB_FLAGS = ((MS_RDONLY, "ro"), (MS_SYNCHRONOUS, "sync"), (MS_DIRSYNC, "dirsync"),
             (MS_LAZYTIME, "lazytime"))  # fmt: skip
_ATTRS = ((MS_RDONLY, 0x1), (MS_NOSUID, 0x2), (MS_NODEV, 0x4), (MS_NOEXEC, 0x8),
          (MS_NOATIME, 0x10), (MS_STRICTATIME, 0x20), (MS_NODIRATIME, 0x80),
          (MS_NOSYMFOLLOW, 0x200000))  # fmt: skip


def nodev_filesystems() -> frozenset[str]:
    """The file system types /proc/filesystems marks ``nodev``: those that
    need no device (proc, tmpfs, ...), never mounted for the guest."""
    try:
        with open("/proc/filesystems", encoding="ascii") as f:
            lines = f.read().splitlines()
    except OSError:
        return frozenset()
    return frozenset(line.split()[-1] for line in lines if line.startswith("nodev"))


@dataclass
class Lease:
    """A host loop device leased to the machine."""

    index: int
    rdev: int
    #: umld's O_EXCL descriptor while no file is attached; None after.
    claim: int | None
    #: The attached file (st_dev, st_ino), once attached.
    backing: tuple[int, int] | None = None
    #: umld's plain descriptor while a file is attached: autoclear never
    #: frees the device under the lease (:meth:`MachineLoops.unmounted`).
    hold: int | None = None


class MachineLoops:
    """The loop devices of one machine: at most ``limit`` at once.  Node
    owner: ``uid``, ``gid``, the host ids of the guest's root and of its
    group disk.  Tracer thread only."""

    def __init__(self, limit: int, uid: int, gid: int) -> None:
        self.limit = limit
        self.uid, self.gid = uid, gid
        self.leases: dict[int, Lease] = {}
        #: Devices (st_dev) of the file systems the guest mounted itself
        #: (a tmpfs of its user namespace's): its own, as its loop
        #: devices' are (inode flags, sys_ioctl.py).
        self.own_devs: set[int] = set()

    # -- what a descriptor or path of the guest is ---------------------------------------

    @staticmethod
    def _fd_stat(tid: int, fd: int) -> os.stat_result | None:
        try:
            return os.stat(f"/proc/{tid}/fd/{fd}")
        except OSError:
            return None

    def is_control(self, tid: int, fd: int) -> bool:
        st = self._fd_stat(tid, fd)
        return st is not None and stat.S_ISCHR(st.st_mode) and st.st_rdev == LOOP_CONTROL

    def lease_of(self, tid: int, fd: int) -> Lease | None:
        """The lease whose device the guest's descriptor ``fd`` is."""
        st = self._fd_stat(tid, fd)
        if st is None or not stat.S_ISBLK(st.st_mode):
            return None
        return self._by_rdev(st.st_rdev)

    def _by_rdev(self, rdev: int) -> Lease | None:
        for lease in self.leases.values():
            if lease.rdev == rdev:
                return lease
        return None

    # -- loop-control ------------------------------------------------------------------

    def lease(self, tid: int) -> int:
        """LOOP_CTL_GET_FREE: a device the machine holds and has not
        attached yet, or a new lease of a free one of the host's."""
        for index in sorted(self.leases):
            lease = self.leases[index]
            if lease.claim is not None:
                self._make_node(tid, lease)
                return index
        if len(self.leases) >= self.limit:
            # What loop_control_get_free answers when it cannot add one.
            raise GuestError(errno.ENOSPC)
        ctl = os.open("/dev/loop-control", os.O_RDWR | os.O_CLOEXEC)
        try:
            for _ in range(16):
                index = fcntl.ioctl(ctl, LOOP_CTL_GET_FREE)
                path = f"/dev/loop{index}"
                try:
                    claim = os.open(path, os.O_RDWR | os.O_EXCL | os.O_CLOEXEC)
                except OSError as exc:
                    if exc.errno in (errno.EBUSY, errno.ENOENT, errno.ENXIO):
                        continue  # another host process took it first
                    raise
                if _bound(claim):
                    os.close(claim)
                    continue
                lease = Lease(index, os.fstat(claim).st_rdev, claim)
                self.leases[index] = lease
                try:
                    self._make_node(tid, lease)
                except OSError:
                    self._end(lease)
                    raise
                return index
        finally:
            os.close(ctl)
        raise GuestError(errno.EBUSY)

    # -- a leased device ---------------------------------------------------------------

    def attach(self, tid: int, lease: Lease, dev_fd: int, config: bytes) -> None:
        """LOOP_SET_FD or LOOP_CONFIGURE (``config``, its fd the guest's
        backing descriptor) on a leased device, made through umld's claim.
        Raises GuestError with what the kernel answered."""
        if lease.claim is None:
            raise GuestError(errno.EBUSY)  # attached already (loop_configure)
        backing = int.from_bytes(config[:4], "little")
        mode = _access_mode(tid, backing)
        if mode is None:
            raise GuestError(errno.EBADF)
        flags = int.from_bytes(config[_LO_FLAGS_AT : _LO_FLAGS_AT + 4], "little")
        if _access_mode(tid, dev_fd) == os.O_RDONLY or mode == os.O_RDONLY:
            flags |= LO_FLAGS_READ_ONLY
        try:
            fd = os.open(f"/proc/{tid}/fd/{backing}", mode | os.O_CLOEXEC)
        except OSError as exc:
            raise GuestError(exc.errno or errno.EBADF) from None
        try:
            cfg = bytearray(config)
            cfg[0:4] = fd.to_bytes(4, "little")
            cfg[_LO_FLAGS_AT : _LO_FLAGS_AT + 4] = flags.to_bytes(4, "little")
            fcntl.ioctl(lease.claim, LOOP_CONFIGURE, bytes(cfg))
            st = os.fstat(fd)
        except OSError as exc:
            raise GuestError(exc.errno or errno.EIO) from None
        finally:
            os.close(fd)
        lease.backing = (st.st_dev, st.st_ino)
        # The same device, opened anew without the exclusive claim (which
        # mkfs and mount need): held until the lease ends.
        lease.hold = os.open(f"/proc/self/fd/{lease.claim}", os.O_RDONLY | os.O_CLOEXEC)
        os.close(lease.claim)
        lease.claim = None

    def detached(self, tid: int, lease: Lease) -> None:
        """The guest's LOOP_CLR_FD of an attached device: the lease ends
        (the device detaches at its last close)."""
        if lease.claim is not None:
            return  # nothing attached: the call fails natively with ENXIO
        del self.leases[lease.index]
        self._remove_node(tid, lease)
        self._let_go(lease)

    def unmounted(self, tid: int, tgids: list[int]) -> None:
        """The guest unmounted a file system: autoclear, as the devices'
        last close would have made it natively, of every attached device
        with LO_FLAGS_AUTOCLEAR that nothing of the machine's holds (no
        mount, no descriptor of one of the processes ``tgids``).  Its node
        goes first, then the lease and umld's descriptor (the device
        detaches at that close)."""
        for lease in list(self.leases.values()):
            if lease.hold is None or not _autoclear(lease.hold):
                continue
            if self._in_use(lease, tgids):
                continue
            self._remove_node(tid, lease)
            # A guest process may have opened the node meanwhile: the
            # device stays leased, its node back.
            if self._in_use(lease, tgids):
                self._make_node(tid, lease)
                continue
            del self.leases[lease.index]
            self._let_go(lease)

    @staticmethod
    def _in_use(lease: Lease, tgids: list[int]) -> bool:
        """Whether a mount claims the device or a guest process has a
        descriptor of it."""
        assert lease.hold is not None
        try:
            # A mounted file system claims its device: O_EXCL fails (EBUSY).
            os.close(os.open(f"/proc/self/fd/{lease.hold}", os.O_RDONLY | os.O_EXCL | os.O_CLOEXEC))
        except OSError:
            return True
        for pid in tgids:
            try:
                names = os.listdir(f"/proc/{pid}/fd")
            except OSError:
                continue
            for name in names:
                try:
                    st = os.stat(f"/proc/{pid}/fd/{name}")
                except OSError:
                    continue
                if stat.S_ISBLK(st.st_mode) and st.st_rdev == lease.rdev:
                    return True
        return False

    @staticmethod
    def _let_go(lease: Lease) -> None:
        if lease.hold is not None:
            os.close(lease.hold)
            lease.hold = None

    def file_on_own(self, tid: int, fd: int) -> os.stat_result | None:
        """The guest's descriptor's file when it is a regular file or a
        directory on a file system of the guest's own (a leased device's,
        or one it mounted itself); None otherwise."""
        st = self._fd_stat(tid, fd)
        if st is None or not (stat.S_ISREG(st.st_mode) or stat.S_ISDIR(st.st_mode)):
            return None
        own = st.st_dev in self.own_devs or self._by_rdev(st.st_dev) is not None
        return st if own else None

    def mounted(self, tid: int, target: bytes) -> None:
        """The guest mounted a file system of its own at ``target``."""
        st = self._stat_in_guest(tid, target)
        if st is not None:
            self.own_devs.add(st.st_dev)

    def own_fs(self, tid: int, target: bytes) -> int | None:
        """The device of the guest's own file system mounted at ``target``."""
        st = self._stat_in_guest(tid, target)
        return st.st_dev if st is not None and st.st_dev in self.own_devs else None

    @staticmethod
    def set_file_flags(tid: int, fd: int, request: int, arg: bytes) -> None:
        """Make an inode-flags ioctl(2) on the guest's file (reopened from
        /proc/TID/fd: the same file; the flags are the inode's)."""
        own = os.open(f"/proc/{tid}/fd/{fd}", os.O_RDONLY | os.O_NONBLOCK | os.O_CLOEXEC)
        try:
            fcntl.ioctl(own, request, arg)
        finally:
            os.close(own)

    # -- mount(2) ----------------------------------------------------------------------

    def _stat_in_guest(self, tid: int, path: bytes) -> os.stat_result | None:
        """stat(2) of the guest's ``path`` (its root or working directory
        first): only to recognise a leased device; the helper checks again
        from the guest's own root before it acts."""
        base = f"/proc/{tid}/root" if path.startswith(b"/") else f"/proc/{tid}/cwd/"
        try:
            return os.stat(os.fsencode(base) + path)
        except OSError:
            return None

    def mount_request(self, tid: int, source: bytes, fstype: bytes, flags: int) -> Lease | None:
        """The lease a new mount of ``source`` would mount, or None when the
        call is not such a mount (it then runs natively)."""
        if flags & MS_MGC_MSK == MS_MGC_VAL:
            flags &= ~MS_MGC_MSK
        if flags & NOT_NEW or not source or not self.leases:
            return None
        st = self._stat_in_guest(tid, source)
        if st is None or not stat.S_ISBLK(st.st_mode):
            return None
        lease = self._by_rdev(st.st_rdev)
        if lease is None or os.fsdecode(fstype) in nodev_filesystems():
            return None
        return lease

    def mounted_lease(self, tid: int, target: bytes) -> Lease | None:
        """The lease whose file system is mounted at the guest's ``target``
        (for MS_REMOUNT and umount2 with MNT_FORCE), or None."""
        if not self.leases or not target:
            return None
        st = self._stat_in_guest(tid, target)
        return None if st is None else self._by_rdev(st.st_dev)

    @staticmethod
    def mount_words(
        lease: Lease, target: bytes, fstype: bytes, flags: int, data: bytes
    ) -> list[bytes]:
        """``umld-sandbox guestmount TID mount ...``'s words."""
        sb, attrs = _split_flags(flags)
        source = f"/dev/loop{lease.index}".encode()
        return [b"mount", source, fstype, sb, attrs, data, target]

    @staticmethod
    def remount_words(lease: Lease, target: bytes, flags: int, data: bytes) -> list[bytes]:
        sb, attrs = _split_flags(flags)
        if flags & MS_BIND:
            sb = b"-"  # the mount's attributes only
        return [b"remount", str(lease.rdev).encode(), sb, attrs, data, target]

    @staticmethod
    def umount_words(lease: Lease, target: bytes, flags: int) -> list[bytes]:
        return [b"umount", str(lease.rdev).encode(), str(flags).encode(), target]

    # -- nodes ----------------------------------------------------------------------

    @staticmethod
    def _dev_dir(tid: int) -> int:
        """The caller's /dev, never through a symbolic link: the walk
        starts at its root (/proc/TID/root) and takes one name."""
        root = os.open(f"/proc/{tid}/root", os.O_PATH | os.O_DIRECTORY | os.O_CLOEXEC)
        try:
            return os.open(
                "dev", os.O_PATH | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC, dir_fd=root
            )
        finally:
            os.close(root)

    def _make_node(self, tid: int, lease: Lease) -> None:
        name = f"loop{lease.index}"
        dev = self._dev_dir(tid)
        try:
            try:
                st = os.stat(name, dir_fd=dev, follow_symlinks=False)
                if stat.S_ISBLK(st.st_mode) and st.st_rdev == lease.rdev:
                    return
                os.unlink(name, dir_fd=dev)
            except FileNotFoundError:
                pass
            os.mknod(name, stat.S_IFBLK | 0o660, lease.rdev, dir_fd=dev)
            # Owner and mode (mknod(2) applied umld's umask) through a
            # descriptor of the node itself: the guest may swap the name
            # for a symbolic link meanwhile, which must not be followed.
            node = os.open(name, os.O_PATH | os.O_NOFOLLOW | os.O_CLOEXEC, dir_fd=dev)
            try:
                st = os.fstat(node)
                if not stat.S_ISBLK(st.st_mode) or st.st_rdev != lease.rdev:
                    raise OSError(errno.EEXIST, "the node was replaced")
                os.chown(f"/proc/self/fd/{node}", self.uid, self.gid)
                os.chmod(f"/proc/self/fd/{node}", 0o660)
            finally:
                os.close(node)
        finally:
            os.close(dev)

    def _remove_node(self, tid: int, lease: Lease) -> None:
        name = f"loop{lease.index}"
        try:
            dev = self._dev_dir(tid)
        except OSError:
            return
        try:
            st = os.stat(name, dir_fd=dev, follow_symlinks=False)
            if stat.S_ISBLK(st.st_mode) and st.st_rdev == lease.rdev:
                os.unlink(name, dir_fd=dev)
        except OSError:
            pass
        finally:
            os.close(dev)

    def _end(self, lease: Lease) -> None:
        self.leases.pop(lease.index, None)
        if lease.claim is not None:
            os.close(lease.claim)
            lease.claim = None
            return
        # Attached: detach it at its last close (the guest's mounts of it
        # go with the machine's mount namespace).  umld's descriptor kept
        # autoclear from freeing it, so it still holds the guest's file;
        # checked all the same before the detach.
        fd = lease.hold
        if fd is None:
            return
        try:
            if _attached(fd) == lease.backing:
                fcntl.ioctl(fd, LOOP_CLR_FD)
        except OSError:
            pass
        finally:
            self._let_go(lease)

    def close(self) -> None:
        """The machine has ended: every claim released, every device still
        attached detached."""
        for lease in list(self.leases.values()):
            self._end(lease)


def _split_flags(flags: int) -> tuple[bytes, bytes]:
    """mount(2) flags as the helper takes them: the superblock's, named
    as fsconfig(2) flags, and the mount's, as MOUNT_ATTR_* bits."""
    sb = ",".join(name for bit, name in _SB_FLAGS if flags & bit)
    attrs = sum(attr for bit, attr in _ATTRS if flags & bit)
    return sb.encode(), str(attrs).encode()


def _attached(fd: int) -> tuple[int, int] | None:
    """The (st_dev, st_ino) of the file a loop device has attached
    (loop_info64's lo_device and lo_inode); None on a free one
    (LOOP_GET_STATUS64 fails with ENXIO)."""
    try:
        info = fcntl.ioctl(fd, LOOP_GET_STATUS64, bytes(_LOOP_INFO64_SIZE))
    except OSError as exc:
        if exc.errno == errno.ENXIO:
            return None
        raise
    dev, ino = struct.unpack_from("=QQ", info)
    return dev, ino


def _autoclear(fd: int) -> bool:
    """Whether a loop device detaches at its last close (lo_flags)."""
    try:
        info = fcntl.ioctl(fd, LOOP_GET_STATUS64, bytes(_LOOP_INFO64_SIZE))
    except OSError:
        return False
    (flags,) = struct.unpack_from("=I", info, 52)
    return bool(flags & LO_FLAGS_AUTOCLEAR)


def _bound(fd: int) -> bool:
    """Whether a loop device has a file attached."""
    try:
        return _attached(fd) is not None
    except OSError:
        return True


def _access_mode(tid: int, fd: int) -> int | None:
    """O_RDONLY, O_WRONLY or O_RDWR of the guest's descriptor (its fdinfo
    ``flags``); None when it has no such descriptor."""
    try:
        with open(f"/proc/{tid}/fdinfo/{fd}", encoding="ascii") as f:
            for line in f:
                if line.startswith("flags:"):
                    return int(line.split()[1], 8) & os.O_ACCMODE
    except (OSError, ValueError):
        return None
    return None
