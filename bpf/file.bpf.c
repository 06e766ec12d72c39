/* SPDX-License-Identifier: Apache-2.0
 *
 * file.bpf.c: the ebpf_file probe. Opens, unlinks, renames, chmods, chowns, links, symlinks and truncates of
 * watched paths, filtered in the kernel by path prefix.
 *
 * What it traces (specific syscall tracepoints only; never raw_syscalls): one program, ravn_file_enter, on the
 * sys_enter_* tracepoint of open, openat, openat2, creat, unlink, unlinkat, rmdir, rename, renameat, renameat2,
 * chmod, fchmodat, fchmodat2, fchmod (setuid/setgid modes only), chown, lchown, fchownat, link, linkat, symlink,
 * symlinkat, truncate, chdir and fchdir (it dispatches on the x86_64 syscall number), and one, ravn_file_exit, on their
 * sys_exit_* tracepoints: it adds the result and submits the record kept since the enter.
 *
 * Matching: ravn_file_rules is an LPM trie keyed by path bytes; user space inserts one entry per configured
 * prefix with its class (read: every open is reported; write: opens with write intent and every change;
 * exclude: nothing). The longest (most specific) matching prefix decides. A prefix may hold ONE whole-component
 * wildcard, "/home/X/.ssh/" with X = '*': its root ("/home/") goes in ravn_file_wild, and a path under that root
 * is looked up a second time with its first component after the root replaced by '*'. Everything is bounded:
 * one or two trie lookups per path, fixed-size compares.
 * Suffixes: when no prefix (or only an exec-grant one) matches an absolute path, its last 16 bytes are compared
 * with the entries of ravn_file_suffix (at most RAVN_FILE_MAX_SUFFIX, each at most 16 bytes, with a class like a
 * prefix's): names that matter wherever they live, e.g. "/mem" and "/environ" (/proc/<pid>/task/<tid>/mem: a
 * second wildcard the trie cannot hold) or ".pth" and "sitecustomize.py" (Python start-up hooks in any
 * site-packages directory, a venv's under /tmp too).
 * Cost: a few shifts and two masked compares per entry, no extra read (the path is already in map memory).
 * chattr: ravn_file_ioctl_enter/exit on syscalls:sys_enter/exit_ioctl report FS_IOC_SETFLAGS and
 * FS_IOC_FSSETXATTR (file attributes: immutable, append-only) on any file, by fd (the path is read from
 * /proc/<pid>/fd at decode time); every other ioctl costs one compare at enter and one array read at exit.
 *   Always reported: chmod/fchmod that sets S_ISUID or S_ISGID (whatever the path), chmod/fchmod that grants write
 *   to others (S_IWOTH: chmod 777, a+rwx, o+w) unless it also sets the sticky bit (RAVN_FILE_WORLD_WRITABLE,
 *   RAVN_FILE_F_PERM), and the event types named in RAVN_FILE_ALL_MASK (default: rename, so a mass-rename rule
 *   sees every rename), and under the exec-grant prefixes (FILE_CLASS_EXEC_GRANT: temp dirs by default) a chmod
 *   that leaves an execute bit set (a dropper's chmod +x), nothing else there.
 *
 * Overhead: each traced syscall costs one program run: a user-string read (<= 256 bytes) and one LPM lookup
 * (two under a wildcard root); a hash update + a ring record only for reported events. The exit program costs
 * one hash lookup for the traced syscalls. Opens are by far the most frequent: the read set is kept small
 * (credentials, keys, history) so the loader's reads of /etc/ld.so.cache and /usr/lib are not reported.
 *
 * Caveats:
 *   - relative paths (openat(AT_FDCWD, "shadow") in /etc) cannot be prefix-matched here. With
 *     RAVN_FILE_RELATIVE=1 a relative path is sent to user space when the open has write intent, for every
 *     change (unlink, rename, ...), and for a read open whose last component, or whose parent directory, is in
 *     ravn_file_names (the last component of each read prefix - "shadow", ".ssh" - and the configured
 *     relative_names - "id_rsa", "mem"...: "./shadow", "../etc/shadow", ".ssh/id_rsa" in $HOME; one scan of the
 *     path and at most two hash lookups); user space joins it with the cwd the kernel kept for the process
 *     (ravn_file_cwd: its last absolute chdir, inherited at fork, seeded from /proc at start; sent in newpath
 *     of one-path events, RAVN_FILE_F_CWD) or else with /proc/<pid>/cwd (or the dirfd's path) when the record is decoded, and
 *     applies the same prefixes. After a relative chdir or fchdir the kernel forgets the cwd, so a process that
 *     did one and is gone before its record is decoded is not resolved (counted, dropped). Relative read opens
 *     of other names are not seen at all (`cd /root/.ssh; cat backup_of_key` is missed: add the name to
 *     relative_names). chdir and fchdir are traced for this and never reported;
 *   - fchmod (setuid/setgid) names its file by fd: the path is read from /proc/<pid>/fd/<fd> at decode time
 *     (empty if the fd is closed by then; it shows the file's current name if it was renamed);
 *   - an absolute path with an empty, "." or ".." component ("/etc//shadow", "/tmp/../etc/shadow") would slip
 *     past the prefixes as passed. With RAVN_FILE_NORMALIZE=1 (default) every such path is sent to user space
 *     (RAVN_FILE_F_NORMALIZE: one scan of the path, only for those), which normalises it lexically and applies
 *     the same prefixes; the ones that match nothing are dropped there (counted: normalized_filtered). Lexical:
 *     ".." after a symlinked directory is taken as written. Symlinked, hard-linked and bind-mounted aliases and
 *     /proc/<pid>/root paths are not resolved;
 *   - paths longer than 255 bytes are cut (RAVN_FILE_F_TRUNCATED); fd-based calls other than fchmod
 *     (fchown, ftruncate, write on an already open fd) are not traced;
 *   - x86_64 syscall numbers (the dispatch); io_uring opens (IORING_OP_OPENAT) bypass syscalls entirely.
 */
