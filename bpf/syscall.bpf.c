/* SPDX-License-Identifier: Apache-2.0
 *
 * syscall.bpf.c: RAVN's syscall probe (plugin ebpf_syscall). BCC dialect, compiled at load with -D parameters.
 *
 * Traces
 *   hook=tracepoints  syscalls:sys_enter_<name> (and sys_exit_<name> with return values) for each syscall of the
 *                     allow list; ONE generic program (ravn_sc_enter_tp / ravn_sc_exit_tp) attached to each,
 *                     reading __syscall_nr from the tracepoint record. A syscall outside the list costs nothing.
 *   hook=raw          raw_syscalls:sys_enter (and raw_syscalls:sys_exit with return values) with an in-kernel
 *                     selection array ravn_sc_sel[nr] (allow list, or everything minus a deny list).
 *   mode=events       one ravn_syscall_event per syscall in the ring buffer (RAVN_EVT_SYSCALL).
 *   mode=summary      per-process counts and a 64-entry recent-sequence ring in the ravn_sc_summary map, read and
 *                     flushed every N ms by user space as syscall_summary events. Nothing per syscall crosses to
 *                     user space, so this feeds the ML analyzer at a fraction of the events-mode cost. When a
 *                     process's last thread exits (sched:sched_process_exit), its entry goes to user space as one
 *                     ravn_syscall_final ring record (RAVN_EVT_SYSCALL_SUMMARY: the counts of the syscalls it used,
 *                     up to RAVN_SC_DISTINCT of them) and is deleted, so the periodic flush reads live processes
 *                     only and a short-lived process is read once, at its exit.
 *
 * Expected overhead
 *   The default config (summary mode, ~60 security-relevant syscalls, tracepoints hook) touches none of the hot
 *   syscalls (read/write/poll/epoll/futex/mmap/...): a host serving traffic barely enters these programs.
 *   Each counted syscall costs one tracepoint entry (~100-200 ns), a filter lookup, one LRU-hash lookup, two
 *   atomic adds and the header refresh (a third atomic add the first time a process uses a syscall). A process
 *   exit in summary mode copies its entry into a 392-byte ring record (a 32-step loop) and deletes the entry. raw_syscalls:sys_enter instead runs for EVERY syscall on the machine:
 *   a no-op program there already slows redis-benchmark by ~7% on the reference VM, so hook=raw is opt-in.
 *   events mode adds a ring-buffer record (72 bytes) per syscall and the Python decode (~0.6M events/s ceiling);
 *   keep it to narrow allow lists.
 *
 * Caveats
 *   - x86_64 numbers only (the table is bundled). 32-bit compat syscalls reach raw_syscalls with i386 numbers
 *     and are misnamed; the per-syscall tracepoints do not fire for them.
 *   - With return values, the event is emitted at sys_exit (its ts is the exit time); exit/exit_group and other
 *     noreturn syscalls are emitted at entry without a return value. A syscall still blocked at stop() is lost.
 *   - Summary mode: proc.comm/cgroup/ppid of a summary are those seen at the last full header refresh (see above:
    a comm changed through /proc/self/comm or a cgroup move shows up within 64 syscalls).
  - Summary mode: counts are per process (tgid), exact for a single thread; under concurrent threads the
 *     sequence window may interleave or lose slots (counts stay exact: atomic adds). The ravn_sc_summary map is
 *     an LRU of RAVN_SC_MAX_PROCS processes: with more live processes, the least recent lose their counts.
 *     A process whose final record cannot be sent (ring full, or more than RAVN_SC_DISTINCT distinct syscalls)
 *     is marked exited instead: the next flush emits it from the map and deletes it (nothing is lost, no drop
 *     is counted; it only arrives up to N ms later).
 *   - Syscalls without a tracepoint on this kernel (init_module, kexec_load, ... when their subsystem is off)
 *     cannot be in a tracepoints allow list; use hook=raw for them.
 */
#include "ravn_events.h"

#ifndef RAVN_SC_SUMMARY
#define RAVN_SC_SUMMARY 1 /* 1: summary mode, 0: events mode */
#endif
#ifndef RAVN_SC_RET
#define RAVN_SC_RET 0     /* events mode: emit at sys_exit with the return value */
#endif
#ifndef RAVN_SC_MAX_PROCS
#define RAVN_SC_MAX_PROCS 8192
#endif

