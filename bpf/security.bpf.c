/* SPDX-License-Identifier: Apache-2.0
 *
 * security.bpf.c: the ebpf_security probe. Process lifecycle and privilege-relevant syscalls.
 * Loaded by plugins/ebpf_security (ravn_ebpf_security.source.SecuritySource) through ravn_core.bpf.probe.BccProbe,
 * which attaches the programs below only to the tracepoints of the families the config enables. One program
 * serves many tracepoints: ravn_sec_sys_enter / ravn_sec_sys_exit dispatch on the syscall number.
 *
 * What it traces:
 *   exec     syscalls:sys_enter_execve/execveat store filename and argv (RAVN_SEC_ARGC x RAVN_SEC_ARG_LEN bytes)
 *            per thread; sched:sched_process_exec emits successes (after the exec: new comm, new uid of a setuid
 *            binary, the kernel's filename); sys_exit_execve/execveat emit failures with -errno (ENOENT ones
 *            dropped with exec_enoent: false). Records are cut after the last argv slot in use.
 *            exec.ld_*: the first SEC_ENV_SCAN entries of envp are scanned at sys_enter for LD_PRELOAD=,
 *            LD_LIBRARY_PATH= and LD_AUDIT= (one 16-byte user read per entry, two word compares); up to
 *            RAVN_SEC_ENVC of them are kept, and only then is the record sent whole (RAVN_EXEC_LD_ENV).
 *            exec.memfd: the exec went through an fd - execveat(fd, "", AT_EMPTY_PATH), which the kernel names
 *            "/dev/fd/N" (verified: sched_process_exec does NOT show "/memfd:x (deleted)"), or a /proc/<pid>/fd/N
 *            or /dev/fd/N path - and that fd came from memfd_create (a per-process bitmap of fds 0..127 set at
 *            sys_exit_memfd_create and copied to new processes), or, for AT_EMPTY_PATH, the comm after the exec
 *            starts with "memfd:" (since Linux 6.14 such an exec takes its comm from the file's dentry name).
 *            exec.exe: the executed file's path as /proc/<pid>/exe names it (symlinks resolved, " (deleted)"), walked
 *            at sched_process_exec from task->mm->exe_file up its dentries and mounts (sec_exe; RAVN_EXEC_EXE)
 *            with struct offsets the loader read from the running kernel's BTF (SEC_EXE_BTF).
 *   fork     task:task_newtask (in the ravn_on_newtask program the base attaches): new thread groups only;
 *            CLONE_THREAD children are threads and are not reported. proc.* is the creator.
 *   exit     sched:sched_process_exit (ravn_on_exit), only when group_dead. The tracepoint carries no exit code:
 *            it is assembled from sys_enter_exit_group / sys_enter_exit ((code & 0xff) << 8, as wait() shows it)
 *            and signal:signal_deliver of a signal whose default action terminates (status = signal number;
 *            signal:signal_generate supplies the real number of a fatal signal the kernel turned into SIGKILL).
 *   cred     setuid setgid setreuid setregid setresuid setresgid setfsuid setfsgid capset: arguments and result.
 *   ptrace   request, pid, addr, data, result.
 *   module   init_module(175) delete_module(176) finit_module(313): through their own syscalls:* tracepoints
 *            where the kernel has them (module_hook: auto), or raw_syscalls:sys_enter (module_hook: raw) on a
 *            kernel without module support, which has no such tracepoints (this VM's kernel).
 *   capable  capability:cap_capable for capabilities in SEC_CAP_MASK, at most once per (process, capability,
 *            granted/denied) per SEC_CAP_WINDOW_NS; optionally denied-only or granted-only (SEC_CAP_MODE).
 *            CAP_SYS_ADMIN checks made inside mmap/mprotect/brk/mremap/fork/clone/execve (the overcommit
 *            accounting, one per process) are dropped (SEC_CAP_SKIP_VM): the syscall in progress is orig_ax of
 *            bpf_task_pt_regs(current) - struct pt_regs is uapi, so its layout is safe to read.
 *   memfd_create (name, flags, fd), bpf (commands in SEC_BPF_CMD_MASK), mount (source, target, fstype, flags,
 *            result), unshare, setns, dup2/dup3 onto fd 0, 1 or 2 (filtered at sys_enter).
 *   setsid   syscalls:sys_exit_setsid (ravn_sec_setsid): a process became a session leader; only successes
 *            (ret > 0, the new session id). The process tree keeps the session, the incidents' join key.
 *   process_vm  syscalls:sys_enter/exit_process_vm_readv and _writev (ravn_sec_process_vm_enter): reading or
 *            writing another process's memory; calls on the caller's own pid are dropped in the kernel, and a
 *            (caller, target, call) is reported at most once per SEC_VM_WINDOW_NS (a failed call does not
 *            count): a profiler reads another process's memory thousands of times a second.
 *   prctl    syscalls:sys_enter/exit_prctl (ravn_sec_prctl_enter): only PR_SET_NAME (the new comm, read from
 *            user memory: masquerading as a kernel thread or daemon) and PR_SET_MM (rewriting where argv, env or
 *            the exe link point); every other option returns after one compare.
 *   socket   syscalls:sys_enter/exit_socket (ravn_sec_socket_enter): packet and raw IP sockets only (AF_PACKET,
 *            SOCK_PACKET, SOCK_RAW of AF_INET/AF_INET6: sniffing, crafted packets); every other socket (AF_NETLINK
 *            SOCK_RAW included: getaddrinfo, iproute2) returns after a few compares.
 *   module   with module_hook: auto (default), syscalls:sys_enter_init_module/finit_module/delete_module
 *            (ravn_sec_module_enter) when the kernel has them (CONFIG_MODULES); nothing otherwise.
 *   Calls with a result are paired: sys_enter stores the arguments in a per-thread hash (sec_pending,
 *   sec_mount_pending, sec_exec_pending) and sys_exit emits them with the result. proc.* of a paired event is
 *   taken at sys_enter: the identity *before* a credential change.
 *
 * Overhead: every syscalls:* tracepoint used here fires only for its own syscall, all rare on a server (prctl is
 * the most frequent: thread naming, a few calls per thread start, each costing one compare unless it names); the
 * sched/task tracepoints fire once per exec, fork and exit; signal_generate/signal_deliver once per signal.
 * capability:cap_capable fires on every capability check - often: the overcommit check of every mmap, brk, fork
 * and exec asks for CAP_SYS_ADMIN - and costs a mask test outside SEC_CAP_MASK, a pt_regs read (to skip those
 * memory-accounting checks) and an LRU lookup inside it. Measured with kernel.bpf_stats_enabled on the 2-core
 * 6.18 VM (bench/security.py, docs/BENCHMARKS.md): default config during redis-benchmark, 0.18% of one core of
 * BPF run time (none of it on redis's own path: host process churn and capability checks); a fork+exec+exit
 * costs ~14 us of BPF time (newtask ~3 us, exit ~3 us, exec ~3 us, execve enter ~1 us). Remeasured 2026-12-06
 * for a /bin/true exec from a shell with 35 environment entries: execve enter ~5 us (the envp scan), exec ~2.1 us
 * (of which the exe walk ~0.9 us).
 * The exception is module_hook: raw. A program on raw_syscalls:sys_enter runs on EVERY syscall of every process:
 * ~45 ns of program time per syscall (2.3% of one core during redis-benchmark) plus the tracepoint dispatch that
 * bpf_stats does not count; the lead measured ~7% redis-benchmark slowdown for even a no-op program there, more
 * than the <=5% budget for all four probes together. So the default is module_hook: auto: the three module
 * syscall tracepoints when they exist (they fire only for those syscalls: free), nothing where they do not - there
 * module loading cannot succeed (no CONFIG_MODULES), and the exec of insmod/modprobe is still reported by exec.
 * raw is for a kernel without module support where even a failed direct init_module/finit_module call by a
 * custom loader must be caught.
 *
 * Caveats:
 *   - a loader variable past the first SEC_ENV_SCAN environment entries, or in a string the kernel cannot read
 *     at sys_enter (not resident), is not seen; setuid programs ignore these variables (secure mode), which
 *     the event does not say.
 *   - exit.code never has the 0x80 core-dump bit, and is -1 when no traced path saw the cause (probe started
 *     after the exit began, or a kill that bypasses signal delivery).
 *   - exec.memfd misses a memfd fd dup'ed to another number, received over a socket or numbered >= 128 unless the
 *     exec used AT_EMPTY_PATH (comm check). A memfd fd closed and reused for a regular file can give a false
 *     positive for an fd exec of that number.
 *   - argv strings that are not resident read as missing and set RAVN_EXEC_ARGV_TRUNC (exec.argv_truncated), as
 *     do a 17th argument and an argument of RAVN_SEC_ARG_LEN - 1 bytes or more (cut there).
 *   - the kernel keeps a filename as passed: "./x" after `cd /dev/shm`, or "/usr/../dev/shm/x". A relative one
 *     is joined here with the cwd the kernel kept for the process (sec_cwds: chdir/fchdir are traced for it, a
 *     relative chdir joined with the cwd before it, inherited at fork, seeded from /proc; RAVN_EXEC_CWD), cut at
 *     RAVN_SEC_PATH_LEN - 1 bytes. After an fchdir, or a chdir whose path would not fit, that cwd is forgotten
 *     and user space resolves the name from /proc/<pid>/cwd
 *     (or the execveat dirfd) when it decodes the record, up to batch_ms later: a program that has exited by
 *     then keeps "./x" (counted: exec_relative_unresolved). User space normalises absolute names lexically. A
 *     successful execveat(dirfd, "x") is named "/dev/fd/<dirfd>/x" by the kernel and is left so.
 *   - cap_capable's cred is the one checked, usually but not always current's; proc.* is current.
 *   - fork with CLONE_PARENT: proc.* is the creator, while its proc.ppid in later events is the creator's parent.
 *   - the CAP_SYS_ADMIN skip list is by syscall: a genuine CAP_SYS_ADMIN check inside one of those syscalls is
 *     dropped too (none is known to matter: they are memory-accounting checks).
 *   - this machine's kernel headers do not match the running kernel: nothing here reads task_struct or another
 *     kernel struct whose layout comes from them; fields come from tracepoint arguments, user memory, helpers and
 *     the uapi struct pt_regs. The one walk through kernel structs (exec.exe) takes its offsets from the BTF.
 *   - exec.exe is walked only up to SEC_EXE_DEPTH dentries and mounts and RAVN_SEC_PATH_LEN - 1 bytes, and only
 *     for files in the mount tree: a memfd, a longer path, or a kernel without BTF leave it to user space, which
 *     reads /proc/<pid>/exe when it decodes the record ("" if the program is gone by then). The path is the one
 *     in the process's mount namespace (as /proc shows a container's), without the chroot of the process.
 */

