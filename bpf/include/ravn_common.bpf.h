/* SPDX-License-Identifier: Apache-2.0
 *
 * ravn_common.bpf.h: what every RAVN .bpf.c includes (first, before its own code). BCC dialect.
 *
 * BCC rewrites map calls (m.lookup(&k) -> bpf_map_lookup_elem(fd, &k)) in the MAIN file only; in an included
 * header they compile into indirect calls the verifier rejects ("unknown opcode 8d"). So ravn_core.bpf.probe.BccProbe
 * compiles the text of this header followed by the probe's .bpf.c as one main file, with #line markers so that
 * compiler errors still name the right file and line; the probe's own #include of this file is then a no-op
 * (include guard), and keeps the .bpf.c readable and compilable on its own for editors.
 *
 * Provides
 *  - ravn_events   ring buffer (BPF_RINGBUF_OUTPUT) every event goes through; RAVN_RESERVE(T) reserves a T in
 *                  it and counts a drop in ravn_drops (per-CPU) when the ring is full; ravn_submit(p) sends it;
 *  - ravn_ppid     tgid -> parent tgid (LRU), maintained by ravn_on_newtask/ravn_on_exit and seeded from /proc
 *                  by user space at load; read by ravn_fill_hdr;
 *  - ravn_excluded tgids never reported: RAVN itself, configured pids, and every descendant of either (a new
 *                  thread group forked by an excluded tgid is added; entries go away when the group dies);
 *  - ravn_ex_uids / ravn_ex_comms / ravn_ex_cgroups: configured excludes, compiled in only when enabled
 *                  (RAVN_FILTER_UIDS / _COMMS / _CGROUPS = 1), so an unused filter costs nothing;
 *  - ravn_filtered(pid_tgid, uid_gid): 1 when the current task must not be reported;
 *  - ravn_fill_hdr(h, pid_tgid, uid_gid, type): the common header;
 *  - ravn_track_newtask / ravn_track_exit and the RAVN_PROC_PROGRAMS macro: the two programs the base class
 *    attaches to every probe, ravn_on_newtask (task:task_newtask) and ravn_on_exit (sched:sched_process_exit),
 *    which each .bpf.c must define (with the macro, or by hand to add its own fork/exit work).
 *
 * Why task:task_newtask and not sched:sched_process_fork: both fire in the parent, in copy_process, for every new
 * task, threads included. sched_process_fork gives parent_pid/child_pid, which are *thread* ids, and nothing
 * tells a new thread from a new process without reading task_struct (whose layout we cannot trust: the headers
 * here are not the running kernel's). task_newtask gives the child's pid and the clone flags: CLONE_THREAD
 * means a new thread of the same group (ignored), anything else a new thread group whose tgid == pid.
 * CLONE_PARENT makes the new process a sibling of the caller: its parent is the caller's parent.
 *
 * Parameters (-D cflags, set by ravn_core.bpf.probe.BccProbe; defaults below are for ad-hoc compiles):
 *  RAVN_RINGBUF_PAGES  ring buffer size in pages (power of two)
 *  RAVN_MAX_PROCS      entries of ravn_ppid (LRU)
 *  RAVN_MAX_EXCLUDED   entries of ravn_excluded (when full, descendants of excluded tasks are not added)
 *  RAVN_MAX_FILTER     entries of each configured exclude map
 *  RAVN_FILTER_UIDS, RAVN_FILTER_COMMS, RAVN_FILTER_CGROUPS   0/1
 *
 * Overhead: the fork/exit programs do one or two hash updates per new process and one delete per process exit;
 * per event, ravn_filtered is one hash lookup (plus one per enabled filter) and ravn_fill_hdr one LRU lookup.
 */
#ifndef RAVN_COMMON_BPF_H
#define RAVN_COMMON_BPF_H

#include <uapi/linux/ptrace.h>
#include "ravn_events.h"

#ifndef RAVN_RINGBUF_PAGES
#define RAVN_RINGBUF_PAGES 256
#endif
#ifndef RAVN_MAX_PROCS
#define RAVN_MAX_PROCS 32768
#endif
#ifndef RAVN_MAX_EXCLUDED
#define RAVN_MAX_EXCLUDED 4096
#endif
#ifndef RAVN_MAX_FILTER
#define RAVN_MAX_FILTER 256
#endif
#ifndef RAVN_FILTER_UIDS
#define RAVN_FILTER_UIDS 0
#endif
#ifndef RAVN_FILTER_COMMS
#define RAVN_FILTER_COMMS 0
#endif
#ifndef RAVN_FILTER_CGROUPS
#define RAVN_FILTER_CGROUPS 0
#endif

#define RAVN_CLONE_PARENT 0x00008000ULL
#define RAVN_CLONE_THREAD 0x00010000ULL

struct ravn_comm_key {
	char comm[RAVN_COMM_LEN];
};

BPF_RINGBUF_OUTPUT(ravn_events, RAVN_RINGBUF_PAGES);
BPF_PERCPU_ARRAY(ravn_drops, u64, 1);
BPF_TABLE("lru_hash", u32, u32, ravn_ppid, RAVN_MAX_PROCS);
BPF_HASH(ravn_excluded, u32, u8, RAVN_MAX_EXCLUDED);
#if RAVN_FILTER_UIDS
BPF_HASH(ravn_ex_uids, u32, u8, RAVN_MAX_FILTER);
#endif
#if RAVN_FILTER_COMMS
BPF_HASH(ravn_ex_comms, struct ravn_comm_key, u8, RAVN_MAX_FILTER);
#endif
#if RAVN_FILTER_CGROUPS
BPF_HASH(ravn_ex_cgroups, u64, u8, RAVN_MAX_FILTER);
#endif

