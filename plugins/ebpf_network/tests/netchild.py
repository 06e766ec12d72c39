"""Child process for the kernel tests: does the network operations of one scenario and prints ground truth.

Run with /usr/bin/python3 (stdlib only, so it also runs as an unprivileged uid). Prints one JSON object.
"""

import ctypes
import json
import os
import socket
import sys
import time


def cgroup_id() -> int:
    """Inode of this process's cgroup v2 directory (what bpf_get_current_cgroup_id() returns)."""
    rel = next(ln.split("::", 1)[1] for ln in open("/proc/self/cgroup").read().splitlines() if ln.startswith("0::"))
    root = next(ln.split()[1] for ln in open("/proc/self/mounts") if ln.split()[2] == "cgroup2")
    return os.stat(root + rel.rstrip("/")).st_ino if rel != "/" else os.stat(root).st_ino


def set_comm(name: str) -> None:
    libc = ctypes.CDLL(None, use_errno=True)
    libc.prctl(15, name.encode(), 0, 0, 0)  # PR_SET_NAME


def tcp(fam: int, addr: str) -> dict:
    ls = socket.socket(fam, socket.SOCK_STREAM)
    ls.bind((addr, 0))
    ls.listen(7)
    port = ls.getsockname()[1]
    c = socket.socket(fam, socket.SOCK_STREAM)
    c.connect((addr, port))
    a, peer = ls.accept()
    out = {"listen_fd": ls.fileno(), "port": port, "client_fd": c.fileno(), "client": list(c.getsockname()[:2]),
           "accepted_fd": a.fileno(), "peer": list(peer[:2])}
    c.close()
    time.sleep(0.02)
    a.close()
    ls.close()
    return out


def main() -> None:
    scenario = sys.argv[1]
    if len(sys.argv) > 2:
        set_comm(sys.argv[2])
    if os.environ.get("RAVN_TEST_CGROUP"):  # move into a fresh cgroup first (proc.cgroup ground truth)
        with open(os.path.join(os.environ["RAVN_TEST_CGROUP"], "cgroup.procs"), "w") as f:
            f.write("0")
    out: dict = {"pid": os.getpid(), "ppid": os.getppid(), "uid": os.getuid(), "cgroup": cgroup_id()}
    if scenario == "wait":  # block until stdin closes, then run "tcp4"
        sys.stdin.read()
        scenario = "tcp4"
    if scenario == "tcp4":
        out["tcp"] = tcp(socket.AF_INET, "127.0.0.1")
    elif scenario == "tcp6":
        out["tcp"] = tcp(socket.AF_INET6, "::1")
    elif scenario == "tcp_mapped":  # IPv6 socket to an IPv4 listener through a mapped address
        ls = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        ls.bind(("127.0.0.1", 0))
        ls.listen()
        c = socket.socket(socket.AF_INET6, socket.SOCK_STREAM)
        c.connect(("::ffff:127.0.0.1", ls.getsockname()[1]))
        out.update(port=ls.getsockname()[1], client_fd=c.fileno(), client=list(c.getsockname()[:2]))
        # dual-stack IPv6 listener accepting an IPv4 client: the peer is an IPv4-mapped IPv6 address
        ds = socket.socket(socket.AF_INET6, socket.SOCK_STREAM)
        ds.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 0)
        ds.bind(("::", 0))
        ds.listen()
        c4 = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        c4.connect(("127.0.0.1", ds.getsockname()[1]))
        a, peer = ds.accept()
        out.update(ds_port=ds.getsockname()[1], ds_fd=a.fileno(), ds_peer=list(peer[:2]),
                   c4=list(c4.getsockname()))
    elif scenario == "udp":
        r1 = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        r1.bind(("127.0.0.1", 0))
        r2 = socket.socket(socket.AF_INET6, socket.SOCK_DGRAM)
        r2.bind(("::1", 0))
        u = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        u.sendto(b"a", r1.getsockname())
        u.sendto(b"b", r1.getsockname())  # same destination: no second event
        u6 = socket.socket(socket.AF_INET6, socket.SOCK_DGRAM)
        u6.connect(r2.getsockname()[:2])
        u6.send(b"c")
        u6.send(b"d")
        out.update(r1=list(r1.getsockname()), r2=list(r2.getsockname()[:2]), sender=list(u.getsockname()),
                   sender6=list(u6.getsockname()[:2]), sender6_fd=u6.fileno())
    elif scenario == "odd_connects":
        # refused connect (blocking) and a non-blocking connect that completes later
        r = socket.socket()
        try:
            r.connect(("127.0.0.1", 1))
        except ConnectionRefusedError:
            pass
        out["refused_fd"] = r.fileno()
        ls = socket.socket()
        ls.bind(("127.0.0.1", 0))
        ls.listen()
        n = socket.socket()
        n.setblocking(False)
        try:
            n.connect(ls.getsockname())
        except BlockingIOError:
            pass
        time.sleep(0.05)
        out.update(nb_fd=n.fileno(), nb=list(n.getsockname()), nb_port=ls.getsockname()[1])
        # accept(fd, NULL, NULL): the kernel gives no peer; user space resolves it from /proc
        c = socket.socket()
        c.connect(ls.getsockname())
        libc = ctypes.CDLL(None, use_errno=True)
        libc.accept.argtypes = [ctypes.c_int, ctypes.c_void_p, ctypes.c_void_p]
        fds = [libc.accept(ls.fileno(), None, None) for _ in range(2)]
        out.update(null_accept_fds=fds, c=list(c.getsockname()))
        time.sleep(0.3)  # keep the sockets open while the probe resolves the peers
    if scenario == "backlog":
        # listen(0): the second and third SYN are dropped until the first connection is accepted, so their
        # non-blocking connect() returns -EINPROGRESS long before the handshake ends (SYN retransmit, ~1 s)
        import select

        ls = socket.socket()
        ls.bind(("127.0.0.1", 0))
        ls.listen(0)
        socks = []
        for _ in range(3):
            c = socket.socket()
            c.setblocking(False)
            out.setdefault("rets", []).append(-c.connect_ex(ls.getsockname()))
            socks.append(c)
        time.sleep(0.05)
        ls.accept()
        for c in socks:
            select.select([], [c], [], 3)
        out.update(port=ls.getsockname()[1], fds=[c.fileno() for c in socks],
                   sports=[c.getsockname()[1] for c in socks],
                   errs=[c.getsockopt(socket.SOL_SOCKET, socket.SO_ERROR) for c in socks])
    print(json.dumps(out), flush=True)


if __name__ == "__main__":
    main()