/* ravn_sc_sel[nr] (raw hook): 0 not traced, 1 traced, 2 traced and emitted at entry although return values are
 * on (noreturn syscalls). */
BPF_ARRAY(ravn_sc_sel, u8, RAVN_SC_MAX);

#if RAVN_SC_SUMMARY
BPF_TABLE("lru_hash", u32, struct ravn_syscall_summary, ravn_sc_summary, RAVN_SC_MAX_PROCS);
BPF_PERCPU_ARRAY(ravn_sc_scratch, struct ravn_syscall_summary, 1); /* zeroed template for new entries */

#endif

#include "ravn_common.bpf.h"

#if RAVN_SC_SUMMARY
/* A process's last thread is exiting: send its entry as one ravn_syscall_final record and delete it, so user
 * space reads an exited process once, from the ring, instead of finding it in the map at the next flush. Copied
 * before the delete (an LRU element is reused at once), submitted after it (user space never sees both the record
 * and the entry). No syscall of the group can be counted after this point. When the record cannot be sent (ring
 * full: not a lost event, so no drop is counted; more distinct syscalls than the record holds), the entry is
 * marked exited and the next flush reads it from the map. */
static __always_inline void ravn_sc_final(u32 tgid)
{
	struct ravn_syscall_summary *s = ravn_sc_summary.lookup(&tgid);
	if (!s)
		return;
	u64 nd = s->ndistinct;
	if (nd > RAVN_SC_DISTINCT) {
		s->exited = 1;
		return;
	}
	struct ravn_syscall_final *f = ravn_events.ringbuf_reserve(sizeof(struct ravn_syscall_final));
	if (!f) {
		s->exited = 1;
		return;
	}
	__builtin_memcpy(&f->hdr, &s->hdr, sizeof(f->hdr));
	f->total = s->total;
	f->seq_pos = s->seq_pos;
	f->ndistinct = nd;
	__builtin_memcpy(f->seq, s->seq, sizeof(f->seq));
#pragma unroll
	for (u32 i = 0; i < RAVN_SC_DISTINCT; i++) {
		u16 nr = i < nd ? s->distinct[i] : 0;
		f->nrs[i] = nr;
		f->counts[i] = i < nd ? s->counts[nr & (RAVN_SC_MAX - 1)] : 0;
	}
	ravn_sc_summary.delete(&tgid);
	ravn_submit(f);
}
#endif

/* The two process-tracking programs every probe defines (see ravn_common.bpf.h). Summary mode also sends the
 * exiting group's final summary (ravn_sc_final). */
int ravn_on_newtask(struct ravn_newtask_args *args)
{
	return ravn_track_newtask(args);
}

int ravn_on_exit(struct ravn_exit_args *args)
{
#if RAVN_SC_SUMMARY
	if (args->group_dead)
		ravn_sc_final(bpf_get_current_pid_tgid() >> 32);
#endif
	return ravn_track_exit(args);
}

#if RAVN_SC_SUMMARY
/* Syscalls after which comm, credentials or namespaces/cgroup may differ: the next counted syscall refreshes the
 * whole header (ppid lookup, comm, cgroup id); the others only refresh ts, tid, uid and gid (~half the cost). */
static __always_inline int ravn_sc_changes_identity(u32 nr)
{
	switch (nr) {
	case 59:  /* execve */
	case 322: /* execveat */
	case 105: /* setuid */
	case 106: /* setgid */
	case 113: /* setreuid */
	case 114: /* setregid */
	case 116: /* setgroups */
	case 117: /* setresuid */
	case 119: /* setresgid */
	case 122: /* setfsuid */
	case 123: /* setfsgid */
	case 126: /* capset */
	case 157: /* prctl (PR_SET_NAME) */
	case 272: /* unshare */
	case 308: /* setns */
		return 1;
	}
	return 0;
}