/* Reserve a T in the ring buffer; NULL (and one more drop counted) when the ring is full. Submit with
 * ravn_submit(). (BCC forbids map methods inside macros: the macro only wraps the inline function.) */
#define RAVN_RESERVE(T) ((T *)ravn_reserve(sizeof(T)))

static __always_inline void *ravn_reserve_or_count(void *p)
{
	if (!p) {
		u32 zero = 0;
		u64 *d = ravn_drops.lookup(&zero);
		if (d)
			*d += 1; /* per-CPU slot: no atomic needed */
	}
	return p;
}

static __always_inline void *ravn_reserve(u64 size)
{
	return ravn_reserve_or_count(ravn_events.ringbuf_reserve(size));
}

static __always_inline void ravn_submit(void *p)
{
	ravn_events.ringbuf_submit(p, 0);
}

/* Count a drop that did not come from RAVN_RESERVE (e.g. a probe's own bounded map is full). */
static __always_inline void ravn_count_drop(void)
{
	ravn_reserve_or_count((void *)0);
}

static __always_inline int ravn_filtered(u64 pid_tgid, u64 uid_gid)
{
	u32 tgid = pid_tgid >> 32;
	if (ravn_excluded.lookup(&tgid))
		return 1;
#if RAVN_FILTER_UIDS
	u32 uid = (u32)uid_gid;
	if (ravn_ex_uids.lookup(&uid))
		return 1;
#endif
#if RAVN_FILTER_COMMS
	struct ravn_comm_key ck = {};
	bpf_get_current_comm(&ck.comm, sizeof(ck.comm));
	if (ravn_ex_comms.lookup(&ck))
		return 1;
#endif
#if RAVN_FILTER_CGROUPS
	u64 cg = bpf_get_current_cgroup_id();
	if (ravn_ex_cgroups.lookup(&cg))
		return 1;
#endif
	return 0;
}

static __always_inline void ravn_fill_hdr(struct ravn_hdr *h, u64 pid_tgid, u64 uid_gid, u32 type)
{
	u32 tgid = pid_tgid >> 32;
	u32 *pp = ravn_ppid.lookup(&tgid);
	h->ts_ns = bpf_ktime_get_ns();
	h->pid = tgid;
	h->tid = (u32)pid_tgid;
	h->ppid = pp ? *pp : 0;
	h->uid = (u32)uid_gid;
	h->gid = uid_gid >> 32;
	h->type = type;
	h->cgroup_id = bpf_get_current_cgroup_id();
	bpf_get_current_comm(&h->comm, sizeof(h->comm));
}

/* task:task_newtask (see /sys/kernel/tracing/events/task/task_newtask/format) */
struct ravn_newtask_args {
	u64 __common;
	s32 pid;                    /* the new task's pid (a tid; == its tgid unless CLONE_THREAD) */
	char comm[RAVN_COMM_LEN];
	u64 clone_flags;            /* offset 32 */
	s16 oom_score_adj;
};

/* sched:sched_process_exit */
struct ravn_exit_args {
	u64 __common;
	char comm[RAVN_COMM_LEN];
	s32 pid;                    /* the exiting thread */
	s32 prio;
	u8 group_dead;              /* offset 32: last thread of the group */
};

/* Keep ravn_ppid and ravn_excluded in step with process creation. Call from the probe's task:task_newtask
 * program (see RAVN_PROC_PROGRAMS). */
static __always_inline int ravn_track_newtask(struct ravn_newtask_args *args)
{
	u64 flags = args->clone_flags;
	if (flags & RAVN_CLONE_THREAD)
		return 0;
	u32 child = args->pid;
	u32 creator = bpf_get_current_pid_tgid() >> 32;
	u32 parent = creator;
	if (flags & RAVN_CLONE_PARENT) {
		u32 *pp = ravn_ppid.lookup(&creator);
		parent = pp ? *pp : 0;
	}
	ravn_ppid.update(&child, &parent);
	if (ravn_excluded.lookup(&creator)) {
		u8 one = 1;
		ravn_excluded.update(&child, &one);
	}
	return 0;
}

/* Forget a thread group when its last thread exits. Call from the probe's sched:sched_process_exit program. */
static __always_inline int ravn_track_exit(struct ravn_exit_args *args)
{
	if (!args->group_dead)
		return 0;
	u32 tgid = bpf_get_current_pid_tgid() >> 32;
	ravn_ppid.delete(&tgid);
	ravn_excluded.delete(&tgid);
	return 0;
}

/* Every probe defines the two programs the base class attaches, ravn_on_newtask and ravn_on_exit, in its own
 * file (one program per tracepoint and probe, so a probe can add its own fork/exit work without a second
 * attachment): either with this macro, or by hand (do its work, then return ravn_track_newtask(args) /
 * ravn_track_exit(args)). */
#define RAVN_PROC_PROGRAMS                                                  \
	int ravn_on_newtask(struct ravn_newtask_args *args)                 \
	{                                                                   \
		return ravn_track_newtask(args);                            \
	}                                                                   \
	int ravn_on_exit(struct ravn_exit_args *args)                       \
	{                                                                   \
		return ravn_track_exit(args);                               \
	}

#endif /* RAVN_COMMON_BPF_H */