/* ------------------------------------------------------------------------------------------ parameters */
#ifndef SEC_EXEC /* exec programs and their maps */
#define SEC_EXEC 1
#endif
#ifndef SEC_FORK /* fork events from ravn_on_newtask */
#define SEC_FORK 1
#endif
#ifndef SEC_EXIT /* exit events from ravn_on_exit, and the exit-code maps */
#define SEC_EXIT 1
#endif
#ifndef SEC_MEMFD_TRACK /* per-process memfd fd bitmap (needed by exec.memfd) */
#define SEC_MEMFD_TRACK 1
#endif
#ifndef SEC_EXEC_ENOENT /* 0: drop failed execs with -ENOENT (execvp trying each PATH directory) */
#define SEC_EXEC_ENOENT 1
#endif
#ifndef SEC_CAP_MASK /* bit n set: capability n is reported */
#define SEC_CAP_MASK 0ULL
#endif
#ifndef SEC_CAP_MODE /* 0 all, 1 denied only, 2 granted only */
#define SEC_CAP_MODE 0
#endif
#ifndef SEC_CAP_WINDOW_NS
#define SEC_CAP_WINDOW_NS 1000000000ULL
#endif
#ifndef SEC_VM_WINDOW_NS /* a (caller, target, readv/writev) is reported at most once per window (0: every call) */
#define SEC_VM_WINDOW_NS 1000000000ULL
#endif
#ifndef SEC_CAP_SKIP_VM /* 1: drop CAP_SYS_ADMIN checks made by memory accounting (see ravn_sec_capable) */
#define SEC_CAP_SKIP_VM 1
#endif
#ifndef SEC_BPF_CMD_MASK /* bit n set: bpf command n is reported */
#define SEC_BPF_CMD_MASK 0xffffffffffffffffULL
#endif
#ifndef SEC_ENV_SCAN /* environment entries scanned for LD_PRELOAD/LD_LIBRARY_PATH/LD_AUDIT (0: none) */
#define SEC_ENV_SCAN 64
#endif
#ifndef SEC_MAX_PENDING
#define SEC_MAX_PENDING 10240
#endif
#ifndef SEC_EXE_BTF /* 1: exe path walked in the kernel, with the SEC_OFF_* offsets the loader read from the BTF */
#define SEC_EXE_BTF 0
#endif
#ifndef SEC_EXE_DEPTH /* dentries and mounts the exe walk climbs at most */
#define SEC_EXE_DEPTH 48
#endif
#ifndef SEC_MAX_CWD /* processes whose cwd the kernel keeps for relative exec names (LRU, 256 bytes each) */
#define SEC_MAX_CWD 8192
#endif

#include "ravn_common.bpf.h"

/* x86_64 syscall numbers */
#define SEC_NR_DUP2 33
#define SEC_NR_EXECVE 59
#define SEC_NR_EXIT 60
#define SEC_NR_CHDIR 80
#define SEC_NR_FCHDIR 81
#define SEC_NR_PTRACE 101
#define SEC_NR_SETUID 105
#define SEC_NR_SETGID 106
#define SEC_NR_SETSID 112
#define SEC_NR_PRCTL 157
#define SEC_NR_PROCESS_VM_READV 310
#define SEC_NR_PROCESS_VM_WRITEV 311
#define SEC_PR_SET_NAME 15
#define SEC_PR_SET_MM 35
#define SEC_NR_SOCKET 41
#define SEC_AF_INET 2
#define SEC_AF_INET6 10
#define SEC_AF_PACKET 17
#define SEC_SOCK_RAW 3
#define SEC_SOCK_PACKET 10
#define SEC_NR_SETREUID 113
#define SEC_NR_SETREGID 114
#define SEC_NR_SETRESUID 117
#define SEC_NR_SETRESGID 119
#define SEC_NR_SETFSUID 122
#define SEC_NR_SETFSGID 123
#define SEC_NR_CAPSET 126
#define SEC_NR_MOUNT 165
#define SEC_NR_INIT_MODULE 175
#define SEC_NR_DELETE_MODULE 176
#define SEC_NR_EXIT_GROUP 231
#define SEC_NR_UNSHARE 272
#define SEC_NR_DUP3 292
#define SEC_NR_SETNS 308
#define SEC_NR_FINIT_MODULE 313
#define SEC_NR_MEMFD_CREATE 319
#define SEC_NR_BPF 321
#define SEC_NR_EXECVEAT 322

#define SEC_AT_FDCWD -100
#define SEC_AT_EMPTY_PATH 0x1000
#define SEC_MEMFD_MAX_FD 128

/* ---------------------------------------- tracepoint args (syscall records: struct ravn_sys_enter/exit, ravn_events.h) */

/* sched:sched_process_exec */
struct sec_exec_args {
	u64 __common;
	u32 filename_loc; /* __data_loc char[]: offset in the low 16 bits, length in the high 16 */
	s32 pid;
	s32 old_pid;
};

/* signal:signal_deliver */
struct sec_signal_args {
	u64 __common;
	s32 sig;
	s32 err;
	s32 code;
	s32 __pad;
	u64 sa_handler;
	u64 sa_flags;
};

/* signal:signal_generate */
struct sec_siggen_args {
	u64 __common;
	s32 sig;
	s32 err;
	s32 code;
	char comm[16];
	s32 pid; /* the target task */
	s32 group;
	s32 result; /* enum trace_signal_result */
};

/* capability:cap_capable */
struct sec_capable_args {
	u64 __common;
	u64 cred;
	u64 target_ns;
	u64 capable_ns;
	s32 cap;
	s32 ret;
};