#include "ravn_events.h"
#include "ravn_common.bpf.h"

#ifndef RAVN_FILE_MAX_CWD
#define RAVN_FILE_MAX_CWD 8192 /* processes whose cwd the kernel keeps (LRU, 256 bytes each) */
#endif

/* The cwd each process last entered by an absolute chdir, inherited at fork, deleted at exit and on a relative
 * chdir or fchdir (which the kernel cannot join); seeded by user space from /proc/<pid>/cwd at start. A relative
 * one-path event (open, chmod, unlink...) of a process that has one carries it in newpath (RAVN_FILE_F_CWD), so
 * user space can resolve the path after the process is gone ("cd /etc && cat ./shadow" exits long before its
 * record is decoded). */
struct file_cwd {
	char path[RAVN_FILE_PATH_MAX];
};
BPF_TABLE("lru_hash", u32, struct file_cwd, ravn_file_cwd, RAVN_FILE_MAX_CWD);

int ravn_on_newtask(struct ravn_newtask_args *args)
{
	if (!(args->clone_flags & RAVN_CLONE_THREAD)) {
		u32 creator = bpf_get_current_pid_tgid() >> 32;
		u32 child = args->pid;
		struct file_cwd *cwd = ravn_file_cwd.lookup(&creator);
		if (cwd)
			ravn_file_cwd.update(&child, cwd);
	}
	return ravn_track_newtask(args);
}

int ravn_on_exit(struct ravn_exit_args *args)
{
	if (args->group_dead) {
		u32 tgid = bpf_get_current_pid_tgid() >> 32;
		ravn_file_cwd.delete(&tgid);
	}
	return ravn_track_exit(args);
}

#ifndef RAVN_FILE_MAX_RULES
#define RAVN_FILE_MAX_RULES 1024
#endif
#ifndef RAVN_FILE_MAX_INFLIGHT
#define RAVN_FILE_MAX_INFLIGHT 8192
#endif
#ifndef RAVN_FILE_ALL_MASK
#define RAVN_FILE_ALL_MASK (1 << RAVN_EVT_RENAME) /* event types reported for every path */
#endif
#ifndef RAVN_FILE_RELATIVE
#define RAVN_FILE_RELATIVE 1
#endif
#ifndef RAVN_FILE_NORMALIZE
#define RAVN_FILE_NORMALIZE 1
#endif
#ifndef RAVN_FILE_WORLD_WRITABLE /* report every chmod that grants write to others (not sticky dirs) */
#define RAVN_FILE_WORLD_WRITABLE 1
#endif
#define RAVN_FILE_MAX_WILD 4   /* wildcard roots (map size) */
#ifndef RAVN_FILE_N_WILD
#define RAVN_FILE_N_WILD RAVN_FILE_MAX_WILD /* roots in use: the loop below runs this many times (0: none) */
#endif
#define RAVN_FILE_MAX_SUFFIX 8 /* suffix entries (map size) */
#ifndef RAVN_FILE_N_SUFFIX
#define RAVN_FILE_N_SUFFIX 0   /* suffixes in use: the loop below runs this many times */
#endif
#define RAVN_FILE_WILD_LEN 32  /* a root is at most 31 bytes */
#define RAVN_FILE_COMP_MAX 64  /* the wildcard component is at most 63 bytes */
#define RAVN_FILE_NAME_LEN 32  /* basenames of read prefixes (relative read opens) */
#define RAVN_FILE_SCAN 64      /* bytes at the end of a relative path searched for its last two components */

#define FILE_CLASS_READ 1
#define FILE_CLASS_WRITE 2
#define FILE_CLASS_EXCLUDE 4
#define FILE_CLASS_EXEC_GRANT 8 /* a chmod leaving an execute bit set is reported; nothing else is */

