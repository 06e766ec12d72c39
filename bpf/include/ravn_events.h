/* SPDX-License-Identifier: Apache-2.0
 *
 * ravn_events.h: THE single definition of every kernel -> user space record RAVN's probes emit.
 *
 * Included by every probe's .bpf.c (through ravn_common.bpf.h) and, by the ABI tests, by a plain C program
 * compiled with gcc (define RAVN_USERSPACE_ABI first; it supplies the u8..u64 typedefs).
 *
 * Rules:
 *  - every event struct starts with `struct ravn_hdr hdr` (filled by ravn_fill_hdr()), then the probe's fields;
 *  - hdr.type is one of enum ravn_event_type; the ids are mirrored in ravn_core/bpf/abi.py (EVENT_TYPE_IDS) and the
 *    ABI test compares both against EVENT_TYPES in ravn_core/events.py;
 *  - every struct gets a _Static_assert on its size, and a ctypes mirror (ravn_core.bpf.abi.RavnHdr, the probe's
 *    decode.py) that the ABI test checks field by field (offsets and sizes) against this file;
 *  - lay fields out naturally aligned, largest first after the header, and pad explicitly (no implicit holes).
 */
#ifndef RAVN_EVENTS_H
#define RAVN_EVENTS_H

#ifdef RAVN_USERSPACE_ABI
#include <stdint.h>
typedef uint8_t u8;
typedef uint16_t u16;
typedef uint32_t u32;
typedef uint64_t u64;
typedef int16_t s16;
typedef int32_t s32;
typedef int64_t s64;
#endif

#define RAVN_COMM_LEN 16

/* One id per entry of ravn_core/events.py EVENT_TYPES (same order). Never renumber: recorded files keep them. */
enum ravn_event_type {
	RAVN_EVT_SYSCALL = 1,
	RAVN_EVT_SYSCALL_SUMMARY = 2,
	RAVN_EVT_CONNECT = 3,
	RAVN_EVT_ACCEPT = 4,
	RAVN_EVT_CLOSE = 5,
	RAVN_EVT_UDP_SEND = 6,
	RAVN_EVT_BIND = 7,
	RAVN_EVT_LISTEN = 8,
	RAVN_EVT_EXEC = 9,
	RAVN_EVT_FORK = 10,
	RAVN_EVT_EXIT = 11,
	RAVN_EVT_CRED = 12,
	RAVN_EVT_PTRACE = 13,
	RAVN_EVT_MODULE = 14,
	RAVN_EVT_CAPABLE = 15,
	RAVN_EVT_MEMFD_CREATE = 16,
	RAVN_EVT_BPF = 17,
	RAVN_EVT_MOUNT = 18,
	RAVN_EVT_UNSHARE = 19,
	RAVN_EVT_SETNS = 20,
	RAVN_EVT_DUP = 21,
	RAVN_EVT_OPEN = 22,
	RAVN_EVT_UNLINK = 23,
	RAVN_EVT_RENAME = 24,
	RAVN_EVT_CHMOD = 25,
	RAVN_EVT_CHOWN = 26,
	RAVN_EVT_LINK = 27,
	RAVN_EVT_SYMLINK = 28,
	RAVN_EVT_TRUNCATE = 29,
	RAVN_EVT_SETSID = 30, /* ebpf_security, struct ravn_sec_event */
	RAVN_EVT_PROCESS_VM = 31, /* ebpf_security, struct ravn_sec_event */
	RAVN_EVT_PRCTL = 32, /* ebpf_security, struct ravn_sec_event */
	RAVN_EVT_SOCKET = 33, /* ebpf_security, struct ravn_sec_event */
	RAVN_EVT_CHATTR = 34, /* ebpf_file, struct ravn_file_event: FS_IOC_SETFLAGS / FS_IOC_FSSETXATTR ioctl */
	RAVN_EVT_MAX = 35, /* one past the last id */
};