/* ---------------------------------------------------------------------------------------------- maps */
/* Per-thread arguments between sys_enter and sys_exit. LRU: an entry whose sys_exit was never seen (the probe
 * attached between the two) ages out instead of filling the map. */
BPF_TABLE("lru_hash", u32, struct ravn_sec_event, sec_pending, SEC_MAX_PENDING);
BPF_TABLE("lru_hash", u32, struct ravn_mount_event, sec_mount_pending, 1024);
BPF_PERCPU_ARRAY(sec_mount_scratch, struct ravn_mount_event, 1);
#if SEC_EXEC
BPF_TABLE("lru_hash", u32, struct ravn_exec_event, sec_exec_pending, 1024);
BPF_PERCPU_ARRAY(sec_exec_scratch, struct ravn_exec_event, 1);
/* The cwd of each process as its chdir calls made it (a relative one joined with the cwd before it, unnormalised):
 * inherited at fork, deleted at exit, after an fchdir (an fd cannot be named here) and when the path would not fit,
 * seeded by user space from /proc/<pid>/cwd at start. A relative
 * exec name ("./x" after `cd /tmp`) is joined with it in the record (RAVN_EXEC_CWD), so the path is right even
 * when the process is gone before user space reads the ring. */
struct sec_cwd {
	char path[RAVN_SEC_PATH_LEN];
};
BPF_TABLE("lru_hash", u32, struct sec_cwd, sec_cwds, SEC_MAX_CWD);
BPF_TABLE("lru_hash", u32, u64, sec_chdir_pending, 1024); /* tid -> the path argument of a chdir, 0 fchdir */
struct sec_join {
	char buf[2 * RAVN_SEC_PATH_LEN];
};
BPF_PERCPU_ARRAY(sec_join_scratch, struct sec_join, 1);
#endif
#if SEC_MEMFD_TRACK
struct sec_fdset {
	u64 bits[SEC_MEMFD_MAX_FD / 64];
};
BPF_TABLE("lru_hash", u32, struct sec_fdset, sec_memfds, 8192); /* tgid -> memfd fds */
#endif
#if SEC_EXIT
BPF_TABLE("lru_hash", u32, s32, sec_group_code, 16384);  /* tgid -> wait status; the first cause wins */
BPF_TABLE("lru_hash", u32, s32, sec_thread_code, 16384); /* tid -> wait status from exit(2) */
BPF_TABLE("lru_hash", u32, s32, sec_sig_queued, 16384);  /* target pid -> last possibly fatal signal queued */
#endif
struct sec_cap_key {
	u32 tgid;
	u16 cap;
	u16 denied;
};
BPF_TABLE("lru_hash", struct sec_cap_key, u64, sec_cap_last, 16384);
struct sec_vm_key {
	u32 tgid;
	s32 target;
	u32 nr;
	u32 __pad;
};
/* (caller, target, call) -> when it was last reported: a profiler (py-spy) or debugger calls process_vm_readv
 * thousands of times a second, each one an event that would flood the ring buffer and the pipeline. */
BPF_TABLE("lru_hash", struct sec_vm_key, u64, sec_vm_last, 16384);

/* --------------------------------------------------------------------------------------------- helpers */
/* Emit an event that has no result to wait for. */
static __always_inline int sec_emit(u32 type, u32 nr, s64 a0, s64 a1, s64 ret, u32 nargs, const char *ustr,
				    u64 pid_tgid, u64 uid_gid)
{
	struct ravn_sec_event *e = RAVN_RESERVE(struct ravn_sec_event);
	if (!e)
		return 0;
	ravn_fill_hdr(&e->hdr, pid_tgid, uid_gid, type);
	e->args[0] = a0;
	e->args[1] = a1;
	e->args[2] = 0;
	e->args[3] = 0;
	e->args[4] = 0;
	e->args[5] = 0;
	e->ret = ret;
	e->nr = nr;
	e->nargs = nargs;
	e->str[0] = 0;
	if (ustr)
		bpf_probe_read_user_str(e->str, sizeof(e->str), ustr);
	ravn_submit(e);
	return 0;
}

/* Store the arguments of a paired syscall for this thread; ravn_sec_sys_exit adds the result and emits. */
static __always_inline int sec_store(u32 type, u32 nr, s64 a0, s64 a1, s64 a2, s64 a3, u32 nargs, const char *ustr,
				     u64 pid_tgid, u64 uid_gid)
{
	struct ravn_sec_event e = {};
	ravn_fill_hdr(&e.hdr, pid_tgid, uid_gid, type);
	e.args[0] = a0;
	e.args[1] = a1;
	e.args[2] = a2;
	e.args[3] = a3;
	e.nr = nr;
	e.nargs = nargs;
	if (ustr)
		bpf_probe_read_user_str(e.str, sizeof(e.str), ustr);
	u32 tid = (u32)pid_tgid;
	if (sec_pending.update(&tid, &e) < 0)
		ravn_count_drop();
	return 0;
}

#if SEC_MEMFD_TRACK
static __always_inline int sec_is_memfd(u32 tgid, s32 fd)
{
	if (fd < 0 || fd >= SEC_MEMFD_MAX_FD)
		return 0;
	struct sec_fdset *s = sec_memfds.lookup(&tgid);
	if (!s)
		return 0;
	u64 word = fd >= 64 ? s->bits[1] : s->bits[0]; /* no variable offset: the verifier loses the bound */
	return (word >> (fd & 63)) & 1;
}

static __always_inline void sec_add_memfd(u32 tgid, s64 fd)
{
	if (fd < 0 || fd >= SEC_MEMFD_MAX_FD)
		return;
	u64 bit = 1ULL << (fd & 63);
	struct sec_fdset *s = sec_memfds.lookup(&tgid);
	if (s) {
		if (fd >= 64)
			__sync_fetch_and_or(&s->bits[1], bit);
		else
			__sync_fetch_and_or(&s->bits[0], bit);
	} else {
		struct sec_fdset n = {};
		if (fd >= 64)
			n.bits[1] = bit;
		else
			n.bits[0] = bit;
		sec_memfds.update(&tgid, &n);
	}
}
#endif

/* ================================================================================================ exec */
#if SEC_EXEC
static __always_inline int sec_at(const char *b, int pos, char c)
{
	return b[pos & 63] == c;
}

/* "/dev/fd/N", "/proc/self/fd/N", "/proc/thread-self/fd/N", "/proc/<pid>/fd/N" -> N (and the process owning the
 * fd table), else -1. The first 63 bytes are copied to the stack so every index is a constant or masked. */
static __always_inline s32 sec_fd_path(const char *path, u32 self, u32 *owner)
{
	char b[64] = {};
	bpf_probe_read_kernel(b, sizeof(b) - 1, path);
	int pos = -1;
	*owner = self;
	if (b[0] != '/')
		return -1;
	if (b[1] == 'd' && b[2] == 'e' && b[3] == 'v' && b[4] == '/' && b[5] == 'f' && b[6] == 'd' && b[7] == '/') {
		pos = 8;
	} else if (b[1] == 'p' && b[2] == 'r' && b[3] == 'o' && b[4] == 'c' && b[5] == '/') {
		if (b[6] == 's' && b[7] == 'e' && b[8] == 'l' && b[9] == 'f' && b[10] == '/') {
			pos = 11;
		} else if (b[6] == 't' && b[7] == 'h' && b[8] == 'r' && b[9] == 'e' && b[10] == 'a' && b[11] == 'd' &&
			   b[12] == '-' && b[13] == 's' && b[14] == 'e' && b[15] == 'l' && b[16] == 'f' && b[17] == '/') {
			pos = 18;
		} else {
			u32 pid = 0;
			int i, slash = 0;
#pragma unroll
			for (i = 6; i < 17; i++) {
				char c = b[i];
				if (c == '/') {
					slash = i;
					break;
				}
				if (c < '0' || c > '9')
					return -1;
				pid = pid * 10 + (c - '0');
			}
			if (slash <= 6)
				return -1;
			*owner = pid;
			pos = slash + 1;
		}
		if (!sec_at(b, pos, 'f') || !sec_at(b, pos + 1, 'd') || !sec_at(b, pos + 2, '/'))
			return -1;
		pos += 3;
	}
	s32 fd = 0;
	int n = 0;
#pragma unroll
	for (int j = 0; j < 5; j++) {
		char c = b[(pos + j) & 63];
		if (c == 0)
			break;
		if (c < '0' || c > '9')
			return -1; /* not a number, or "/dev/fd/N/relative" */
		fd = fd * 10 + (c - '0');
		n++;
	}
	if (n == 0 || n == 5)
		return -1;
	return fd;
}