#define R_O_WRONLY 01
#define R_O_RDWR 02
#define R_O_CREAT 0100
#define R_O_TRUNC 01000
#define R_S_ISUID 04000
#define R_S_ISGID 02000
#define R_S_ISVTX 01000
#define R_S_IWOTH 02
#define R_S_IXALL 0111

/* chmod 777 / a+rwx / o+w: write for others, except a sticky directory (1777: a shared temp dir) */
static __always_inline int file_world_writable(u32 mode)
{
	return (mode & R_S_IWOTH) && !(mode & R_S_ISVTX);
}
#define R_AT_FDCWD -100
#define RAVN_FILE_CHDIR 0xffff /* not an event type: a chdir/fchdir kept from enter to exit to track the cwd */

struct file_key {
	u32 prefixlen; /* bits */
	char data[RAVN_FILE_PATH_MAX];
};
struct file_rule {
	u32 klass;     /* FILE_CLASS_* */
	u32 len;       /* prefix length in bytes: the most specific of two matches wins */
};
struct file_wild_root {
	u64 w[RAVN_FILE_WILD_LEN / 8];    /* the root, zero-padded */
	u64 mask[RAVN_FILE_WILD_LEN / 8]; /* 0xff for each byte of the root */
	u32 len;
	u32 pad;
};
/* a suffix, right-aligned in 16 bytes (little-endian words: the path's last byte is the top byte of w[1]) */
struct file_suffix {
	u64 w[2];
	u64 mask[2];
	u32 klass;
	u32 len;      /* bytes, 1..16 */
};
struct file_name_key {
	char s[RAVN_FILE_NAME_LEN];
};

BPF_LPM_TRIE(ravn_file_rules, struct file_key, struct file_rule, RAVN_FILE_MAX_RULES);
BPF_ARRAY(ravn_file_wild, struct file_wild_root, RAVN_FILE_MAX_WILD);
BPF_HASH(ravn_file_names, struct file_name_key, u8, 256);
BPF_ARRAY(ravn_file_suffix, struct file_suffix, RAVN_FILE_MAX_SUFFIX);
struct file_slashes {
	u32 last;
	u32 prev;
	u32 len; /* of the last relative path classified, NUL included */
};
BPF_PERCPU_ARRAY(ravn_file_slash, struct file_slashes, 1);
BPF_PERCPU_ARRAY(ravn_file_keys, struct file_key, 2);
BPF_PERCPU_ARRAY(ravn_file_scratch, struct ravn_file_event, 1);
BPF_HASH(ravn_file_inflight, u32, struct ravn_file_event, RAVN_FILE_MAX_INFLIGHT);

#if RAVN_FILE_NORMALIZE
/* Whether the absolute path b (n bytes with its NUL) has "//", "/./", "/../" or ends in "/." or "/..". One pass;
 * b[i + 1] is at most the NUL, and b[i + 2], b[i + 3] are read only after a '.' that is not the NUL. */
static __always_inline int file_unnormal(const char *b, long n)
{
	for (u32 i = 0; i < RAVN_FILE_PATH_MAX - 3; i++) {
		if (i + 1 >= n)
			break;
		if (b[i] != '/')
			continue;
		char c1 = b[i + 1];
		if (c1 == '/')
			return 1;
		if (c1 != '.')
			continue;
		char c2 = b[i + 2];
		if (c2 == '/' || c2 == 0)
			return 1;
		if (c2 == '.') {
			char c3 = b[i + 3];
			if (c3 == '/' || c3 == 0)
				return 1;
		}
	}
	return 0;
}
#endif

#if RAVN_FILE_N_SUFFIX > 0
/* bytes 0..b-1 of a little-endian word (b in 0..8) */
static __always_inline u64 file_low_bytes(u64 v, u32 b)
{
	if (b >= 8)
		return v;
	return v & ((1ULL << (b * 8)) - 1);
}

/* The class of the first ravn_file_suffix entry the path (data, len bytes without the NUL) ends with, or 0. The
 * last 16 bytes are taken as two words; a shorter path is masked to its length and shifted to the right edge. */
