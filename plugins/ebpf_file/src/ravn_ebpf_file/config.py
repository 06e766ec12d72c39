"""Config of the ebpf_file source and the path rules it compiles for the kernel (and for user space).

Prefix semantics (the same in the kernel's LPM trie and in :class:`PathRules`):

- a prefix is raw bytes: ``/etc/sudoers`` matches ``/etc/sudoers`` and ``/etc/sudoers.d/x``; end a directory with
  ``/`` to leave its siblings out (``/etc/pam.d/`` does not match ``/etc/pam.d.bak``);
- one whole path component may be ``*``: ``/home/*/.ssh/`` matches ``/home/alice/.ssh/id_rsa``. The part before
  the ``*`` is a *root* (at most 30 bytes, at most 4 distinct roots);
- the most specific (longest) matching prefix decides, so an exclude can carve a hole in a watched directory;
- suffixes (``read_suffixes``, ``write_suffixes``; at most 8, each at most 16 bytes) apply to an absolute path that
  no prefix (or only an exec-grant prefix) matches: ``/environ`` catches ``/proc/<pid>/environ`` and
  ``/proc/<pid>/task/<tid>/environ`` (a second wildcard the prefixes cannot hold), ``.pth`` a Python start-up hook
  in any site-packages directory (a venv's under /tmp too);
- classes: ``read_prefixes`` report every open (and every change), ``write_prefixes`` report opens with write
  intent (O_WRONLY, O_RDWR, O_CREAT, O_TRUNC) and every change, ``exclude_prefixes`` report nothing (except a
  setuid/setgid chmod, which is always reported).

Why these defaults: reads are reported only where a read alone is the signal (credentials, private keys, shell
history, another process's memory), because reads under /etc, /usr/lib and /lib happen on every exec (the dynamic
loader opens /etc/ld.so.cache and the libraries). Writes are reported under the wider set of places attackers persist or
tamper with: all of /etc (passwd, group, pam.d, cron, systemd units, ld.so.preload), binaries and libraries, boot,
cron spools, the start-up files of every common shell in root's and users' homes, logs (clearing), the kernel
knobs used for escapes (core_pattern, modprobe, cgroup v1 release_agent), and /proc/<pid>/comm (a process renaming
itself, or another).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Final, Literal

from pydantic import Field, field_validator, model_validator

from ravn_core.bpf.config import BccProbeConfig

PATH_MAX: Final = 256  # RAVN_FILE_PATH_MAX
WILD_LEN: Final = 32  # RAVN_FILE_WILD_LEN: a root is at most WILD_LEN - 2 bytes
MAX_WILD: Final = 4  # RAVN_FILE_MAX_WILD
COMP_MAX: Final = 64  # RAVN_FILE_COMP_MAX: the component matched by '*' is at most 63 bytes
NAME_LEN: Final = 32  # RAVN_FILE_NAME_LEN
SUFFIX_LEN: Final = 16  # a suffix is at most 16 bytes (the kernel compares the path's last 16)
MAX_SUFFIX: Final = 8  # RAVN_FILE_MAX_SUFFIX
CLASS_READ: Final = 1
CLASS_WRITE: Final = 2
CLASS_EXCLUDE: Final = 4
CLASS_EXEC_GRANT: Final = 8  # a chmod that leaves an execute bit set is reported (alone: nothing else is)
#: temp directories: a file made executable there (curl -o /tmp/x; chmod +x /tmp/x; /tmp/x) is a dropper's step
DEFAULT_EXEC_GRANT: Final[tuple[str, ...]] = ("/tmp/", "/var/tmp/", "/dev/shm/", "/run/shm/")

FileEventType = Literal["open", "unlink", "rename", "chmod", "chown", "link", "symlink", "truncate"]

DEFAULT_READ: Final[tuple[str, ...]] = (
    "/etc/shadow", "/etc/gshadow", "/etc/sudoers", "/etc/security/opasswd", "/etc/ssh/ssh_host_",
    "/root/.ssh/", "/home/*/.ssh/", "/root/.gnupg/", "/home/*/.gnupg/", "/root/.aws/", "/home/*/.aws/",
    "/root/.kube/", "/home/*/.kube/",
    "/root/.bash_history", "/home/*/.bash_history", "/root/.zsh_history", "/home/*/.zsh_history",
    "/root/.python_history", "/home/*/.python_history",
    "/proc/*/mem",
)
#: names of files inside watched directories whose relative read opens (`cd ~/.ssh; cat id_rsa`) are resolved
DEFAULT_RELATIVE_NAMES: Final[tuple[str, ...]] = (
    "id_rsa", "id_dsa", "id_ecdsa", "id_ed25519", "id_ecdsa_sk", "id_ed25519_sk", "authorized_keys",
    "ssh_host_rsa_key", "ssh_host_ecdsa_key", "ssh_host_ed25519_key", "ssh_host_dsa_key", "credentials", "mem",
    "environ",
)
#: read wherever they are: another process's memory or environment, also through /proc/<pid>/task/<tid>/
DEFAULT_READ_SUFFIXES: Final[tuple[str, ...]] = ("/mem", "/environ")
#: written wherever they are: Python start-up hooks, which any site-packages directory (a venv's, ~/.local's)
#: runs at interpreter start
DEFAULT_WRITE_SUFFIXES: Final[tuple[str, ...]] = (".pth", "usercustomize.py", "sitecustomize.py")
#: start-up files shells read from a home directory (bash, sh/dash/ksh via $ENV, zsh, csh/tcsh, fish): a line
#: appended to one runs at every login or new shell of that user
SHELL_STARTUP_FILES: Final[tuple[str, ...]] = (
    ".bashrc", ".bash_profile", ".bash_login", ".bash_logout", ".bash_aliases", ".profile", ".shrc", ".kshrc",
    ".mkshrc", ".zshrc", ".zprofile", ".zshenv", ".zlogin", ".zlogout", ".cshrc", ".tcshrc", ".login",
    ".config/fish/",
)
DEFAULT_WRITE: Final[tuple[str, ...]] = (
    "/etc/",
    "/bin/", "/sbin/", "/usr/bin/", "/usr/sbin/", "/usr/local/bin/", "/usr/local/sbin/",
    "/lib/", "/lib64/", "/usr/lib/", "/usr/lib64/", "/usr/local/lib/", "/boot/",
    "/var/spool/cron/", "/var/log/",
    *(f"{home}{name}" for home in ("/root/", "/home/*/") for name in SHELL_STARTUP_FILES),
    "/root/.config/autostart/", "/home/*/.config/autostart/", "/home/*/.config/systemd/", "/root/.config/systemd/",
    "/proc/sys/kernel/core_pattern", "/proc/sys/kernel/modprobe", "/proc/sysrq-trigger",
    "/sys/fs/cgroup/*/release_agent",
    "/proc/self/comm", "/proc/thread-self/comm", "/proc/*/comm",
)


def _check_suffix(p: str) -> str:
    raw = p.encode()
    if not 0 < len(raw) <= SUFFIX_LEN:
        raise ValueError(f"suffix {p!r} must be 1 to {SUFFIX_LEN} bytes")
    if "\0" in p or "*" in p:
        raise ValueError(f"suffix {p!r} contains NUL or '*'")
    return p


def _default_report_all() -> list[FileEventType]:
    return ["rename"]


def _check_prefix(p: str) -> str:
    raw = p.encode()
    if not p.startswith("/"):
        raise ValueError(f"prefix {p!r} must be absolute")
    if len(raw) >= PATH_MAX:
        raise ValueError(f"prefix {p!r} is longer than {PATH_MAX - 1} bytes")
    if "\0" in p:
        raise ValueError(f"prefix {p!r} contains NUL")
    if p.count("*") > 1:
        raise ValueError(f"prefix {p!r}: at most one '*'")
    if "*" in p:
        root, _, rest = p.partition("*")
        if not root.endswith("/") or not (rest == "" or rest.startswith("/")):
            raise ValueError(f"prefix {p!r}: '*' must be a whole path component ('/home/*/.ssh/')")
        if len(root.encode()) > WILD_LEN - 2:
            raise ValueError(f"prefix {p!r}: the part before '*' must be at most {WILD_LEN - 2} bytes")
    return p


class FileConfig(BccProbeConfig):
    """Config of the ebpf_file source (YAML: ``sources: [{plugin: ebpf_file, ...}]``); see the module doc."""

    read_prefixes: list[str] = Field(
        default_factory=lambda: list(DEFAULT_READ),
        description="every open (read or write) and every change under these is reported: keep it to places "
                    "where a read alone matters (credentials, keys, history)")
    write_prefixes: list[str] = Field(
        default_factory=lambda: list(DEFAULT_WRITE),
        description="opens with write intent and every change (unlink, rename, chmod, ...) under these are "
                    "reported; reads are not (the loader reads /etc and /usr/lib on every exec)")
    exec_grant_prefixes: list[str] = Field(
        default_factory=lambda: list(DEFAULT_EXEC_GRANT),
        description="chmods that leave an execute bit set (chmod +x, 755) of files under these are reported, "
                    "nothing else is but the write_suffixes/read_suffixes (a dropper makes its download "
                    "executable; chmods are rare, so it is cheap)")
    exclude_prefixes: list[str] = Field(
        default_factory=list,
        description="nothing under these is reported when it is the most specific match (setuid chmods still are)")
    read_suffixes: list[str] = Field(
        default_factory=lambda: list(DEFAULT_READ_SUFFIXES),
        description="every open of an absolute path that ends with one of these and matches no prefix is reported "
                    "(an exec-grant prefix does not count; at most 16 bytes each; '/environ' covers "
                    "/proc/<pid>/task/<tid>/environ too)")
    write_suffixes: list[str] = Field(
        default_factory=lambda: list(DEFAULT_WRITE_SUFFIXES),
        description="opens with write intent and changes of an absolute path that ends with one of these and "
                    "matches no prefix (an exec-grant prefix does not count) are reported ('.pth': Python start-up "
                    "hooks in any site-packages, a venv's under /tmp too)")
    report_all: list[FileEventType] = Field(
        default_factory=lambda: _default_report_all(),
        description="event types reported for every path, watched or not: by default renames, so a mass-rename "
                    "(ransomware) rule sees them all; a rename costs far more than its event")
    relative_paths: bool = Field(
        True, description="send relative-path writes and changes (and reads whose path is a read prefix's last "
                          "component, e.g. 'shadow') to user space, which resolves them against the cwd the kernel "
                          "kept for the process (its last absolute chdir) or /proc/<pid>/cwd and applies the "
                          "prefixes")
    relative_names: list[str] = Field(
        default_factory=lambda: list(DEFAULT_RELATIVE_NAMES),
        description="file names whose relative read opens are resolved too (besides the last component of each "
                    "read prefix, file or directory): `cd ~/.ssh; cat id_rsa`")
    report_world_writable: bool = Field(
        True, description="report every chmod/fchmod that grants write to others (chmod 777, a+rwx, o+w), "
                          "wherever the file is; sticky directories (1777) excepted")
    report_chattr: bool = Field(
        True, description="report file attribute changes (FS_IOC_SETFLAGS / FS_IOC_FSSETXATTR ioctls: chattr +i, "
                          "+a) on any file; every other ioctl is dropped in the kernel after one compare")
    normalize_paths: bool = Field(
        True, description="send absolute paths with '//', '.' or '..' components (/etc//shadow, /tmp/../etc/"
                          "shadow) to user space, which normalises them and applies the prefixes; without it "
                          "such a path is matched as passed and slips past them")
    ring_buffer_kb: int = Field(4096, description="BPF ring buffer size in KiB (power of two, at least 4); "
                                                  "file records are 360 or 616 bytes, so larger than the default")
    max_rules: int = Field(1024, ge=16, description="capacity of the kernel prefix trie")
    max_inflight: int = Field(8192, ge=64, description="traced file syscalls in flight at once (enter to exit)")

    @field_validator("read_prefixes", "write_prefixes", "exec_grant_prefixes", "exclude_prefixes")
    @classmethod
    def _prefixes(cls, v: list[str]) -> list[str]:
        return [_check_prefix(p) for p in v]

    @field_validator("read_suffixes", "write_suffixes")
    @classmethod
    def _suffixes(cls, v: list[str]) -> list[str]:
        return [_check_suffix(p) for p in v]

    @model_validator(mode="after")
    def _capacity(self) -> FileConfig:
        rules = PathRules.from_config(self)
        if len(rules.roots) > MAX_WILD:
            raise ValueError(f"at most {MAX_WILD} distinct roots before '*' (got {', '.join(rules.roots)})")
        if len(rules.suffixes) > MAX_SUFFIX:
            raise ValueError(f"at most {MAX_SUFFIX} read_suffixes and write_suffixes together "
                             f"(got {len(rules.suffixes)})")
        if len(rules.classes) > self.max_rules:
            raise ValueError(f"{len(rules.classes)} prefixes exceed max_rules={self.max_rules}")
        return self


@dataclass(frozen=True)
class PathRules:
    """The compiled prefixes: ``classes`` prefix -> CLASS_*, wildcard ``roots``, read-prefix ``names``, and
    ``suffixes`` suffix -> CLASS_* (for paths no prefix matches)."""

    classes: dict[str, int]
    roots: tuple[str, ...]
    names: tuple[str, ...]
    suffixes: dict[str, int] = field(default_factory=dict)

    @classmethod
    def from_config(cls, cfg: FileConfig) -> PathRules:
        classes: dict[str, int] = {}
        for p in cfg.exec_grant_prefixes:
            classes[p] = CLASS_EXEC_GRANT
        for p in cfg.write_prefixes:
            classes[p] = CLASS_WRITE
        for p in cfg.read_prefixes:
            classes[p] = CLASS_READ  # read implies write
        for p in cfg.exclude_prefixes:
            classes[p] = CLASS_EXCLUDE
        roots = tuple(dict.fromkeys(p.partition("*")[0] for p in classes if "*" in p))
        # the last component of each read prefix (file or directory: "shadow", ".ssh") and the relative_names
        last = (p.rstrip("/").rsplit("/", 1)[1] for p in cfg.read_prefixes)
        names = tuple(dict.fromkeys(
            name for name in (*last, *cfg.relative_names)
            if "*" not in name and "/" not in name and 0 < len(name.encode()) < NAME_LEN))
        suffixes = {p: CLASS_WRITE for p in cfg.write_suffixes}
        suffixes.update({p: CLASS_READ for p in cfg.read_suffixes})
        return cls(classes, roots, names, suffixes)

    def classify(self, path: str) -> int:
        """CLASS_* of the most specific prefix matching ``path`` (0: none), exactly as the kernel does."""
        best, klass = 0, 0
        candidates = [path]
        for root in self.roots:
            if path.startswith(root):
                end = path.find("/", len(root) + 1)
                if 0 < end < len(root) + COMP_MAX:
                    candidates.append(root + "*" + path[end:])
        for cand in candidates:
            for prefix, c in self.classes.items():
                n = len(prefix)
                if n > best and cand.startswith(prefix):
                    best, klass = n, c
        if not klass & ~CLASS_EXEC_GRANT and path.startswith("/"):  # an exec-grant prefix does not hide them
            for suffix, c in self.suffixes.items():  # the first in order, as the kernel's array
                if path.endswith(suffix):
                    return klass | c
        return klass

    def wanted(self, event_type: str, path: str, newpath: str | None, write: bool, report_all: bool,
               mode: int = 0) -> bool:
        """Whether an event with these (absolute) paths passes the prefixes, as in file.bpf.c (``mode``: a
        chmod's)."""
        c1 = self.classify(path)
        if event_type == "chmod" and c1 & CLASS_EXEC_GRANT and mode & 0o111:
            return True
        if event_type == "open":
            if c1 & CLASS_EXCLUDE:
                return False
            return bool(c1 & CLASS_READ or (c1 & CLASS_WRITE and write) or report_all)
        c2 = self.classify(newpath) if newpath else 0
        if c1 & CLASS_EXCLUDE and (c2 == 0 or c2 & CLASS_EXCLUDE):
            return False
        return bool((c1 | c2) & (CLASS_READ | CLASS_WRITE) or report_all)