static __always_inline int ravn_sc_count(u32 nr, u64 pid_tgid, u64 uid_gid)
{
	if (nr >= RAVN_SC_MAX)
		return 0;
	u32 tgid = pid_tgid >> 32;
	struct ravn_syscall_summary *s = ravn_sc_summary.lookup(&tgid);
	if (!s) {
		u32 zero = 0;
		struct ravn_syscall_summary *init = ravn_sc_scratch.lookup(&zero);
		if (!init)
			return 0;
		ravn_fill_hdr(&init->hdr, pid_tgid, uid_gid, RAVN_EVT_SYSCALL_SUMMARY);
		ravn_sc_summary.insert(&tgid, init); /* BPF_NOEXIST: another thread may have won the race */
		s = ravn_sc_summary.lookup(&tgid);
		if (!s)
			return 0;
	} else {
		u32 last = s->seq_pos - 1;
		if (!(last & (RAVN_SC_SEQ - 1)) || ravn_sc_changes_identity(s->seq[last & (RAVN_SC_SEQ - 1)])) {
			ravn_fill_hdr(&s->hdr, pid_tgid, uid_gid, RAVN_EVT_SYSCALL_SUMMARY);
		} else {
			s->hdr.ts_ns = bpf_ktime_get_ns();
			s->hdr.tid = (u32)pid_tgid;
			s->hdr.uid = (u32)uid_gid;
			s->hdr.gid = uid_gid >> 32;
		}
	}
	if (!s->counts[nr]) {
		/* First use of nr: list it. Whoever reads 0 lists it, so a number is never missed; two threads reading
		 * 0 at once both list it (user space keeps one). The slot is an atomic add's old value (64-bit: BCC's
		 * target cannot return it from a 32-bit one). */
		u64 slot = __sync_fetch_and_add(&s->ndistinct, 1);
		if (slot < RAVN_SC_DISTINCT)
			s->distinct[slot] = nr;
	}
	__sync_fetch_and_add(&s->counts[nr], 1);
	__sync_fetch_and_add(&s->total, 1);
	u32 pos = s->seq_pos;
	s->seq[pos & (RAVN_SC_SEQ - 1)] = nr;
	s->seq_pos = pos + 1;
	return 0;
}
#endif

static __always_inline int ravn_sc_emit(u32 nr, s64 ret, u32 has_ret, u64 pid_tgid, u64 uid_gid)
{
	struct ravn_syscall_event *e = RAVN_RESERVE(struct ravn_syscall_event);
	if (!e)
		return 0;
	ravn_fill_hdr(&e->hdr, pid_tgid, uid_gid, RAVN_EVT_SYSCALL);
	e->ret = ret;
	e->nr = nr;
	e->has_ret = has_ret;
	ravn_submit(e);
	return 0;
}

static __always_inline int ravn_sc_on_enter(u32 nr)
{
	u64 pid_tgid = bpf_get_current_pid_tgid();
	u64 uid_gid = bpf_get_current_uid_gid();
	if (ravn_filtered(pid_tgid, uid_gid))
		return 0;
#if RAVN_SC_SUMMARY
	return ravn_sc_count(nr, pid_tgid, uid_gid);
#else
	return ravn_sc_emit(nr, 0, 0, pid_tgid, uid_gid);
#endif
}

static __always_inline int ravn_sc_on_exit(u32 nr, s64 ret)
{
	u64 pid_tgid = bpf_get_current_pid_tgid();
	u64 uid_gid = bpf_get_current_uid_gid();
	if (ravn_filtered(pid_tgid, uid_gid))
		return 0;
	return ravn_sc_emit(nr, ret, 1, pid_tgid, uid_gid);
}

/* hook=tracepoints: attached to syscalls:sys_enter_<name> for each selected syscall (with return values: only
 * the noreturn ones; the others go through ravn_sc_exit_tp). */
int ravn_sc_enter_tp(struct ravn_sys_enter *args)
{
	return ravn_sc_on_enter((u32)args->nr);
}

int ravn_sc_exit_tp(struct ravn_sys_exit *args)
{
	return ravn_sc_on_exit((u32)args->nr, args->ret);
}

/* hook=raw: raw_syscalls:sys_enter / sys_exit, selection in ravn_sc_sel. */
int ravn_sc_enter_raw(struct ravn_sys_enter *args)
{
	u32 nr = (u32)args->nr;
	u8 *sel = ravn_sc_sel.lookup(&nr); /* NULL when nr >= RAVN_SC_MAX (and for -1) */
	if (!sel || !*sel)
		return 0;
#if RAVN_SC_RET && !RAVN_SC_SUMMARY
	if (*sel != 2)
		return 0; /* emitted at exit */
#endif
	return ravn_sc_on_enter(nr);
}

int ravn_sc_exit_raw(struct ravn_sys_exit *args)
{
	u32 nr = (u32)args->nr;
	u8 *sel = ravn_sc_sel.lookup(&nr);
	if (!sel || *sel != 1)
		return 0;
	return ravn_sc_on_exit(nr, args->ret);
}