/* 8 characters as the little-endian word a user read of them gives */
#define SEC_W8(a, b, c, d, e, f, g, h)                                                                   \
	((u64)(a) | (u64)(b) << 8 | (u64)(c) << 16 | (u64)(d) << 24 | (u64)(e) << 32 | (u64)(f) << 40 |  \
	 (u64)(g) << 48 | (u64)(h) << 56)

/* Keep the environment's loader variables (LD_PRELOAD=, LD_LIBRARY_PATH=, LD_AUDIT=) in e->env: a bounded scan
 * of the first SEC_ENV_SCAN entries, one 16-byte read each; most environments have none, and then nothing else
 * happens. The entry pointers are read 8 at a time (one read instead of eight: the reads are most of what an exec
 * costs this probe); a block that runs into unreadable memory is read entry by entry. */
static __always_inline void sec_exec_env(struct ravn_exec_event *e, const char *const *envp)
{
	e->envc = 0;
#if SEC_ENV_SCAN > 0
	if (!envp)
		return;
	const char *block[8] = {};
	int single = 0;
	for (int i = 0; i < SEC_ENV_SCAN; i++) {
		const char *p = 0;
		if ((i & 7) == 0 && !single && bpf_probe_read_user(block, sizeof(block), &envp[i]) != 0)
			single = 1;
		if (single) {
			if (bpf_probe_read_user(&p, sizeof(p), &envp[i]) != 0)
				break;
		} else {
			p = block[i & 7];
		}
		if (!p)
			break;
		u64 w[2] = {};
		if (bpf_probe_read_user(w, sizeof(w), p) != 0)
			continue;
		if ((w[0] & 0xffffff) != SEC_W8('L', 'D', '_', 0, 0, 0, 0, 0))
			continue;
		int hit = (w[0] == SEC_W8('L', 'D', '_', 'P', 'R', 'E', 'L', 'O') &&
			   (w[1] & 0xffffff) == SEC_W8('A', 'D', '=', 0, 0, 0, 0, 0)) ||
			  (w[0] == SEC_W8('L', 'D', '_', 'L', 'I', 'B', 'R', 'A') &&
			   w[1] == SEC_W8('R', 'Y', '_', 'P', 'A', 'T', 'H', '=')) ||
			  (w[0] == SEC_W8('L', 'D', '_', 'A', 'U', 'D', 'I', 'T') && (w[1] & 0xff) == '=');
		if (!hit)
			continue;
		u32 n = e->envc;
		if (n >= RAVN_SEC_ENVC)
			break;
		bpf_probe_read_user_str(e->env[n], RAVN_SEC_ARG_LEN, p);
		e->envc = n + 1;
		e->flags |= RAVN_EXEC_LD_ENV;
	}
#endif
}

/* j->buf = cwd + "/" + name (name in user memory when `user`); its length with the NUL, 0 when the cwd is empty or
 * leaves no room. Past RAVN_SEC_PATH_LEN - 1 bytes the result is longer than a cwd or filename slot holds. */
static __always_inline long sec_join(struct sec_join *j, const char *cwd, const void *name, int user)
{
	long n = bpf_probe_read_kernel_str(j->buf, RAVN_SEC_PATH_LEN, cwd);
	if (n <= 1 || n >= RAVN_SEC_PATH_LEN)
		return 0;
	u32 off = n; /* the name goes after the '/' that replaces the cwd's NUL */
	j->buf[(off - 1) & (RAVN_SEC_PATH_LEN - 1)] = '/';
	/* hide off's range from the compiler, or it drops the mask the verifier needs to bound the write */
	asm volatile("" : "+r"(off));
	off &= RAVN_SEC_PATH_LEN - 1;
	long m = user ? bpf_probe_read_user_str(&j->buf[off], RAVN_SEC_PATH_LEN, name)
		      : bpf_probe_read_kernel_str(&j->buf[off], RAVN_SEC_PATH_LEN, name);
	return m > 0 ? off + m : 0;
}

/* A relative e->filename of an exec at the cwd (not an fd exec) becomes cwd + "/" + name when the kernel knows the
 * process's cwd; cut at RAVN_SEC_PATH_LEN - 1 bytes (the user space normalises "/./" and "//"). */
static __always_inline void sec_join_cwd(struct ravn_exec_event *e, u32 tgid)
{
	if (e->filename[0] == '/' || e->filename[0] == 0 || (e->flags & RAVN_EXEC_FD) || e->fd >= 0)
		return;
	struct sec_cwd *cwd = sec_cwds.lookup(&tgid);
	u32 zero = 0;
	struct sec_join *j = sec_join_scratch.lookup(&zero);
	if (!cwd || !j || !sec_join(j, cwd->path, e->filename, 0))
		return;
	bpf_probe_read_kernel_str(e->filename, RAVN_SEC_PATH_LEN, j->buf);
	e->flags |= RAVN_EXEC_CWD;
}

#if SEC_EXE_BTF
/* The pointer at byte `off` of the kernel object at `base` (0 when unreadable). */
static __always_inline void *sec_kptr(const void *base, u32 off)
{
	void *p = 0;
	bpf_probe_read_kernel(&p, sizeof(p), (const char *)base + off);
	return p;
}

/* e->exe = the path of the current task's executable file (task->mm->exe_file, set by the exec before
 * sched_process_exec), as /proc/<pid>/exe names it: each dentry's name up to its mount's root, then on from the
 * mountpoint in the parent mount, up to the mount namespace's root; " (deleted)" appended when the file was
 * unlinked. The struct offsets (SEC_OFF_*) come from the running kernel's BTF, not from the headers BCC compiles
 * with. RAVN_EXEC_EXE is set only when the walk reached the namespace's root within SEC_EXE_DEPTH steps and
 * RAVN_SEC_PATH_LEN - 1 bytes; else (a memfd or another file outside the mount tree, a longer path) the user
 * space reads /proc/<pid>/exe as before. j->buf is assembled from its end: the path is b[pos..255]. */
static __always_inline void sec_exe(struct ravn_exec_event *e)
{
	u32 zero = 0;
	struct sec_join *j = sec_join_scratch.lookup(&zero);
	if (!j)
		return;
	void *mm = sec_kptr((void *)bpf_get_current_task(), SEC_OFF_TASK_MM);
	void *file = mm ? sec_kptr(mm, SEC_OFF_MM_EXE_FILE) : 0;
	if (!file)
		return;
	char *vfsmnt = sec_kptr(file, SEC_OFF_FILE_PATH + SEC_OFF_PATH_MNT);
	void *dentry = sec_kptr(file, SEC_OFF_FILE_PATH + SEC_OFF_PATH_DENTRY);
	char *mnt = vfsmnt - SEC_OFF_MOUNT_MNT;                    /* the struct mount the vfsmount is part of */
	u32 pos = RAVN_SEC_PATH_LEN - 1;
	j->buf[RAVN_SEC_PATH_LEN - 1] = 0;
	if (!sec_kptr(dentry, SEC_OFF_D_HASH + 8) && sec_kptr(dentry, SEC_OFF_D_PARENT) != dentry) {
		/* unhashed and not a root: unlinked since it was opened (d_unlinked) */
		__builtin_memcpy(&j->buf[RAVN_SEC_PATH_LEN - 11], " (deleted)", 10);
		pos = RAVN_SEC_PATH_LEN - 11;
	}
	u32 end = pos;
	int top = 0;
	for (int i = 0; i < SEC_EXE_DEPTH; i++) {
		void *root = sec_kptr(vfsmnt, SEC_OFF_MNT_ROOT);
		if (dentry == root) { /* the root of its mount: go on from the mountpoint in the parent mount */
			char *parent_mnt = sec_kptr(mnt, SEC_OFF_MNT_PARENT);
			if (!parent_mnt || parent_mnt == mnt) {
				top = 1; /* the namespace's root mount */
				break;
			}
			dentry = sec_kptr(mnt, SEC_OFF_MNT_MOUNTPOINT);
			mnt = parent_mnt;
			vfsmnt = mnt + SEC_OFF_MOUNT_MNT;
			continue;
		}
		void *parent = sec_kptr(dentry, SEC_OFF_D_PARENT);
		if (!parent || parent == dentry)
			break; /* a root that is no mount's root: a pseudo file (memfd, ...) */
		u32 len = 0;
		const char *name = 0;
		bpf_probe_read_kernel(&len, sizeof(len), (char *)dentry + SEC_OFF_D_NAME + SEC_OFF_QSTR_LEN);
		bpf_probe_read_kernel(&name, sizeof(name), (char *)dentry + SEC_OFF_D_NAME + SEC_OFF_QSTR_NAME);
		if (len == 0 || len >= pos)
			break; /* no room for "/" + name */
		pos -= len;
		asm volatile("" : "+r"(pos)); /* keep the mask below (see sec_join) */
		pos &= RAVN_SEC_PATH_LEN - 1;
		bpf_probe_read_kernel(&j->buf[pos], len & (RAVN_SEC_PATH_LEN - 1), name);
		pos = (pos - 1) & (RAVN_SEC_PATH_LEN - 1);
		j->buf[pos] = '/';
		dentry = parent;
	}
	if (!top || pos == end)
		return; /* not walked to the top, or nothing named (the root itself) */
	bpf_probe_read_kernel_str(e->exe, RAVN_SEC_PATH_LEN, &j->buf[pos & (RAVN_SEC_PATH_LEN - 1)]);
	e->flags |= RAVN_EXEC_EXE;
}
#endif