static __always_inline u32 file_suffix_class(const char *data, long len)
{
	if (len <= 0)
		return 0;
	u64 t[2] = {};
	if (len >= 16) {
		bpf_probe_read_kernel(t, sizeof(t), data + ((len - 16) & (RAVN_FILE_PATH_MAX - 1)));
	} else {
		bpf_probe_read_kernel(t, sizeof(t), data); /* bytes from len on are stale: masked off */
		u32 l = len;
		u64 lo = file_low_bytes(t[0], l), hi = l > 8 ? file_low_bytes(t[1], l - 8) : 0;
		u32 sh = (16 - l) * 8; /* 8..120 */
		if (sh >= 64) {
			hi = lo << (sh - 64);
			lo = 0;
		} else {
			hi = (hi << sh) | (lo >> (64 - sh));
			lo = lo << sh;
		}
		t[0] = lo;
		t[1] = hi;
	}
	for (u32 i = 0; i < RAVN_FILE_N_SUFFIX && i < RAVN_FILE_MAX_SUFFIX; i++) {
		u32 idx = i;
		struct file_suffix *f = ravn_file_suffix.lookup(&idx);
		if (!f || f->len == 0 || f->len > len)
			continue;
		if ((t[0] & f->mask[0]) == f->w[0] && (t[1] & f->mask[1]) == f->w[1])
			return f->klass;
	}
	return 0;
}
#endif

/* Read the user path into dst (the event's field) and classify it. Returns the FILE_CLASS_* of the most
 * specific matching prefix (0: none); rel_flag is set in *why when the path does not start with '/', norm_flag
 * when it is absolute but not normal (file_unnormal). */
static __always_inline u32 file_classify(const char *upath, char *dst, u32 *why, u32 rel_flag, u32 norm_flag)
{
	u32 zero = 0, one = 1;
	struct file_key *k = ravn_file_keys.lookup(&zero);
	struct file_key *k2 = ravn_file_keys.lookup(&one);
	if (!k || !k2 || !upath)
		return 0;
	long n = bpf_probe_read_user_str(k->data, sizeof(k->data), upath);
	if (n <= 0)
		return 0;
	bpf_probe_read_kernel(dst, RAVN_FILE_PATH_MAX, k->data);
	if (n >= RAVN_FILE_PATH_MAX)
		*why |= RAVN_FILE_F_TRUNCATED;
	if (k->data[0] != '/') {
		*why |= rel_flag;
#if RAVN_FILE_RELATIVE
		struct file_slashes *sl = ravn_file_slash.lookup(&zero);
		if (sl)
			sl->len = n; /* for file_relative_name */
#endif
		return 0;
	}
#if RAVN_FILE_NORMALIZE
	if (file_unnormal(k->data, n))
		*why |= norm_flag;
#endif
	k->prefixlen = (n - 1) * 8;
#if RAVN_FILE_N_SUFFIX > 0
	{
		struct file_slashes *sl = ravn_file_slash.lookup(&zero);
		if (sl)
			sl->len = n; /* for file_suffix_class */
	}
#endif
	u32 klass = 0, best = 0;
	struct file_rule *r = ravn_file_rules.lookup(k);
	if (r) {
		klass = r->klass;
		best = r->len;
	}
	for (u32 i = 0; i < RAVN_FILE_N_WILD && i < RAVN_FILE_MAX_WILD; i++) {
		u32 idx = i;
		struct file_wild_root *w = ravn_file_wild.lookup(&idx);
		if (!w)
			continue;
		u32 wl = w->len & (RAVN_FILE_WILD_LEN - 1); /* bounded for the verifier; user space keeps it < 31 */
		if (wl == 0 || wl == RAVN_FILE_WILD_LEN - 1)
			continue;
		/* root compare: 4 masked words (user space zero-pads the root and sets mask bytes to 0xff) */
		u64 words[RAVN_FILE_WILD_LEN / 8];
		bpf_probe_read_kernel(words, sizeof(words), k->data);
		if (((words[0] & w->mask[0]) != w->w[0]) || ((words[1] & w->mask[1]) != w->w[1]) ||
		    ((words[2] & w->mask[2]) != w->w[2]) || ((words[3] & w->mask[3]) != w->w[3]))
			continue;
		char comp[RAVN_FILE_COMP_MAX];
		bpf_probe_read_kernel(comp, sizeof(comp), &k->data[wl]);
		u32 end = 0;
		for (u32 j = 1; j < RAVN_FILE_COMP_MAX; j++) {
			if (comp[j] == '/') {
				end = wl + j;
				break;
			}
			if (comp[j] == 0)
				break;
		}
		if (!end)
			continue;
		/* k2 = root + "*" + path[end:] */
		bpf_probe_read_kernel(k2->data, RAVN_FILE_WILD_LEN, w->w);
		u32 off = wl;
		k2->data[off] = '*';
		long m = bpf_probe_read_user_str(&k2->data[off + 1],
						 RAVN_FILE_PATH_MAX - RAVN_FILE_WILD_LEN, upath + end);
		if (m <= 0)
			continue;
		k2->prefixlen = (off + m) * 8;
		struct file_rule *r2 = ravn_file_rules.lookup(k2);
		if (r2 && r2->len > best) {
			klass = r2->klass;
			best = r2->len;
		}
	}
	if (klass)
		*why |= RAVN_FILE_F_MATCHED;
	return klass;
}

