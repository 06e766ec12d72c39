"""Child process for the ebpf_file kernel tests: file operations under a temp dir, ground truth as JSON.

Run with /usr/bin/python3 (stdlib only). argv: scenario, base dir[, comm].
"""

import ctypes
import json
import os
import sys
import time

libc = ctypes.CDLL(None, use_errno=True)
libc.syscall.restype = ctypes.c_long
AT_FDCWD = -100


def cgroup_id() -> int:
    """Inode of this process's cgroup v2 directory (what bpf_get_current_cgroup_id() returns)."""
    rel = next(ln.split("::", 1)[1] for ln in open("/proc/self/cgroup").read().splitlines() if ln.startswith("0::"))
    root = next(ln.split()[1] for ln in open("/proc/self/mounts") if ln.split()[2] == "cgroup2")
    return os.stat(root + rel.rstrip("/")).st_ino if rel != "/" else os.stat(root).st_ino


def raw_syscall(nr: int, *args: int | bytes) -> int:
    r = libc.syscall(ctypes.c_long(nr), *[ctypes.c_char_p(a) if isinstance(a, bytes) else ctypes.c_long(a)
                                          for a in args])
    return r if r >= 0 else -ctypes.get_errno()


def main() -> None:
    scenario, base = sys.argv[1], sys.argv[2]
    if len(sys.argv) > 3:
        libc.prctl(15, sys.argv[3].encode(), 0, 0, 0)  # PR_SET_NAME
    if os.environ.get("RAVN_TEST_CGROUP"):  # move into a fresh cgroup first (proc.cgroup ground truth)
        with open(os.path.join(os.environ["RAVN_TEST_CGROUP"], "cgroup.procs"), "w") as f:
            f.write("0")
    out: dict = {"pid": os.getpid(), "ppid": os.getppid(), "uid": os.getuid(), "cgroup": cgroup_id(),
                 "gid": os.getgid()}
    w, s, o = f"{base}/watch", f"{base}/secret", f"{base}/outside"
    if scenario == "main":
        fd = os.open(f"{s}/key", os.O_RDONLY)  # read under a read prefix: reported
        out["read_fd"] = fd
        os.close(fd)
        fd = os.open(f"{w}/new", os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o640)  # write under a write prefix
        out["write_fd"], out["write_flags"] = fd, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_CLOEXEC
        os.close(fd)
        os.close(os.open(f"{w}/new", os.O_RDONLY))  # read under a write prefix: not reported
        fd = os.open(f"{o}/x", os.O_WRONLY | os.O_CREAT, 0o644)  # outside: not reported
        os.close(os.open(f"{w}/skip/y", os.O_WRONLY | os.O_CREAT, 0o644))  # excluded: not reported
        os.chmod(f"{w}/new", 0o600)  # reported (watched)
        os.chmod(f"{o}/x", 0o755)  # not reported
        os.chmod(f"{o}/x", 0o4755)  # setuid outside the prefixes: reported
        os.close(fd)
        fd = os.open(f"{o}/fx", os.O_WRONLY | os.O_CREAT, 0o644)  # outside: not reported
        os.fchmod(fd, 0o2755)  # setgid through an fd: reported, path read from /proc/<pid>/fd (kept open below)
        os.chown(f"{w}/new", 1, -1)
        os.rename(f"{o}/x", f"{o}/x2")  # every rename is reported by default
        os.rename(f"{w}/new", f"{w}/new2")
        os.link(f"{w}/new2", f"{o}/hard")  # old path watched
        os.symlink(f"{s}/key", f"{o}/sym")  # target under a read prefix
        os.truncate(f"{w}/new2", 3)
        os.unlink(f"{o}/hard")  # not reported
        os.unlink(f"{w}/new2")
        os.mkdir(f"{w}/dir")
        os.rmdir(f"{w}/dir")
        out["open2_fd"] = raw_syscall(2, f"{w}/viaopen".encode(), os.O_WRONLY | os.O_CREAT, 0o600)  # open(2)
        how = (ctypes.c_uint64 * 3)(os.O_RDWR | os.O_CREAT, 0o600, 0)
        out["openat2_fd"] = libc.syscall(ctypes.c_long(437), ctypes.c_long(AT_FDCWD),
                                         ctypes.c_char_p(f"{w}/viaopenat2".encode()), ctypes.byref(how),
                                         ctypes.c_long(24))
        out["creat_fd"] = raw_syscall(85, f"{w}/viacreat".encode(), 0o640)
        out["missing_ret"] = raw_syscall(257, AT_FDCWD, f"{s}/missing".encode(), os.O_RDONLY, 0)
        # relative paths are resolved in user space with the cwd at decode time (milliseconds later): the
        # child stays in each directory long enough for that (a chdir right after would race; documented)
        os.chdir(w)
        os.close(os.open("rel", os.O_WRONLY | os.O_CREAT, 0o600))  # relative, resolved in user space
        time.sleep(0.15)
        os.chdir(o)
        os.close(os.open("rel2", os.O_WRONLY | os.O_CREAT, 0o600))  # relative, outside: dropped
        time.sleep(0.15)
        os.chdir(s)
        os.close(os.open("cred", os.O_RDONLY))  # relative read of a read prefix's last component
        time.sleep(0.3)  # stay alive (fd open) while the probe resolves /proc/<pid>/cwd and /proc/<pid>/fd
        os.close(fd)
    elif scenario == "unnormal":  # absolute paths with "//", "." and ".." components
        os.close(os.open(f"{s}//key", os.O_RDONLY))  # read prefix: reported as {s}/key
        os.close(os.open(f"{o}/../secret/./key", os.O_RDONLY))  # the same
        os.close(os.open(f"{w}/../outside/y", os.O_WRONLY | os.O_CREAT, 0o600))  # matches as passed; not normal
        os.close(os.open(f"{w}/skip/../z", os.O_WRONLY | os.O_CREAT, 0o600))  # excluded as passed; {w}/z
        os.close(os.open(f"{o}/./y", os.O_RDONLY))  # outside either way: dropped in user space
        os.close(os.open(f"{o}/.hidden", os.O_WRONLY | os.O_CREAT, 0o600))  # normal ("/.h"): not sent
        os.close(os.open(f"{w}/u", os.O_WRONLY | os.O_CREAT, 0o600))
        os.unlink(f"{o}/../watch/u")  # a change: reported as {w}/u
    elif scenario == "perm_relative":
        for name in ("ww", "sticky", "plain", "fww"):
            os.close(os.open(f"{o}/{name}", os.O_WRONLY | os.O_CREAT, 0o644))
        os.chmod(f"{o}/ww", 0o777)  # grants write to others, outside the prefixes: reported
        os.chmod(f"{o}/sticky", 0o1777)  # sticky: not reported
        os.chmod(f"{o}/plain", 0o755)  # not reported
        fd = os.open(f"{o}/fww", os.O_RDONLY)
        os.fchmod(fd, 0o666)  # through an fd: reported, path from /proc/<pid>/fd
        time.sleep(0.15)
        os.close(fd)
        # relative read opens: a read prefix's last component anywhere in last place, or its directory as parent
        os.chdir(s)
        os.close(os.open("./cred", os.O_RDONLY))  # "./shadow" after cd /etc
        time.sleep(0.15)
        os.chdir(base)
        os.close(os.open("secret/key", os.O_RDONLY))  # ".ssh/id_rsa" from $HOME
        time.sleep(0.15)
        os.chdir(o)
        os.close(os.open("../secret/key", os.O_RDONLY))  # "../etc/shadow"
        os.close(os.open("../outside/plain", os.O_RDONLY))  # neither: not sent
        time.sleep(0.3)
    elif scenario == "chown_denied":
        out["ret"] = raw_syscall(92, f"{w}/owned".encode(), 0, 0)  # chown as nobody: -EPERM
    elif scenario == "write":
        os.close(os.open(f"{w}/by-{os.getpid()}", os.O_WRONLY | os.O_CREAT, 0o600))
    print(json.dumps(out), flush=True)


if __name__ == "__main__":
    main()