/* Store filename and argv of an execve/execveat for this thread. Not filtered here: the filter applies to the
 * identity after the exec (ravn_sec_exec) or to the failed caller (ravn_sec_exec_exit). */
static __always_inline int sec_exec_store(const char *filename, const char *const *argv, s32 dirfd, s64 flags,
					  const char *const *envp)
{
	u32 zero = 0;
	struct ravn_exec_event *e = sec_exec_scratch.lookup(&zero);
	if (!e)
		return 0;
	u64 pid_tgid = bpf_get_current_pid_tgid();
	u32 tgid = pid_tgid >> 32;
	u32 tid = (u32)pid_tgid;
	e->ret = 0;
	e->flags = 0;
	e->argc = 0;
	e->fd = -1;
	e->filename[0] = 0;
	bpf_probe_read_user_str(e->filename, sizeof(e->filename), filename);
#pragma unroll
	for (int i = 0; i < RAVN_SEC_ARGC; i++) {
		const char *p = 0;
		e->argv[i][0] = 0;
		if (e->argc == i && bpf_probe_read_user(&p, sizeof(p), &argv[i]) == 0 && p) {
			long n = bpf_probe_read_user_str(e->argv[i], RAVN_SEC_ARG_LEN, p);
			if (n > 0)
				e->argc = i + 1;
			if (n <= 0 || n == RAVN_SEC_ARG_LEN) /* unreadable, or (maybe) cut at RAVN_SEC_ARG_LEN - 1 bytes */
				e->flags |= RAVN_EXEC_ARGV_TRUNC;
		}
	}
	if (e->argc == RAVN_SEC_ARGC) {
		const char *p = 0;
		if (bpf_probe_read_user(&p, sizeof(p), &argv[RAVN_SEC_ARGC]) == 0 && p)
			e->flags |= RAVN_EXEC_ARGV_TRUNC;
	}
	sec_exec_env(e, envp);
	u32 owner = tgid;
	s32 fd;
	if ((flags & SEC_AT_EMPTY_PATH) && e->filename[0] == 0)
		fd = dirfd;
	else
		fd = sec_fd_path(e->filename, tgid, &owner);
	if (fd >= 0) {
		e->fd = fd;
		e->flags |= RAVN_EXEC_FD;
#if SEC_MEMFD_TRACK
		if (sec_is_memfd(owner, fd))
			e->flags |= RAVN_EXEC_MEMFD;
#endif
	} else if (dirfd >= 0) {
		e->fd = dirfd; /* execveat relative to a directory fd */
	}
	if (sec_exec_pending.update(&tid, e) < 0)
		ravn_count_drop();
	return 0;
}

/* syscalls:sys_enter_execve(filename, argv, envp) */
int ravn_sec_execve_enter(struct ravn_sys_enter *args)
{
	return sec_exec_store((const char *)args->a[0], (const char *const *)args->a[1], SEC_AT_FDCWD, 0,
			      (const char *const *)args->a[2]);
}

/* syscalls:sys_enter_execveat(fd, filename, argv, envp, flags) */
int ravn_sec_execveat_enter(struct ravn_sys_enter *args)
{
	return sec_exec_store((const char *)args->a[1], (const char *const *)args->a[2], (s32)args->a[0],
			      (s32)args->a[4], (const char *const *)args->a[3]);
}

/* Bytes of an exec record worth sending: the header, filename and the argv slots in use (a 3-argument exec is
 * 968 bytes instead of 3024, so the ring holds 3x more execs in a burst); all of it when the environment sets a
 * loader variable. User space pads the rest with zeros. */
static __always_inline u32 sec_exec_size(const struct ravn_exec_event *e)
{
	if (e->flags & RAVN_EXEC_LD_ENV)
		return sizeof(*e);
	u32 n = e->argc;
	if (n > RAVN_SEC_ARGC)
		n = RAVN_SEC_ARGC;
	return __builtin_offsetof(struct ravn_exec_event, argv) + n * RAVN_SEC_ARG_LEN;
}

/* sched:sched_process_exec - success; the new image is in place (comm, and uid for a setuid binary, are new). */
int ravn_sec_exec(struct sec_exec_args *args)
{
	u32 old = args->old_pid;
	u64 pid_tgid = bpf_get_current_pid_tgid();
	u64 uid_gid = bpf_get_current_uid_gid();
#if SEC_EXIT
	/* de_thread() killed the other threads with SIGKILL: that is not this process's exit status */
	u32 tgid = pid_tgid >> 32;
	if (sec_group_code.lookup(&tgid))
		sec_group_code.delete(&tgid);
#endif
	struct ravn_exec_event *e = sec_exec_pending.lookup(&old);
	if (ravn_filtered(pid_tgid, uid_gid)) {
		if (e)
			sec_exec_pending.delete(&old);
		return 0;
	}
	if (!e) { /* sys_enter not seen (probe attached mid-exec): no argv */
		u32 zero = 0;
		e = sec_exec_scratch.lookup(&zero);
		if (!e)
			return 0;
		e->flags = RAVN_EXEC_NO_ARGS;
		e->argc = 0;
		e->fd = -1;
	}
	ravn_fill_hdr(&e->hdr, pid_tgid, uid_gid, RAVN_EVT_EXEC);
	e->ret = 0;
	bpf_probe_read_kernel_str(e->filename, sizeof(e->filename), (char *)args + (args->filename_loc & 0xffff));
	sec_join_cwd(e, pid_tgid >> 32);
#if SEC_EXE_BTF
	sec_exe(e);
#endif
	char *c = e->hdr.comm;
	if ((e->flags & RAVN_EXEC_FD) && c[0] == 'm' && c[1] == 'e' && c[2] == 'm' && c[3] == 'f' && c[4] == 'd' &&
	    c[5] == ':')
		e->flags |= RAVN_EXEC_MEMFD;
	if (ravn_events.ringbuf_output(e, sec_exec_size(e), 0) < 0)
		ravn_count_drop();
	sec_exec_pending.delete(&old);
	return 0;
}

/* sys_exit_execve/execveat - failure (ret != 0): the caller is still the old image. Success went out above. */
int ravn_sec_exec_exit(struct ravn_sys_exit *args)
{
	u64 pid_tgid = bpf_get_current_pid_tgid();
	u32 tid = (u32)pid_tgid;
	struct ravn_exec_event *e = sec_exec_pending.lookup(&tid);
	if (!e)
		return 0;
	u64 uid_gid = bpf_get_current_uid_gid();
	s64 ret = args->ret;
	if (ret != 0 && (SEC_EXEC_ENOENT || ret != -2 /* ENOENT */) && !ravn_filtered(pid_tgid, uid_gid)) {
		ravn_fill_hdr(&e->hdr, pid_tgid, uid_gid, RAVN_EVT_EXEC);
		e->ret = ret;
		sec_join_cwd(e, pid_tgid >> 32);
		if (ravn_events.ringbuf_output(e, sec_exec_size(e), 0) < 0)
			ravn_count_drop();
	}
	sec_exec_pending.delete(&tid);
	return 0;
}
#endif /* SEC_EXEC */