#if RAVN_FILE_RELATIVE
/* Whether the component of the user path that starts at byte start is one of ravn_file_names. Read again from
 * user memory: start is then plain data to the verifier (no pointer arithmetic on a map value), so it need not
 * be tracked precisely, and the scan loop below does not multiply verifier states. */
static __always_inline int file_name_at(const char *upath, u32 start)
{
	char raw[RAVN_FILE_NAME_LEN] = {};
	bpf_probe_read_user_str(raw, sizeof(raw), upath + (start & (RAVN_FILE_PATH_MAX - 1)));
	struct file_name_key nk = {};
	/* copy up to the '/' or NUL; the rest of the key stays zero (a copy that stops, not a flag that zeroes:
	 * the verifier sees 32 ways out of the loop instead of 2^32 stack contents) */
	for (int j = 0; j < RAVN_FILE_NAME_LEN; j++) {
		char c = raw[j];
		if (c == '/' || c == 0)
			break;
		nk.s[j] = c;
	}
	return nk.s[0] && ravn_file_names.lookup(&nk) != 0;
}

/* A relative path whose last component ("./shadow", "../etc/shadow", "etc/shadow") or whose parent directory
 * (".ssh/id_rsa") is in ravn_file_names: worth resolving in user space. One scan of the path (the event's copy)
 * for its last two slashes, then at most two hash lookups. */
static __always_inline int file_relative_name(const char *path, const char *upath)
{
	/* 1 + the index of the last '/' and of the one before (0: none), kept in map memory rather than registers:
	 * the verifier then sees one state per iteration instead of one per (last, prev) pair (E2BIG otherwise) */
	u32 zero = 0;
	struct file_slashes *sl = ravn_file_slash.lookup(&zero);
	if (!sl)
		return 0;
	sl->last = 0;
	sl->prev = 0;
	/* only the last RAVN_FILE_SCAN bytes: the two components that matter are short (names < 32 bytes), and a
	 * longer loop is more than the verifier will walk */
	u32 len = sl->len;
	u32 off = len > RAVN_FILE_SCAN + 1 ? len - RAVN_FILE_SCAN - 1 : 0;
	for (u32 j = 0; j < RAVN_FILE_SCAN; j++) {
		u32 i = (off + j) & (RAVN_FILE_PATH_MAX - 1);
		char c = path[i];
		if (c == 0)
			break;
		if (c == '/') {
			sl->prev = sl->last;
			sl->last = i + 1;
		}
	}
	u32 last = sl->last, prev = sl->prev;
	if (off > 0 && last == 0)
		return 0; /* no slash in the window: the last component is longer than any name */
	if (file_name_at(upath, last))
		return 1;
	return last > 0 && (prev > 0 || off == 0) && file_name_at(upath, prev);
}

#endif

static __always_inline struct ravn_file_event *file_begin(u64 *id, u64 *ug)
{
	*id = bpf_get_current_pid_tgid();
	*ug = bpf_get_current_uid_gid();
	if (ravn_filtered(*id, *ug))
		return 0;
	u32 zero = 0;
	struct ravn_file_event *e = ravn_file_scratch.lookup(&zero);
	if (!e)
		return 0;
	e->ret = 0;
	e->size = 0;
	e->flags = 0;
	e->mode = 0;
	e->uid = 0;
	e->gid = 0;
	e->dirfd = R_AT_FDCWD;
	e->newdirfd = R_AT_FDCWD;
	e->why = 0;
	e->__pad = 0;
	e->newpath[0] = 0;
	return e;
}

/* Keep e until the syscall exits (ravn_file_exit adds the result and submits it). */
static __always_inline int file_keep(struct ravn_file_event *e, u64 id, u64 ug, u32 type)
{
	ravn_fill_hdr(&e->hdr, id, ug, type);
	u32 tid = (u32)id;
	if (ravn_file_inflight.update(&tid, e) != 0)
		ravn_count_drop();
	return 0;
}

/* Report decision for a change (not an open) of one or two paths. */
static __always_inline int file_change_wanted(u32 type, u32 c1, u32 c2, u32 why)
{
	if (why & (RAVN_FILE_F_NORMALIZE | RAVN_FILE_F_NEWNORMALIZE))
		return 1; /* the prefixes as passed say nothing: user space decides on the normal paths */
	if ((c1 & FILE_CLASS_EXCLUDE) && (c2 == 0 || (c2 & FILE_CLASS_EXCLUDE)))
		return 0;
	if ((c1 | c2) & (FILE_CLASS_READ | FILE_CLASS_WRITE))
		return 1;
	if (RAVN_FILE_ALL_MASK & (1 << type))
		return 1;
#if RAVN_FILE_RELATIVE
	if (why & (RAVN_FILE_F_RELATIVE | RAVN_FILE_F_NEWRELATIVE))
		return 1;
#endif
	return 0;
}

/* ------------------------------------------------------------------------------------------------- enter */