/* Common header, first member of every event struct. 56 bytes. */
struct ravn_hdr {
	u64 ts_ns;        /* bpf_ktime_get_ns(): CLOCK_MONOTONIC; user space adds the boot->epoch offset */
	u32 pid;          /* tgid */
	u32 tid;          /* kernel pid of the thread */
	u32 ppid;         /* parent tgid from the fork-tracked ravn_ppid map, 0 when unknown */
	u32 uid;          /* real uid (bpf_get_current_uid_gid) */
	u32 gid;          /* real gid */
	u32 type;         /* enum ravn_event_type */
	u64 cgroup_id;    /* bpf_get_current_cgroup_id(): cgroup v2 id == inode of its /sys/fs/cgroup directory */
	char comm[RAVN_COMM_LEN];
};
_Static_assert(sizeof(struct ravn_hdr) == 56, "struct ravn_hdr changed: update RavnHdr in ravn_core/bpf/abi.py");

/* ==================================================================================== syscall tracepoints */
/* What a program attached to a syscall tracepoint gets (input to every probe, not a record it emits: no ctypes
 * mirror). From the format files of syscalls:sys_enter_<name> / sys_exit_<name> and raw_syscalls:sys_enter /
 * sys_exit: 8 bytes of common fields, the syscall number (int __syscall_nr; raw_syscalls: long id, whose low 32
 * bits read as this int on little-endian x86_64) padded to 8 - the 4 bytes after it are NOT zeroed - then the
 * arguments, each in an 8-byte slot (enter), or the return value (exit). tests/kernel/test_tracepoint_abi.py
 * checks these offsets against tracefs. */
struct ravn_sys_enter {
	u64 __common;
	s32 nr;
	s32 __pad;
	u64 a[6];         /* arguments; the slots past the syscall's own are not meaningful */
};
_Static_assert(__builtin_offsetof(struct ravn_sys_enter, nr) == 8, "syscall number at 8 in the format files");
_Static_assert(__builtin_offsetof(struct ravn_sys_enter, a) == 16, "arguments from 16 in the format files");

struct ravn_sys_exit {
	u64 __common;
	s32 nr;
	s32 __pad;
	s64 ret;
};
_Static_assert(__builtin_offsetof(struct ravn_sys_exit, ret) == 16, "return value at 16 in the format files");

/* =========================================================================================== ebpf_syscall */

#define RAVN_SC_MAX 512 /* syscall numbers tracked: x86_64 common/64 numbers are all below 512 */
#define RAVN_SC_SEQ 64  /* summary mode: recent-sequence window (power of two) */

/* events mode: one per syscall (RAVN_EVT_SYSCALL). */
struct ravn_syscall_event {
	struct ravn_hdr hdr;
	s64 ret;          /* return value when has_ret, else 0 */
	u32 nr;           /* syscall number */
	u32 has_ret;      /* 1 when emitted at sys_exit with the return value */
};
_Static_assert(sizeof(struct ravn_syscall_event) == 72, "update SyscallEvent in ravn_ebpf_syscall/decode.py");

#define RAVN_SC_DISTINCT 32 /* summary mode: distinct syscall numbers a process's final record carries */

/* summary mode: value of the per-process ravn_sc_summary map (read by user space, not sent through the ring). */
struct ravn_syscall_summary {
	struct ravn_hdr hdr;          /* refreshed on every counted syscall (ts = last seen) */
	u64 total;                    /* syscalls counted since the entry was created */
	u64 ndistinct;                /* slots of `distinct` claimed (may exceed RAVN_SC_DISTINCT: then not all kept);
	                               * u64: BCC's BPF target can use the old value of a 64-bit atomic add only */
	u32 seq_pos;                  /* number of entries ever written to seq (next slot = seq_pos % RAVN_SC_SEQ) */
	u32 exited;                   /* set by sched_process_exit (group dead) when the kernel could not send the
	                               * final record (ring full, > RAVN_SC_DISTINCT distinct syscalls): user space
	                               * flushes the entry, then deletes it */
	u16 seq[RAVN_SC_SEQ];         /* ring of the most recent syscall numbers */
	u16 distinct[RAVN_SC_DISTINCT]; /* syscall numbers in the order first counted (two threads using one for the
	                                 * first time at once may both list it) */
	u32 counts[RAVN_SC_MAX];      /* per syscall number, since the entry was created */
};
_Static_assert(sizeof(struct ravn_syscall_summary) == 2320, "update SyscallSummary in ravn_ebpf_syscall/decode.py");