/* ========================================================================================== fork, exit */
/* task:task_newtask, in the parent. Threads (CLONE_THREAD) are not reported. */
int ravn_on_newtask(struct ravn_newtask_args *args)
{
	if (!(args->clone_flags & RAVN_CLONE_THREAD)) {
		u64 pid_tgid = bpf_get_current_pid_tgid();
		u32 child = args->pid;
#if SEC_EXEC
		u32 creator = pid_tgid >> 32;
		struct sec_cwd *cwd = sec_cwds.lookup(&creator);
		if (cwd)
			sec_cwds.update(&child, cwd);
#endif
#if SEC_MEMFD_TRACK
		u32 tgid = pid_tgid >> 32;
		struct sec_fdset *s = sec_memfds.lookup(&tgid);
		if (s) {
			struct sec_fdset copy = *s; /* the child's fd table starts as a copy of the parent's */
			sec_memfds.update(&child, &copy);
		}
#endif
#if SEC_FORK
		u64 uid_gid = bpf_get_current_uid_gid();
		if (!ravn_filtered(pid_tgid, uid_gid))
			sec_emit(RAVN_EVT_FORK, 0, child, child, 0, 2, 0, pid_tgid, uid_gid);
#endif
	}
	return ravn_track_newtask(args);
}

/* sched:sched_process_exit, for every exiting thread; the event only for the last one (group_dead). */
int ravn_on_exit(struct ravn_exit_args *args)
{
	/* Deletes only after a hit: most keys are absent, and a lookup is lock-free where a delete takes the bucket
	 * lock (this runs for every exiting thread of the host). */
	u64 pid_tgid = bpf_get_current_pid_tgid();
	u32 tgid = pid_tgid >> 32;
	u32 tid = (u32)pid_tgid;
#if SEC_EXIT
	s32 code = -1;
	s32 *c = sec_thread_code.lookup(&tid);
	if (c) {
		code = *c;
		sec_thread_code.delete(&tid);
	}
	if (sec_sig_queued.lookup(&tid))
		sec_sig_queued.delete(&tid);
#endif
	if (args->group_dead) {
#if SEC_MEMFD_TRACK
		if (sec_memfds.lookup(&tgid))
			sec_memfds.delete(&tgid);
#endif
#if SEC_EXEC
		if (sec_cwds.lookup(&tgid))
			sec_cwds.delete(&tgid);
#endif
#if SEC_EXIT
		c = sec_group_code.lookup(&tgid);
		if (c) {
			code = *c;
			sec_group_code.delete(&tgid);
		}
		if (tgid != tid && sec_sig_queued.lookup(&tgid))
			sec_sig_queued.delete(&tgid);
		u64 uid_gid = bpf_get_current_uid_gid();
		if (!ravn_filtered(pid_tgid, uid_gid))
			sec_emit(RAVN_EVT_EXIT, 0, code, 0, 0, 1, 0, pid_tgid, uid_gid);
#endif
	}
	return ravn_track_exit(args); /* last: the exit event above still finds the ppid */
}

#if SEC_EXIT
/* Default action is to ignore (CHLD 17, CONT 18, URG 23, WINCH 28) or stop (STOP 19, TSTP 20, TTIN 21, TTOU 22). */
static __always_inline int sec_sig_harmless(int sig)
{
	return sig <= 0 || sig > 64 || (sig >= 17 && sig <= 23) || sig == 28;
}

/* signal:signal_generate - remember the last signal queued to each task. A fatal signal without a handler and
 * without a core dump (SIGTERM, SIGINT, SIGHUP, ...) is turned into SIGKILL for every thread right here in
 * complete_signal(), so signal_deliver only ever shows SIGKILL for it; this map keeps the real number. */
int ravn_sec_signal_generate(struct sec_siggen_args *args)
{
	int result = args->result;
	int sig = args->sig;
	if ((result != 0 /* DELIVERED */ && result != 4 /* LOSE_INFO */) || sec_sig_harmless(sig))
		return 0;
	u32 pid = args->pid;
	s32 s = sig;
	sec_sig_queued.update(&pid, &s);
	return 0;
}

/* signal:signal_deliver - a signal with the default action that terminates gives the exit status. */
int ravn_sec_signal(struct sec_signal_args *args)
{
	int sig = args->sig;
	u64 id = bpf_get_current_pid_tgid();
	u32 tgid = id >> 32, tid = (u32)id;
	s32 status = sig;
	if (sig == 9) { /* SIGKILL: sent as such, or a fatal signal converted at generation (see above) */
		s32 *q = sec_sig_queued.lookup(&tgid);
		if (!q)
			q = sec_sig_queued.lookup(&tid);
		if (q)
			status = *q;
	} else {
		if (sec_sig_queued.lookup(&tgid)) /* delivered: not pending any more */
			sec_sig_queued.delete(&tgid);
		if (tid != tgid && sec_sig_queued.lookup(&tid))
			sec_sig_queued.delete(&tid);
	}
	if (args->sa_handler != 0 /* SIG_DFL */ || sec_sig_harmless(sig))
		return 0;
	sec_group_code.insert(&tgid, &status);
	return 0;
}
#endif

/* ========================================================================= paired and single syscalls */
/* capset(hdr, data): args = target pid, effective, permitted, inheritable (64 bits: both data words of v2/v3) */
static __always_inline int sec_capset(const u64 *a, u64 pid_tgid, u64 uid_gid)
{
	struct {
		u32 version;
		s32 pid;
	} h = {};
	struct {
		u32 effective;
		u32 permitted;
		u32 inheritable;
	} d[2] = {};
	bpf_probe_read_user(&h, sizeof(h), (void *)a[0]);
	if (a[1]) {
		if (h.version == 0x19980330 /* _LINUX_CAPABILITY_VERSION_1: one data word */)
			bpf_probe_read_user(&d[0], sizeof(d[0]), (void *)a[1]);
		else
			bpf_probe_read_user(&d, sizeof(d), (void *)a[1]);
	}
	return sec_store(RAVN_EVT_CRED, SEC_NR_CAPSET, h.pid, d[0].effective | ((u64)d[1].effective << 32),
			 d[0].permitted | ((u64)d[1].permitted << 32), d[0].inheritable | ((u64)d[1].inheritable << 32),
			 4, 0, pid_tgid, uid_gid);
}

static __always_inline int sec_mount_enter(const u64 *a, u64 pid_tgid, u64 uid_gid)
{
	u32 zero = 0;
	struct ravn_mount_event *e = sec_mount_scratch.lookup(&zero);
	if (!e)
		return 0;
	ravn_fill_hdr(&e->hdr, pid_tgid, uid_gid, RAVN_EVT_MOUNT);
	e->ret = 0;
	e->flags = a[3];
	e->source[0] = 0;
	e->target[0] = 0;
	e->fstype[0] = 0;
	if (a[0])
		bpf_probe_read_user_str(e->source, sizeof(e->source), (void *)a[0]);
	if (a[1])
		bpf_probe_read_user_str(e->target, sizeof(e->target), (void *)a[1]);
	if (a[2])
		bpf_probe_read_user_str(e->fstype, sizeof(e->fstype), (void *)a[2]);
	u32 tid = (u32)pid_tgid;
	if (sec_mount_pending.update(&tid, e) < 0)
		ravn_count_drop();
	return 0;
}

/* syscalls:sys_enter_<every traced syscall but execve/execveat>.
 * The arguments are copied with bpf_probe_read_kernel, not read as ctx fields: the kernel refuses to attach a
 * program whose direct ctx reads go past the record of the tracepoint (exit_group's record has one argument,
 * mount's five), and this one program serves them all. Slots past the syscall's arguments are garbage. */