/* x86_64 syscall numbers of the traced syscalls (one program for all of them: the classifier is inlined once
 * per path instead of once per syscall, which keeps the compile short) */
#define NR_truncate 76
#define NR_rename 82
#define NR_chdir 80
#define NR_fchdir 81
#define NR_rmdir 84
#define NR_creat 85
#define NR_link 86
#define NR_unlink 87
#define NR_symlink 88
#define NR_chmod 90
#define NR_fchmod 91
#define NR_chown 92
#define NR_lchown 94
#define NR_open 2
#define NR_openat 257
#define NR_fchownat 260
#define NR_unlinkat 263
#define NR_renameat 264
#define NR_linkat 265
#define NR_symlinkat 266
#define NR_fchmodat 268
#define NR_renameat2 316
#define NR_openat2 437
#define NR_fchmodat2 452

/* attached to the sys_enter_* tracepoint of every syscall listed above */
int ravn_file_enter(struct ravn_sys_enter *args)
{
	u32 type = 0, flags = 0, mode = 0, uid = 0, gid = 0;
	s32 dfd = R_AT_FDCWD, ndfd = R_AT_FDCWD;
	s64 size = 0;
	const char *p1 = 0, *p2 = 0;
	int target = 0; /* p1 is a symlink target (text, never resolved) */
	/* one program on tracepoints of different record sizes: reading args->a[5] directly would exceed the
	 * smallest record (unlink's) and the attach would fail, so copy the argument words with a probe read */
	u64 a[6] = {};
	bpf_probe_read_kernel(a, sizeof(a), args->a);
	long nr = args->nr;
	switch (nr) {
	case NR_open:
		type = RAVN_EVT_OPEN; p1 = (const char *)a[0]; flags = a[1]; mode = a[2];
		break;
	case NR_openat:
		type = RAVN_EVT_OPEN; dfd = a[0]; p1 = (const char *)a[1]; flags = a[2]; mode = a[3];
		break;
	case NR_openat2: {
		u64 how[2] = {}; /* struct open_how: u64 flags, u64 mode, u64 resolve (user ABI) */
		bpf_probe_read_user(how, sizeof(how), (const void *)a[2]);
		type = RAVN_EVT_OPEN; dfd = a[0]; p1 = (const char *)a[1]; flags = how[0]; mode = how[1];
		break;
	}
	case NR_creat:
		type = RAVN_EVT_OPEN; p1 = (const char *)a[0]; flags = R_O_CREAT | R_O_WRONLY | R_O_TRUNC; mode = a[1];
		break;
	case NR_unlink:
		type = RAVN_EVT_UNLINK; p1 = (const char *)a[0];
		break;
	case NR_rmdir:
		type = RAVN_EVT_UNLINK; p1 = (const char *)a[0]; flags = 0x200; /* AT_REMOVEDIR */
		break;
	case NR_unlinkat:
		type = RAVN_EVT_UNLINK; dfd = a[0]; p1 = (const char *)a[1]; flags = a[2];
		break;
	case NR_chmod:
		type = RAVN_EVT_CHMOD; p1 = (const char *)a[0]; mode = a[1];
		break;
	case NR_fchmodat:
	case NR_fchmodat2:
		type = RAVN_EVT_CHMOD; dfd = a[0]; p1 = (const char *)a[1]; mode = a[2];
		flags = nr == NR_fchmodat2 ? a[3] : 0;
		break;
	case NR_fchmod:
		/* no path: reported only when it sets setuid/setgid; user space resolves the fd */
		type = RAVN_EVT_CHMOD; dfd = a[0]; mode = a[1];
		if (!(mode & (R_S_ISUID | R_S_ISGID)) && !(RAVN_FILE_WORLD_WRITABLE && file_world_writable(mode)))
			return 0;
		break;
	case NR_chown:
	case NR_lchown:
		type = RAVN_EVT_CHOWN; p1 = (const char *)a[0]; uid = a[1]; gid = a[2];
		flags = nr == NR_lchown ? 0x100 : 0; /* AT_SYMLINK_NOFOLLOW */
		break;
	case NR_fchownat:
		type = RAVN_EVT_CHOWN; dfd = a[0]; p1 = (const char *)a[1]; uid = a[2]; gid = a[3]; flags = a[4];
		break;
	case NR_truncate:
		type = RAVN_EVT_TRUNCATE; p1 = (const char *)a[0]; size = a[1];
		break;
	case NR_rename:
		type = RAVN_EVT_RENAME; p1 = (const char *)a[0]; p2 = (const char *)a[1];
		break;
	case NR_renameat:
	case NR_renameat2:
		type = RAVN_EVT_RENAME; dfd = a[0]; p1 = (const char *)a[1]; ndfd = a[2]; p2 = (const char *)a[3];
		flags = nr == NR_renameat2 ? a[4] : 0;
		break;
	case NR_link:
		type = RAVN_EVT_LINK; p1 = (const char *)a[0]; p2 = (const char *)a[1];
		break;
	case NR_linkat:
		type = RAVN_EVT_LINK; dfd = a[0]; p1 = (const char *)a[1]; ndfd = a[2]; p2 = (const char *)a[3];
		flags = a[4];
		break;
	case NR_symlink:
		type = RAVN_EVT_SYMLINK; p1 = (const char *)a[0]; p2 = (const char *)a[1]; target = 1;
		break;
	case NR_symlinkat:
		type = RAVN_EVT_SYMLINK; p1 = (const char *)a[0]; ndfd = a[1]; p2 = (const char *)a[2]; target = 1;
		break;
	case NR_chdir:
	case NR_fchdir:
		type = RAVN_FILE_CHDIR; p1 = nr == NR_chdir ? (const char *)a[0] : 0;
		break;
	default:
		return 0;
	}

	u64 id, ug;
	struct ravn_file_event *e = file_begin(&id, &ug);
	if (!e)
		return 0;
	e->path[0] = 0;
	u32 c1 = 0, c2 = 0;
	if (p1)
		c1 = file_classify(p1, e->path, &e->why, target ? 0 : RAVN_FILE_F_RELATIVE,
				   target ? 0 : RAVN_FILE_F_NORMALIZE);
#if RAVN_FILE_N_SUFFIX > 0
	/* suffixes: the first path of an open or a change when no prefix matched it (not a rename's or link's new
	 * name: renames are reported for every path by default), checked once, outside file_classify, so the
	 * verifier does not walk it for both paths. An exec-grant prefix (temp dirs: chmods only) does not hide
	 * them: a .pth written into a venv under /tmp is reported like one anywhere else. */
	if (p1 && !(c1 & ~FILE_CLASS_EXEC_GRANT) && !target && e->path[0] == '/') {
		u32 zero = 0;
		struct file_slashes *sl = ravn_file_slash.lookup(&zero);
		if (sl) {
			u32 cs = file_suffix_class(e->path, (long)sl->len - 1);
			if (cs) {
				c1 |= cs;
				e->why |= RAVN_FILE_F_MATCHED;
			}
		}
	}
#endif
	if (p2)
		c2 = file_classify(p2, e->newpath, &e->why, RAVN_FILE_F_NEWRELATIVE, RAVN_FILE_F_NEWNORMALIZE);

	int wanted = 0;
	if (type == RAVN_FILE_CHDIR) {
		/* kept to the exit, never reported: an absolute path becomes the cwd, anything else forgets it */
		if (!p1 || (e->why & (RAVN_FILE_F_RELATIVE | RAVN_FILE_F_TRUNCATED)))
			e->path[0] = 0;
		return file_keep(e, id, ug, type);
	}
	if (type == RAVN_EVT_OPEN) {
		int write = (flags & (R_O_WRONLY | R_O_RDWR | R_O_CREAT | R_O_TRUNC)) != 0;
		if (c1 & FILE_CLASS_EXCLUDE)
			wanted = 0;
		else if (c1 & FILE_CLASS_READ)
			wanted = 1;
		else if (c1 & FILE_CLASS_WRITE)
			wanted = write;
		else
			wanted = (RAVN_FILE_ALL_MASK & (1 << RAVN_EVT_OPEN)) != 0;
#if RAVN_FILE_RELATIVE
		if (!wanted && (e->why & RAVN_FILE_F_RELATIVE))
			wanted = write || file_relative_name(e->path, p1);
#endif
		if (e->why & RAVN_FILE_F_NORMALIZE)
			wanted = 1; /* the prefixes as passed say nothing: user space decides on the normal path */
	} else if (type == RAVN_EVT_CHMOD && (mode & (R_S_ISUID | R_S_ISGID))) {
		e->why |= RAVN_FILE_F_SETID | (p1 ? 0 : RAVN_FILE_F_FD);
		wanted = 1;
	} else if (type == RAVN_EVT_CHMOD && (c1 & FILE_CLASS_EXEC_GRANT) && (mode & R_S_IXALL)) {
		wanted = 1; /* a file in a temp dir made executable: F_MATCHED is set, user space keeps it */
	} else if (type == RAVN_EVT_CHMOD && RAVN_FILE_WORLD_WRITABLE && file_world_writable(mode)) {
		e->why |= RAVN_FILE_F_PERM | (p1 ? 0 : RAVN_FILE_F_FD);
		wanted = 1;
	} else {
		wanted = file_change_wanted(type, c1, c2, e->why);
	}
	if (!wanted)
		return 0;
	if (!(e->why & (RAVN_FILE_F_MATCHED | RAVN_FILE_F_RELATIVE | RAVN_FILE_F_NEWRELATIVE | RAVN_FILE_F_SETID |
			RAVN_FILE_F_PERM | RAVN_FILE_F_NORMALIZE | RAVN_FILE_F_NEWNORMALIZE)))
		e->why |= RAVN_FILE_F_ALL;
#if RAVN_FILE_RELATIVE
	if (!p2 && (e->why & RAVN_FILE_F_RELATIVE) && dfd == R_AT_FDCWD) { /* newpath is free: one-path events */
		u32 tgid = id >> 32;
		struct file_cwd *cwd = ravn_file_cwd.lookup(&tgid);
		if (cwd) {
			bpf_probe_read_kernel(e->newpath, RAVN_FILE_PATH_MAX, cwd->path);
			e->why |= RAVN_FILE_F_CWD;
		}
	}
#endif
	e->dirfd = dfd;
	e->newdirfd = ndfd;
	e->flags = flags;
	e->mode = mode;
	e->uid = uid;
	e->gid = gid;
	e->size = size;
	return file_keep(e, id, ug, type);
}