/* summary mode: RAVN_EVT_SYSCALL_SUMMARY in the ring, sent by sched_process_exit when a process's last thread
 * exits: its ravn_sc_summary entry in one record (counts only of the syscalls it used), and the entry deleted. */
struct ravn_syscall_final {
	struct ravn_hdr hdr;          /* the entry's header (its last counted syscall) */
	u64 total;                    /* as in ravn_syscall_summary */
	u32 seq_pos;
	u32 ndistinct;                /* valid entries of nrs/counts (<= RAVN_SC_DISTINCT) */
	u16 seq[RAVN_SC_SEQ];
	u16 nrs[RAVN_SC_DISTINCT];    /* syscall numbers (a number may appear twice, with the same count) */
	u32 counts[RAVN_SC_DISTINCT]; /* counts[i]: syscalls nrs[i] counted since the entry was created */
};
_Static_assert(sizeof(struct ravn_syscall_final) == 392, "update SyscallFinal in ravn_ebpf_syscall/decode.py");

/* ========================================================================================== ebpf_security */
/* Owned by the ebpf_security probe (bpf/security.bpf.c, plugins/ebpf_security/src/ravn_ebpf_security/decode.py). */

#define RAVN_SEC_PATH_LEN 256 /* exec filename, mount target */
#define RAVN_SEC_ARGC 16      /* exec argv entries captured */
#define RAVN_SEC_ARG_LEN 128  /* bytes per argv entry, NUL included */
#define RAVN_SEC_STR_LEN 128  /* memfd name, module name, mount source */
#define RAVN_SEC_FSTYPE_LEN 32

/* ravn_exec_event.flags */
#define RAVN_EXEC_FD 0x1         /* executed through an fd: execveat(AT_EMPTY_PATH), /proc/<pid>/fd/N, /dev/fd/N */
#define RAVN_EXEC_MEMFD 0x2      /* ... and that fd is a memfd (fileless execution) */
#define RAVN_EXEC_ARGV_TRUNC 0x4 /* more than RAVN_SEC_ARGC arguments, one cut at RAVN_SEC_ARG_LEN - 1 bytes, or
                                  * one that could not be read */
#define RAVN_EXEC_NO_ARGS 0x8    /* the sys_enter was not seen (probe attached mid-exec): argv is empty */
#define RAVN_EXEC_LD_ENV 0x10    /* the environment sets LD_PRELOAD, LD_LIBRARY_PATH or LD_AUDIT: env[] holds them
                                  * and the record is sent whole */
#define RAVN_EXEC_CWD 0x20       /* filename was relative: the kernel joined it with the process's cwd (sec_cwds) */
#define RAVN_EXEC_EXE 0x40       /* exe holds the path of the executed file, walked in the kernel */
#define RAVN_SEC_ENVC 3          /* loader variables captured from the environment */

/* RAVN_EVT_EXEC: emitted at sched_process_exec (success; header taken after the exec: new comm, uid) or at
 * sys_exit_execve/execveat (failure; header of the caller). */