int ravn_sec_sys_enter(struct ravn_sys_enter *args)
{
	int nr = args->nr;
	u64 a[6] = {};
	bpf_probe_read_kernel(a, sizeof(a), (void *)((u64)args + 16 /* offset of a[] */));
#if SEC_EXIT
	/* exit statuses are recorded for every process (filters apply to the exit event, not to this) */
	if (nr == SEC_NR_EXIT_GROUP || nr == SEC_NR_EXIT) {
		u64 id = bpf_get_current_pid_tgid();
		s32 status = ((s32)a[0] & 0xff) << 8;
		if (nr == SEC_NR_EXIT) {
			u32 tid = (u32)id;
			sec_thread_code.update(&tid, &status);
		} else {
			u32 tgid = id >> 32;
			sec_group_code.insert(&tgid, &status); /* insert: a fatal signal seen first wins */
		}
		return 0;
	}
#endif
#if SEC_EXEC
	/* the cwd is tracked for every process (filters apply to the exec, not to this) */
	if (nr == SEC_NR_CHDIR || nr == SEC_NR_FCHDIR) {
		u32 tid = (u32)bpf_get_current_pid_tgid();
		u64 path = nr == SEC_NR_CHDIR ? a[0] : 0;
		sec_chdir_pending.update(&tid, &path);
		return 0;
	}
#endif
	/* dup2/dup3 matter only onto stdin/stdout/stderr: test before anything else */
	if ((nr == SEC_NR_DUP2 || nr == SEC_NR_DUP3) && (u32)a[1] > 2)
		return 0;
	if (nr == SEC_NR_BPF) {
		u64 cmd = (u32)a[0];
		if (cmd > 63 || !((SEC_BPF_CMD_MASK >> cmd) & 1))
			return 0;
	}
	u64 pid_tgid = bpf_get_current_pid_tgid();
	u64 uid_gid = bpf_get_current_uid_gid();
	if (ravn_filtered(pid_tgid, uid_gid))
		return 0;
	s64 a0 = a[0], a1 = a[1], a2 = a[2];
	switch (nr) {
	case SEC_NR_SETUID:
	case SEC_NR_SETGID:
	case SEC_NR_SETFSUID:
	case SEC_NR_SETFSGID:
		return sec_store(RAVN_EVT_CRED, nr, (s32)a0, 0, 0, 0, 1, 0, pid_tgid, uid_gid);
	case SEC_NR_SETREUID:
	case SEC_NR_SETREGID:
		return sec_store(RAVN_EVT_CRED, nr, (s32)a0, (s32)a1, 0, 0, 2, 0, pid_tgid, uid_gid);
	case SEC_NR_SETRESUID:
	case SEC_NR_SETRESGID:
		return sec_store(RAVN_EVT_CRED, nr, (s32)a0, (s32)a1, (s32)a2, 0, 3, 0, pid_tgid, uid_gid);
	case SEC_NR_CAPSET:
		return sec_capset(a, pid_tgid, uid_gid);
	case SEC_NR_PTRACE:
		return sec_store(RAVN_EVT_PTRACE, nr, a0, (s32)a1, a2, a[3], 4, 0, pid_tgid, uid_gid);
	case SEC_NR_MEMFD_CREATE:
		return sec_store(RAVN_EVT_MEMFD_CREATE, nr, (u32)a1, 0, 0, 0, 1, (const char *)a0, pid_tgid, uid_gid);
	case SEC_NR_UNSHARE:
		return sec_store(RAVN_EVT_UNSHARE, nr, a0, 0, 0, 0, 1, 0, pid_tgid, uid_gid);
	case SEC_NR_SETNS:
		return sec_store(RAVN_EVT_SETNS, nr, (s32)a0, (s32)a1, 0, 0, 2, 0, pid_tgid, uid_gid);
	case SEC_NR_DUP2:
		return sec_store(RAVN_EVT_DUP, nr, (s32)a0, (s32)a1, 0, 0, 3, 0, pid_tgid, uid_gid);
	case SEC_NR_DUP3:
		return sec_store(RAVN_EVT_DUP, nr, (s32)a0, (s32)a1, (s32)a2, 0, 3, 0, pid_tgid, uid_gid);
	case SEC_NR_MOUNT:
		return sec_mount_enter(a, pid_tgid, uid_gid);
	case SEC_NR_BPF: /* no result wanted: emitted now */
		return sec_emit(RAVN_EVT_BPF, nr, (s32)a0, 0, 0, 1, 0, pid_tgid, uid_gid);
	}
	return 0;
}

/* syscalls:sys_exit_<every paired syscall>. */
int ravn_sec_sys_exit(struct ravn_sys_exit *args)
{
	int nr = args->nr;
	u32 tid = (u32)bpf_get_current_pid_tgid();
	s64 ret = args->ret;
#if SEC_MEMFD_TRACK
	if (nr == SEC_NR_MEMFD_CREATE) /* tracked whatever the filters say: a child may exec it */
		sec_add_memfd(bpf_get_current_pid_tgid() >> 32, ret);
#endif
#if SEC_EXEC
	if (nr == SEC_NR_CHDIR || nr == SEC_NR_FCHDIR) {
		u64 *path = sec_chdir_pending.lookup(&tid);
		if (!path)
			return 0;
		u32 tgid = bpf_get_current_pid_tgid() >> 32;
		u32 zero = 0;
		struct sec_join *j = sec_join_scratch.lookup(&zero);
		long n = 0;
		char first = 0;
		if (ret == 0 && *path && j && bpf_probe_read_user(&first, 1, (void *)*path) == 0) {
			if (first == '/') {
				n = bpf_probe_read_user_str(j->buf, RAVN_SEC_PATH_LEN, (void *)*path);
			} else { /* relative (`cd -P dir`): joined with the cwd kept, if any ("/a/b/../c" is fine) */
				struct sec_cwd *cwd = sec_cwds.lookup(&tgid);
				if (cwd)
					n = sec_join(j, cwd->path, (void *)*path, 1);
			}
		}
		if (ret == 0 && j && n > 1 && n < RAVN_SEC_PATH_LEN && j->buf[0] == '/')
			sec_cwds.update(&tgid, (struct sec_cwd *)j->buf);
		else if (ret == 0)
			sec_cwds.delete(&tgid); /* fchdir, no cwd to join with, or a path too long: forget */
		sec_chdir_pending.delete(&tid);
		return 0;
	}
#endif
	if (nr == SEC_NR_MOUNT) {
		struct ravn_mount_event *m = sec_mount_pending.lookup(&tid);
		if (!m)
			return 0;
		m->ret = ret;
		if (ravn_events.ringbuf_output(m, sizeof(*m), 0) < 0)
			ravn_count_drop();
		sec_mount_pending.delete(&tid);
		return 0;
	}
	struct ravn_sec_event *p = sec_pending.lookup(&tid);
	if (!p)
		return 0;
	if (p->nr == nr) { /* else a stale entry of a call that never returned */
		p->ret = ret;
		if (ret < 0 && (nr == SEC_NR_PROCESS_VM_READV || nr == SEC_NR_PROCESS_VM_WRITEV)) {
			/* a failed call does not hold back the next one, which may succeed */
			struct sec_vm_key k = {.tgid = p->hdr.pid, .target = (s32)p->args[0], .nr = nr};
			sec_vm_last.delete(&k);
		}
		if (ravn_events.ringbuf_output(p, sizeof(*p), 0) < 0)
			ravn_count_drop();
	}
	sec_pending.delete(&tid);
	return 0;
}

/* raw_syscalls:sys_enter (module_hook: raw). Runs for EVERY syscall: the number test comes first. */
int ravn_sec_raw_enter(struct ravn_sys_enter *args)
{
	int nr = args->nr;
	if (nr != SEC_NR_FINIT_MODULE && nr != SEC_NR_INIT_MODULE && nr != SEC_NR_DELETE_MODULE)
		return 0;
	u64 pid_tgid = bpf_get_current_pid_tgid();
	u64 uid_gid = bpf_get_current_uid_gid();
	if (ravn_filtered(pid_tgid, uid_gid))
		return 0;
	if (nr == SEC_NR_FINIT_MODULE) /* finit_module(fd, uargs, flags) */
		return sec_emit(RAVN_EVT_MODULE, nr, (s32)args->a[0], args->a[2], 0, 2, 0, pid_tgid, uid_gid);
	if (nr == SEC_NR_DELETE_MODULE) /* delete_module(name, flags) */
		return sec_emit(RAVN_EVT_MODULE, nr, -1, args->a[1], 0, 2, (const char *)args->a[0], pid_tgid,
				uid_gid);
	/* init_module(image, len, uargs) */
	return sec_emit(RAVN_EVT_MODULE, nr, -1, args->a[1], 0, 2, 0, pid_tgid, uid_gid);
}