/* ---------------------------------------------------------------------------------------------------- chattr */
/* FS_IOC_SETFLAGS (_IOW('f', 2, long); the 32-bit-int variant too) and FS_IOC_FSSETXATTR (_IOW('X', 32, struct
 * fsxattr)): how chattr, xfs_io and a program of its own set immutable or append-only. Every other ioctl returns
 * after this compare; its exit after one array read (ravn_file_ioctls counts the calls in flight). */
#define R_FS_IOC_SETFLAGS 0x40086602U
#define R_FS_IOC32_SETFLAGS 0x40046602U
#define R_FS_IOC_FSSETXATTR 0x401c5820U
BPF_ARRAY(ravn_file_ioctls, s64, 1);

/* attached to syscalls:sys_enter_ioctl(fd, cmd, arg) */
int ravn_file_ioctl_enter(struct ravn_sys_enter *args)
{
	u32 cmd = (u32)args->a[1];
	if (cmd != R_FS_IOC_SETFLAGS && cmd != R_FS_IOC32_SETFLAGS && cmd != R_FS_IOC_FSSETXATTR)
		return 0;
	u64 id, ug;
	struct ravn_file_event *e = file_begin(&id, &ug);
	if (!e)
		return 0;
	u32 attrs = 0; /* the flags word, or fsxattr.fsx_xflags (its first member) */
	bpf_probe_read_user(&attrs, sizeof(attrs), (const void *)args->a[2]);
	e->path[0] = 0;
	e->dirfd = (s32)args->a[0];
	e->flags = cmd;
	e->mode = attrs;
	e->why = RAVN_FILE_F_FD;
	u32 zero = 0;
	s64 *n = ravn_file_ioctls.lookup(&zero);
	if (n)
		__sync_fetch_and_add(n, 1);
	return file_keep(e, id, ug, RAVN_EVT_CHATTR);
}