struct ravn_exec_event {
	struct ravn_hdr hdr;
	s32 ret;          /* 0, or -errno */
	u32 flags;        /* RAVN_EXEC_* */
	u32 argc;         /* argv entries filled */
	s32 fd;           /* execveat dirfd or the N of /proc/.../fd/N; -1 */
	char filename[RAVN_SEC_PATH_LEN];   /* success: the kernel's bprm filename; failure: the path passed */
	char exe[RAVN_SEC_PATH_LEN];        /* with RAVN_EXEC_EXE: the executed file's path (symlinks resolved) */
	char argv[RAVN_SEC_ARGC][RAVN_SEC_ARG_LEN];
	u32 envc;         /* env entries filled (only with RAVN_EXEC_LD_ENV; records without it stop before here) */
	u32 __pad;
	char env[RAVN_SEC_ENVC][RAVN_SEC_ARG_LEN]; /* "LD_PRELOAD=...", as found, cut at RAVN_SEC_ARG_LEN - 1 bytes */
};
_Static_assert(sizeof(struct ravn_exec_event) == 3024, "update ExecEvent in ravn_ebpf_security/decode.py");

/* Every other security event: fork, exit, cred, ptrace, module, capable, memfd_create, bpf, unshare, setns, dup.
 * `nr` is the x86_64 syscall number that produced it (0 for fork/exit/capable); args/ret per event type:
 *   fork     args[0] child tgid, args[1] child tid
 *   exit     args[0] wait status (-1 unknown)
 *   cred     args[0..2] the id arguments; capset: args[0] target pid, [1] effective, [2] permitted, [3] inheritable
 *   ptrace   args[0] request, args[1] pid, args[2] addr, args[3] data
 *   module   args[0] fd (finit_module) or -1; str: module name (delete_module)
 *   capable  args[0] capability, ret: 0 granted / -errno denied
 *   memfd    args[0] flags, str: name, ret: fd or -errno
 *   bpf      args[0] cmd
 *   unshare  args[0] flags;  setns args[0] fd, args[1] nstype;  dup args[0] oldfd, args[1] newfd, args[2] flags
 *   setsid   ret: the new session id (> 0; failures are not sent)
 *   process_vm  args[0] target pid, args[1] local iovec count, args[2] remote iovec count, ret: bytes or -errno
 *   prctl    args[0] option (PR_SET_NAME 15, PR_SET_MM 35), args[1] PR_SET_MM sub-option; str: the new name
 *   socket   args[0] family, args[1] type (with its SOCK_* flags), args[2] protocol, ret: fd or -errno */
struct ravn_sec_event {
	struct ravn_hdr hdr;
	s64 args[6];
	s64 ret;          /* syscall result (0 when the event has none) */
	u32 nr;           /* syscall number, 0 when not from a syscall */
	u32 nargs;        /* args[] entries meaningful */
	char str[RAVN_SEC_STR_LEN];
};
_Static_assert(sizeof(struct ravn_sec_event) == 248, "update SecEvent in ravn_ebpf_security/decode.py");

/* RAVN_EVT_MOUNT */
struct ravn_mount_event {
	struct ravn_hdr hdr;
	s64 ret;
	u64 flags;
	char source[RAVN_SEC_STR_LEN];
	char target[RAVN_SEC_PATH_LEN];
	char fstype[RAVN_SEC_FSTYPE_LEN];
};
_Static_assert(sizeof(struct ravn_mount_event) == 488, "update MountEvent in ravn_ebpf_security/decode.py");

/* ======================================================================================= end ebpf_security */

/* =========================================================================================== ebpf_network */
/* One record for every network event type (connect, accept, close, udp_send, bind, listen). saddr/sport are
 * always the LOCAL side, daddr/dport the REMOTE side; IPv4 addresses use the first 4 bytes of the 16. */