/* capability:cap_capable */
int ravn_sec_capable(struct sec_capable_args *args)
{
	int cap = args->cap;
	if (cap < 0 || cap > 63 || !((SEC_CAP_MASK >> cap) & 1))
		return 0;
	int ret = args->ret;
#if SEC_CAP_MODE == 1
	if (ret == 0)
		return 0;
#elif SEC_CAP_MODE == 2
	if (ret != 0)
		return 0;
#endif
#if SEC_CAP_SKIP_VM
	/* The overcommit accounting (__vm_enough_memory) asks cap_capable(CAP_SYS_ADMIN, noaudit) on every mmap, brk,
	 * mprotect, mremap, fork and exec of every process: one event per process, never a privileged action. The
	 * syscall in progress is orig_ax of the task's saved user registers (struct pt_regs is uapi: stable). */
	if (cap == 21 /* CAP_SYS_ADMIN */) {
		struct pt_regs *regs = (struct pt_regs *)bpf_task_pt_regs((struct task_struct *)bpf_get_current_task_btf());
		long sc = -1;
		bpf_probe_read_kernel(&sc, sizeof(sc), &regs->orig_ax);
		switch (sc) {
		case 9:   /* mmap */
		case 10:  /* mprotect */
		case 12:  /* brk */
		case 25:  /* mremap */
		case 56:  /* clone */
		case 57:  /* fork */
		case 58:  /* vfork */
		case 59:  /* execve */
		case 322: /* execveat */
		case 329: /* pkey_mprotect */
		case 435: /* clone3 */
			return 0;
		}
	}
#endif
	u64 pid_tgid = bpf_get_current_pid_tgid();
	u64 uid_gid = bpf_get_current_uid_gid();
	if (ravn_filtered(pid_tgid, uid_gid))
		return 0;
	struct sec_cap_key k = {.tgid = pid_tgid >> 32, .cap = cap, .denied = ret != 0};
	u64 now = bpf_ktime_get_ns();
	u64 *last = sec_cap_last.lookup(&k);
	if (last && now - *last < SEC_CAP_WINDOW_NS)
		return 0;
	sec_cap_last.update(&k, &now);
	return sec_emit(RAVN_EVT_CAPABLE, 0, cap, 0, ret, 1, 0, pid_tgid, uid_gid);
}

/* ------------------------------------------------------------------------------------------ setsid */
/* syscalls:sys_exit_setsid: fires only for setsid(2), rare (daemons, login shells, `setsid cmd`). A failure
 * (-EPERM: the caller already leads a process group) changes nothing and is dropped here. */
int ravn_sec_setsid(struct ravn_sys_exit *args)
{
	s64 ret = args->ret;
	if (ret <= 0)
		return 0;
	u64 pid_tgid = bpf_get_current_pid_tgid();
	u64 uid_gid = bpf_get_current_uid_gid();
	if (ravn_filtered(pid_tgid, uid_gid))
		return 0;
	return sec_emit(RAVN_EVT_SETSID, SEC_NR_SETSID, 0, 0, ret, 0, 0, pid_tgid, uid_gid);
}

/* ----------------------------------------------------------------------------- process_vm, prctl, module */
/* syscalls:sys_enter_process_vm_readv / _writev (pid, lvec, liovcnt, rvec, riovcnt, flags): another process's
 * memory read or written without ptrace. Paired: ravn_sec_sys_exit adds the byte count (or -errno). */
int ravn_sec_process_vm_enter(struct ravn_sys_enter *args)
{
	u64 pid_tgid = bpf_get_current_pid_tgid();
	s32 target = (s32)args->a[0];
	if ((u32)target == (u32)(pid_tgid >> 32))
		return 0; /* its own memory */
	u64 uid_gid = bpf_get_current_uid_gid();
	if (ravn_filtered(pid_tgid, uid_gid))
		return 0;
	if (SEC_VM_WINDOW_NS) {
		struct sec_vm_key k = {.tgid = pid_tgid >> 32, .target = target, .nr = args->nr};
		u64 now = bpf_ktime_get_ns();
		u64 *last = sec_vm_last.lookup(&k);
		if (last && now - *last < SEC_VM_WINDOW_NS)
			return 0;
		sec_vm_last.update(&k, &now);
	}
	return sec_store(RAVN_EVT_PROCESS_VM, args->nr, target, args->a[2], args->a[4], 0, 3, 0, pid_tgid, uid_gid);
}

/* syscalls:sys_enter_prctl (option, arg2, ...): PR_SET_NAME and PR_SET_MM only, tested first. */
int ravn_sec_prctl_enter(struct ravn_sys_enter *args)
{
	s64 option = args->a[0];
	if (option != SEC_PR_SET_NAME && option != SEC_PR_SET_MM)
		return 0;
	u64 pid_tgid = bpf_get_current_pid_tgid();
	u64 uid_gid = bpf_get_current_uid_gid();
	if (ravn_filtered(pid_tgid, uid_gid))
		return 0;
	if (option == SEC_PR_SET_NAME) /* the kernel keeps at most 15 bytes of it */
		return sec_store(RAVN_EVT_PRCTL, SEC_NR_PRCTL, option, 0, 0, 0, 1, (const char *)args->a[1], pid_tgid,
				 uid_gid);
	return sec_store(RAVN_EVT_PRCTL, SEC_NR_PRCTL, option, args->a[1], 0, 0, 2, 0, pid_tgid, uid_gid);
}

/* syscalls:sys_enter_init_module / finit_module / delete_module (module_hook: auto, on kernels that have them).
 * The same events as ravn_sec_raw_enter, from tracepoints that fire only for these syscalls. The arguments are
 * copied with a probe read: delete_module's record is shorter than finit_module's. */
int ravn_sec_module_enter(struct ravn_sys_enter *args)
{
	int nr = args->nr;
	u64 a[3] = {};
	bpf_probe_read_kernel(a, sizeof(a), (void *)((u64)args + 16 /* offset of a[] */));
	u64 pid_tgid = bpf_get_current_pid_tgid();
	u64 uid_gid = bpf_get_current_uid_gid();
	if (ravn_filtered(pid_tgid, uid_gid))
		return 0;
	if (nr == SEC_NR_FINIT_MODULE)
		return sec_emit(RAVN_EVT_MODULE, nr, (s32)a[0], a[2], 0, 2, 0, pid_tgid, uid_gid);
	if (nr == SEC_NR_DELETE_MODULE)
		return sec_emit(RAVN_EVT_MODULE, nr, -1, a[1], 0, 2, (const char *)a[0], pid_tgid, uid_gid);
	return sec_emit(RAVN_EVT_MODULE, nr, -1, a[1], 0, 2, 0, pid_tgid, uid_gid);
}

/* ---------------------------------------------------------------------------------------------- socket */
/* syscalls:sys_enter_socket (family, type, protocol): packet and raw IP sockets only. Paired (the fd or -errno). */
int ravn_sec_socket_enter(struct ravn_sys_enter *args)
{
	s64 family = args->a[0];
	s64 type = args->a[1];
	u32 kind = type & 0xf; /* SOCK_TYPE_MASK: without SOCK_NONBLOCK / SOCK_CLOEXEC */
	if (family != SEC_AF_PACKET && kind != SEC_SOCK_PACKET
	    && !(kind == SEC_SOCK_RAW && (family == SEC_AF_INET || family == SEC_AF_INET6)))
		return 0;
	u64 pid_tgid = bpf_get_current_pid_tgid();
	u64 uid_gid = bpf_get_current_uid_gid();
	if (ravn_filtered(pid_tgid, uid_gid))
		return 0;
	return sec_store(RAVN_EVT_SOCKET, SEC_NR_SOCKET, family, type, args->a[2], 0, 3, 0, pid_tgid, uid_gid);
}