/* attached to syscalls:sys_exit_ioctl */
int ravn_file_ioctl_exit(struct ravn_sys_exit *args)
{
	u32 zero = 0;
	s64 *n = ravn_file_ioctls.lookup(&zero);
	if (!n || *n <= 0)
		return 0;
	u32 tid = (u32)bpf_get_current_pid_tgid();
	struct ravn_file_event *e = ravn_file_inflight.lookup(&tid);
	if (!e || e->hdr.type != RAVN_EVT_CHATTR)
		return 0;
	__sync_fetch_and_add(n, -1);
	e->ret = args->ret;
	if (ravn_events.ringbuf_output(e, RAVN_FILE_SHORT_SIZE, 0) != 0)
		ravn_count_drop();
	ravn_file_inflight.delete(&tid);
	return 0;
}

/* ---------------------------------------------------------------------------------------------------- exit */

/* attached to the sys_exit_* of every syscall above */
int ravn_file_exit(struct ravn_sys_exit *args)
{
	u32 tid = (u32)bpf_get_current_pid_tgid();
	struct ravn_file_event *e = ravn_file_inflight.lookup(&tid);
	if (!e)
		return 0;
	e->ret = args->ret;
	if (e->hdr.type == RAVN_FILE_CHDIR) {
		u32 tgid = e->hdr.pid;
		if (e->ret == 0 && e->path[0] == '/')
			ravn_file_cwd.update(&tgid, (struct file_cwd *)e->path);
		else if (e->ret == 0)
			ravn_file_cwd.delete(&tgid);
		ravn_file_inflight.delete(&tid);
		return 0;
	}
	/* one-path events leave newpath out of the record (360 instead of 616 bytes of ring space) */
	u64 size = e->newpath[0] ? sizeof(*e) : RAVN_FILE_SHORT_SIZE;
	if (ravn_events.ringbuf_output(e, size, 0) != 0)
		ravn_count_drop();
	ravn_file_inflight.delete(&tid);
	return 0;
}