#define RAVN_NET_F_PEER_UNKNOWN 1 /* accept without a peer buffer: user space resolves the peer from /proc */
#define RAVN_NET_F_NO_LOCAL 2     /* connect: the local address/port is not known (UDP, early failure) */
struct ravn_net_event {
	struct ravn_hdr hdr;
	u8 saddr[16];     /* local address (network byte order) */
	u8 daddr[16];     /* remote address */
	s32 ret;          /* connect/bind result (0 or -errno); 0 for the others */
	s32 fd;           /* connect/bind/listen: the socket fd; accept: the new fd; -1 when unknown */
	u16 sport;        /* local port, host byte order */
	u16 dport;        /* remote port, host byte order */
	u16 family;       /* AF_INET 2 / AF_INET6 10 */
	u16 proto;        /* IPPROTO_TCP 6 / IPPROTO_UDP 17 / 0 unknown */
	u32 backlog;      /* listen backlog */
	u32 flags;        /* RAVN_NET_F_* */
};
_Static_assert(sizeof(struct ravn_net_event) == 112, "update NetEvent in ravn_ebpf_network/decode.py");

/* ======================================================================================== end ebpf_network */

/* ============================================================================================== ebpf_file */
/* One record for every file event type (open, unlink, rename, chmod, chown, link, symlink, truncate). */
#define RAVN_FILE_PATH_MAX 256
#define RAVN_FILE_F_MATCHED 0x01     /* a watched prefix matched in the kernel */
#define RAVN_FILE_F_RELATIVE 0x02    /* path is relative to dirfd: user space resolves it and applies the prefixes */
#define RAVN_FILE_F_NEWRELATIVE 0x04 /* newpath is relative to newdirfd */
#define RAVN_FILE_F_SETID 0x08       /* reported because a chmod sets setuid/setgid */
#define RAVN_FILE_F_ALL 0x10         /* reported because this event type is reported for every path */
#define RAVN_FILE_F_FD 0x20          /* no path: the file is dirfd (fchmod); user space reads /proc/<pid>/fd */
#define RAVN_FILE_F_TRUNCATED 0x40   /* a path was longer than RAVN_FILE_PATH_MAX - 1 bytes and is cut */
#define RAVN_FILE_F_NORMALIZE 0x80   /* path is absolute with "//", "." or ".." components: user space normalises it
                                      * and applies the prefixes */
#define RAVN_FILE_F_NEWNORMALIZE 0x100 /* the same for newpath */
#define RAVN_FILE_F_PERM 0x200       /* reported because a chmod grants write to others (chmod 777, o+w) */
#define RAVN_FILE_F_CWD 0x400        /* relative one-path event: newpath holds the cwd the kernel last saw the process enter
                                        (an absolute chdir, inherited at fork), for a process gone before decoding */
struct ravn_file_event {
	struct ravn_hdr hdr;
	s64 ret;          /* syscall result: fd or -errno for open, 0 or -errno otherwise */
	s64 size;         /* truncate: new length */
	u32 flags;        /* open: O_* flags; unlinkat/linkat/fchownat/fchmodat2: AT_* flags; renameat2: RENAME_*;
	                   * chattr: the ioctl command */
	u32 mode;         /* open: creation mode; chmod: new mode; chattr: the attribute word passed (FS_*_FL, or
	                   * fsxattr.fsx_xflags for FS_IOC_FSSETXATTR) */
	u32 uid;          /* chown: new owner (0xffffffff unchanged) */
	u32 gid;          /* chown: new group */
	s32 dirfd;        /* directory fd path is relative to (AT_FDCWD -100), or the fd of fchmod */
	s32 newdirfd;     /* same for newpath */
	u32 why;          /* RAVN_FILE_F_* */
	u32 __pad;
	char path[RAVN_FILE_PATH_MAX];    /* as passed (NUL-terminated) */
	char newpath[RAVN_FILE_PATH_MAX]; /* rename/link: the new name; symlink: the link's path */
};
_Static_assert(sizeof(struct ravn_file_event) == 616, "update FileEvent in ravn_ebpf_file/decode.py");
/* events without a newpath are sent without it: the record is the struct up to newpath */
#define RAVN_FILE_SHORT_SIZE 360
_Static_assert(__builtin_offsetof(struct ravn_file_event, newpath) == RAVN_FILE_SHORT_SIZE, "short record");

/* =========================================================================================== end ebpf_file */

#endif /* RAVN_EVENTS_H */
