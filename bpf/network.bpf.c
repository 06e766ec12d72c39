/* SPDX-License-Identifier: Apache-2.0
 *
 * network.bpf.c: the ebpf_network probe. TCP connect / accept / close, UDP sends to new destinations, bind and
 * listen, IPv4 and IPv6, loopback included, each with the owning process.
 *
 * What it traces (specific tracepoints only; never raw_syscalls):
 *   syscalls:sys_{enter,exit}_connect   destination from the user sockaddr, fd, result (process context)
 *   syscalls:sys_{enter,exit}_accept4/accept  new fd; the peer from the sockaddr the kernel wrote back
 *   syscalls:sys_{enter,exit}_bind, sys_{enter,exit}_listen
 *   syscalls:sys_exit_socket (+enter)   (tgid, fd) -> protocol, so bind/connect know tcp from udp
 *   syscalls:sys_{enter,exit}_sendto/sendmsg/sendmmsg  the destination of unconnected UDP sends
 *   sock:sock_send_length               the UDP send itself (process context; gives the struct sock)
 *   sock:inet_sock_set_state            TCP state changes: the source address/port of a connect, the listening
 *                                       port, the local side of accepted connections, closes
 *
 * Process context: inet_sock_set_state fires in softirq for the handshake and for most closing transitions; the
 * current task there is whoever the CPU interrupted (on loopback: usually the peer process). So:
 *   - ownership is only ever taken in process context: CLOSE->SYN_SENT runs inside connect(), CLOSE->LISTEN inside
 *     listen(), and the accept4 exit links the accepted socket (found by the peer address the kernel returned) to
 *     the accepting process; the owner's header is stored per struct sock (ravn_net_owner);
 *   - softirq transitions only complete what process context started: SYN_SENT->* gives the connect's source
 *     address and port (a non-blocking connect is reported when the handshake ends), SYN_RECV->ESTABLISHED
 *     records the local/peer tuple of a passive connection for the accept, and a close is reported for the
 *     stored owner.
 *
 * Overhead: per connect/accept/bind/listen a few map operations; per TCP connection about six state changes, each
 * a map lookup or two. The UDP path costs one program per send syscall (enter + exit, a map update/delete when
 * there is a destination) and one per sock_send_length (every socket send, TCP included: a two-field test for
 * non-UDP). A repeated UDP destination costs one LRU lookup and no event.
 *
 * Caveats:
 *   - sockets created before the probe started have no protocol entry: bind/connect report proto "" unless a TCP
 *     state change or a successful datagram connect tells; their closes are reported only on the two transitions
 *     that always run in the closing process (ESTABLISHED->FIN_WAIT1, CLOSE_WAIT->LAST_ACK);
 *   - accept(fd, NULL, NULL): the kernel returns no peer; user space resolves it from /proc/<pid>/fd and
 *     /proc/<pid>/net/tcp{,6} (best effort, the connection may already be gone). Such accepts are reported
 *     only for listening sockets created while the probe runs (others may be AF_UNIX: not worth a /proc read);
 *   - TCP Fast Open (sendto with MSG_FASTOPEN) connects without connect(): not reported as a connect;
 *   - UDP: the local side (and the destination of a send on a connected socket) is read from struct sock_common
 *     at fixed offsets (skc_daddr 0, skc_rcv_saddr 4, skc_dport 12, skc_num 14, skc_v6_daddr 56,
 *     skc_v6_rcv_saddr 72). These have not moved for a decade and are checked by the kernel tests against
 *     getsockname(); nothing else is read from kernel structures (the headers here are not the running kernel's);
 *   - UDP connect() reports no local address (no struct sock is reachable from the syscall); a udp_send's local
 *     address is the socket's bound address (0.0.0.0 or :: when unbound: the kernel picks the source per packet);
 *   - the seen-destination set is an LRU per (process, destination): a destination evicted by many others is
 *     reported again; sendmmsg() is checked by its first message's address only;
 *   - only AF_INET/AF_INET6 sockets; TCP state changes of MPTCP/SCTP sockets are ignored.
 */
#include "ravn_events.h"
#include "ravn_common.bpf.h"

RAVN_PROC_PROGRAMS

/* sock:inet_sock_set_state (offsets from its format file; test_network_abi.py checks them) */
struct net_set_state_args {
	u64 __common;
	const void *skaddr;   /* 8 */
	s32 oldstate;         /* 16 */
	s32 newstate;         /* 20 */
	u16 sport;            /* 24 */
	u16 dport;            /* 26 */
	u16 family;           /* 28 */
	u16 protocol;         /* 30 */
	u8 saddr[4];          /* 32 */
	u8 daddr[4];          /* 36 */
	u8 saddr_v6[16];      /* 40 */
	u8 daddr_v6[16];      /* 56 */
};
_Static_assert(sizeof(struct net_set_state_args) == 72, "inet_sock_set_state layout");

/* sock:sock_send_length */
struct net_send_length_args {
	u64 __common;
	const void *sk;       /* 8 */
	u16 family;           /* 16 */
	u16 protocol;         /* 18 */
	s32 ret;              /* 20 */
	s32 flags;            /* 24 */
};

#ifndef RAVN_NET_MAX_INFLIGHT
#define RAVN_NET_MAX_INFLIGHT 10240 /* concurrent connect/accept/bind/listen/send syscalls */
#endif
#ifndef RAVN_NET_MAX_SOCKS
#define RAVN_NET_MAX_SOCKS 65536    /* tracked sockets (owners, tuples, protocols) */
#endif
#ifndef RAVN_NET_MAX_UDP_SEEN
#define RAVN_NET_MAX_UDP_SEEN 65536 /* (process, UDP destination) pairs remembered */
#endif
#ifndef RAVN_NET_UDP
#define RAVN_NET_UDP 1              /* 0: no UDP send tracking (the send tracepoints are not even compiled) */
#endif

#define R_AF_INET 2
#define R_AF_INET6 10
#define R_IPPROTO_TCP 6
#define R_IPPROTO_UDP 17
#define R_SOCK_STREAM 1
#define R_SOCK_DGRAM 2
#define R_SOCK_TYPE_MASK 0xf
#define R_EINPROGRESS 115
#define R_EALREADY 114
#define R_EISCONN 106

#define TCP_ESTABLISHED 1
#define TCP_SYN_SENT 2
#define TCP_SYN_RECV 3
#define TCP_FIN_WAIT1 4
#define TCP_CLOSE 7
#define TCP_CLOSE_WAIT 8
#define TCP_LAST_ACK 9
#define TCP_LISTEN 10

/* in flight between a syscall's enter and exit, keyed by thread id */
struct net_call {
	struct ravn_net_event ev; /* filled progressively; hdr at exit */
	u64 skaddr;               /* the struct sock seen in a state change during the call */
	u64 uaddr;                /* accept: user sockaddr pointer */
	u32 seen_state;           /* 1 once a TCP state change of this call was seen */
	u32 pad;
};

struct net_tuple {
	u8 saddr[16];
	u8 daddr[16];
	u16 sport;
	u16 dport;
	u16 family;
	u16 pad;
	u64 skaddr;
};

struct net_peer_key {
	u8 addr[16];
	u16 port;
	u16 family;
	u32 pad;
};

struct net_fd_key {
	u32 tgid;
	s32 fd;
};

struct net_udp_key {
	u32 tgid;
	u16 port;
	u16 family;
	u8 addr[16];
};

BPF_HASH(net_calls, u32, struct net_call, RAVN_NET_MAX_INFLIGHT);
BPF_PERCPU_ARRAY(net_scratch, struct net_call, 1);
/* struct sock -> header of the process that connected / accepted it (taken in process context) */
BPF_TABLE("lru_hash", u64, struct ravn_hdr, net_owner, RAVN_NET_MAX_SOCKS);
/* struct sock -> connect result pending the end of the handshake (non-blocking connect) */
BPF_TABLE("lru_hash", u64, struct ravn_net_event, net_pending, RAVN_NET_MAX_INFLIGHT);
/* struct sock -> tuple once SYN_SENT ended (connect) */
BPF_TABLE("lru_hash", u64, struct net_tuple, net_active, RAVN_NET_MAX_SOCKS);
/* (family, peer address, peer port) -> local tuple + sock of an established passive connection, until accept */
BPF_TABLE("lru_hash", struct net_peer_key, struct net_tuple, net_passive, RAVN_NET_MAX_SOCKS);
/* (tgid, fd) -> IPPROTO_* of sockets created while the probe runs (AF_INET/AF_INET6 only) */
BPF_TABLE("lru_hash", struct net_fd_key, u32, net_fdproto, RAVN_NET_MAX_SOCKS);
#if RAVN_NET_UDP
BPF_TABLE("lru_hash", struct net_udp_key, u8, net_udp_seen, RAVN_NET_MAX_UDP_SEEN);
struct net_dest {
	u8 addr[16];
	u16 port; /* host order */
	u16 family;
	u32 pad;
};
BPF_HASH(net_send_dest, u32, struct net_dest, RAVN_NET_MAX_INFLIGHT);
#endif

static __always_inline struct net_call *net_new_call(void)
{
	u32 zero = 0;
	struct net_call *c = net_scratch.lookup(&zero);
	if (c)
		__builtin_memset(c, 0, sizeof(*c));
	return c;
}

/* Parse an AF_INET/AF_INET6 sockaddr from user memory: 0 on success. addr: 16 bytes, IPv4 in the first 4. */
static __always_inline int net_read_sockaddr(const void *uaddr, u8 *addr, u16 *port, u16 *family)
{
	u8 sa[28] = {};
	if (!uaddr)
		return -1;
	if (bpf_probe_read_user(sa, sizeof(sa), uaddr) != 0 && bpf_probe_read_user(sa, 16, uaddr) != 0)
		return -1;
	u16 fam = *(u16 *)&sa[0];
	u16 be_port = *(u16 *)&sa[2];
	if (fam == R_AF_INET) {
		__builtin_memcpy(addr, &sa[4], 4);
	} else if (fam == R_AF_INET6) {
		__builtin_memcpy(addr, &sa[8], 16);
	} else {
		return -1;
	}
	*family = fam;
	*port = __builtin_bswap16(be_port);
	return 0;
}

static __always_inline u32 net_fd_proto(u32 tgid, s32 fd)
{
	struct net_fd_key k = {.tgid = tgid, .fd = fd};
	u32 *p = net_fdproto.lookup(&k);
	return p ? *p : 0;
}

static __always_inline int net_submit(struct ravn_net_event *src)
{
	struct ravn_net_event *e = RAVN_RESERVE(struct ravn_net_event);
	if (!e)
		return 0;
	__builtin_memcpy(e, src, sizeof(*e));
	ravn_submit(e);
	return 0;
}

/* ------------------------------------------------------------------------------------------------- socket */

int ravn_net_enter_socket(struct ravn_sys_enter *args)
{
	int fam = args->a[0];
	if (fam != R_AF_INET && fam != R_AF_INET6)
		return 0;
	u64 id = bpf_get_current_pid_tgid();
	if (ravn_filtered(id, bpf_get_current_uid_gid()))
		return 0;
	int type = args->a[1] & R_SOCK_TYPE_MASK;
	int proto = args->a[2];
	if (proto == 0)
		proto = type == R_SOCK_STREAM ? R_IPPROTO_TCP : type == R_SOCK_DGRAM ? R_IPPROTO_UDP : 0;
	struct net_call *c = net_new_call();
	if (!c)
		return 0;
	c->ev.proto = proto;
	c->ev.family = fam;
	u32 tid = (u32)id;
	net_calls.update(&tid, c);
	return 0;
}

int ravn_net_exit_socket(struct ravn_sys_exit *args)
{
	u64 id = bpf_get_current_pid_tgid();
	u32 tid = (u32)id;
	struct net_call *c = net_calls.lookup(&tid);
	if (!c)
		return 0;
	if (args->ret >= 0) {
		struct net_fd_key k = {.tgid = id >> 32, .fd = args->ret};
		u32 proto = c->ev.proto;
		net_fdproto.update(&k, &proto);
	}
	net_calls.delete(&tid);
	return 0;
}

/* ------------------------------------------------------------------------------------------------ connect */

int ravn_net_enter_connect(struct ravn_sys_enter *args)
{
	u64 id = bpf_get_current_pid_tgid();
	if (ravn_filtered(id, bpf_get_current_uid_gid()))
		return 0;
	struct net_call *c = net_new_call();
	if (!c)
		return 0;
	if (net_read_sockaddr((const void *)args->a[1], c->ev.daddr, &c->ev.dport, &c->ev.family) != 0)
		return 0;
	c->ev.fd = (s32)args->a[0];
	c->ev.proto = net_fd_proto(id >> 32, (s32)args->a[0]);
	u32 tid = (u32)id;
	net_calls.update(&tid, c);
	return 0;
}

int ravn_net_exit_connect(struct ravn_sys_exit *args)
{
	u64 id = bpf_get_current_pid_tgid();
	u32 tid = (u32)id;
	struct net_call *c = net_calls.lookup(&tid);
	if (!c)
		return 0;
	long ret = args->ret;
	c->ev.ret = ret;
	ravn_fill_hdr(&c->ev.hdr, id, bpf_get_current_uid_gid(), RAVN_EVT_CONNECT);
	c->ev.flags |= RAVN_NET_F_NO_LOCAL;
	if (c->seen_state) {
		c->ev.proto = R_IPPROTO_TCP;
		struct net_tuple *t = net_active.lookup(&c->skaddr);
		if (t) {
			__builtin_memcpy(c->ev.saddr, t->saddr, 16);
			c->ev.sport = t->sport;
			c->ev.flags &= ~RAVN_NET_F_NO_LOCAL;
			net_active.delete(&c->skaddr);
		} else if (ret == -R_EINPROGRESS) {
			/* handshake still running: reported from the SYN_SENT->* state change */
			net_pending.update(&c->skaddr, &c->ev);
			net_calls.delete(&tid);
			return 0;
		}
	} else if (ret == -R_EALREADY || ret == -R_EISCONN) {
		/* a non-blocking connect polled again: already reported */
		net_calls.delete(&tid);
		return 0;
	} else if (ret == 0 && c->ev.proto == 0) {
		c->ev.proto = R_IPPROTO_UDP; /* success without a TCP state change: a datagram socket */
	}
	net_submit(&c->ev);
	net_calls.delete(&tid);
	return 0;
}

/* ------------------------------------------------------------------------------------------------- accept */

static __always_inline int net_accept_enter(int fd, const void *upeer)
{
	u64 id = bpf_get_current_pid_tgid();
	if (ravn_filtered(id, bpf_get_current_uid_gid()))
		return 0;
	struct net_call *c = net_new_call();
	if (!c)
		return 0;
	c->ev.fd = fd; /* the listening fd until exit */
	c->uaddr = (u64)upeer;
	u32 tid = (u32)id;
	net_calls.update(&tid, c);
	return 0;
}

static __always_inline int net_accept_exit(long ret)
{
	u64 id = bpf_get_current_pid_tgid();
	u32 tid = (u32)id;
	struct net_call *c = net_calls.lookup(&tid);
	if (!c)
		return 0;
	u32 tgid = id >> 32;
	s32 lfd = c->ev.fd;
	if (ret < 0)
		goto out;
	c->ev.fd = ret;
	c->ev.proto = R_IPPROTO_TCP;
	ravn_fill_hdr(&c->ev.hdr, id, bpf_get_current_uid_gid(), RAVN_EVT_ACCEPT);
	if (net_read_sockaddr((const void *)c->uaddr, c->ev.daddr, &c->ev.dport, &c->ev.family) == 0) {
		struct net_peer_key pk = {.port = c->ev.dport, .family = c->ev.family};
		__builtin_memcpy(pk.addr, c->ev.daddr, 16);
		struct net_tuple *t = net_passive.lookup(&pk);
		if (t) {
			__builtin_memcpy(c->ev.saddr, t->saddr, 16);
			c->ev.sport = t->sport;
			u64 sk = t->skaddr;
			net_owner.update(&sk, &c->ev.hdr);
			net_passive.delete(&pk);
		}
	} else {
		/* no peer buffer (or not AF_INET*): report only when the listening socket is known to be TCP */
		u32 proto = net_fd_proto(tgid, lfd);
		if (proto != R_IPPROTO_TCP)
			goto out;
		c->ev.flags |= RAVN_NET_F_PEER_UNKNOWN;
	}
	{
		struct net_fd_key k = {.tgid = tgid, .fd = ret};
		u32 proto = R_IPPROTO_TCP;
		net_fdproto.update(&k, &proto);
	}
	net_submit(&c->ev);
out:
	net_calls.delete(&tid);
	return 0;
}

/* attached to sys_enter_accept4 and sys_enter_accept (same first two arguments) */
int ravn_net_enter_accept(struct ravn_sys_enter *args)
{
	return net_accept_enter(args->a[0], (const void *)args->a[1]);
}

/* attached to sys_exit_accept4 and sys_exit_accept */
int ravn_net_exit_accept(struct ravn_sys_exit *args)
{
	return net_accept_exit(args->ret);
}

/* --------------------------------------------------------------------------------------------------- bind */

int ravn_net_enter_bind(struct ravn_sys_enter *args)
{
	u64 id = bpf_get_current_pid_tgid();
	if (ravn_filtered(id, bpf_get_current_uid_gid()))
		return 0;
	struct net_call *c = net_new_call();
	if (!c)
		return 0;
	if (net_read_sockaddr((const void *)args->a[1], c->ev.saddr, &c->ev.sport, &c->ev.family) != 0)
		return 0;
	c->ev.fd = (s32)args->a[0];
	c->ev.proto = net_fd_proto(id >> 32, (s32)args->a[0]);
	u32 tid = (u32)id;
	net_calls.update(&tid, c);
	return 0;
}

int ravn_net_exit_bind(struct ravn_sys_exit *args)
{
	u64 id = bpf_get_current_pid_tgid();
	u32 tid = (u32)id;
	struct net_call *c = net_calls.lookup(&tid);
	if (!c)
		return 0;
	c->ev.ret = args->ret;
	ravn_fill_hdr(&c->ev.hdr, id, bpf_get_current_uid_gid(), RAVN_EVT_BIND);
	net_submit(&c->ev);
	net_calls.delete(&tid);
	return 0;
}

/* ------------------------------------------------------------------------------------------------- listen */

int ravn_net_enter_listen(struct ravn_sys_enter *args)
{
	u64 id = bpf_get_current_pid_tgid();
	if (ravn_filtered(id, bpf_get_current_uid_gid()))
		return 0;
	struct net_call *c = net_new_call();
	if (!c)
		return 0;
	c->ev.fd = (s32)args->a[0];
	c->ev.backlog = (u32)args->a[1];
	c->ev.proto = R_IPPROTO_TCP;
	u32 tid = (u32)id;
	net_calls.update(&tid, c);
	return 0;
}

int ravn_net_exit_listen(struct ravn_sys_exit *args)
{
	u64 id = bpf_get_current_pid_tgid();
	u32 tid = (u32)id;
	struct net_call *c = net_calls.lookup(&tid);
	if (!c)
		return 0;
	/* only a socket that entered LISTEN now (an AF_INET* TCP socket) is reported */
	if (args->ret == 0 && c->seen_state) {
		c->ev.ret = 0;
		ravn_fill_hdr(&c->ev.hdr, id, bpf_get_current_uid_gid(), RAVN_EVT_LISTEN);
		net_submit(&c->ev);
	}
	net_calls.delete(&tid);
	return 0;
}

/* ------------------------------------------------------------------------------------ TCP state changes */

static __always_inline void net_copy_addrs(struct ravn_net_event *e, struct net_set_state_args *args)
{
	e->family = args->family;
	e->sport = args->sport;
	e->dport = args->dport;
	if (args->family == R_AF_INET) {
		__builtin_memcpy(e->saddr, args->saddr, 4);
		__builtin_memcpy(e->daddr, args->daddr, 4);
	} else {
		__builtin_memcpy(e->saddr, args->saddr_v6, 16);
		__builtin_memcpy(e->daddr, args->daddr_v6, 16);
	}
}

int ravn_net_set_state(struct net_set_state_args *args)
{
	if (args->protocol != R_IPPROTO_TCP)
		return 0;
	int oldstate = args->oldstate;
	int newstate = args->newstate;
	u64 sk = (u64)args->skaddr;

	if (newstate == TCP_SYN_SENT || newstate == TCP_LISTEN) {
		/* process context: inside connect() or listen() of the current thread */
		u64 id = bpf_get_current_pid_tgid();
		u32 tid = (u32)id;
		struct net_call *c = net_calls.lookup(&tid);
		if (!c)
			return 0;
		c->seen_state = 1;
		c->skaddr = sk;
		if (newstate == TCP_LISTEN) {
			struct ravn_net_event *e = &c->ev;
			net_copy_addrs(e, args);
			e->dport = 0;
			__builtin_memset(e->daddr, 0, 16);
		} else {
			struct ravn_hdr h = {};
			ravn_fill_hdr(&h, id, bpf_get_current_uid_gid(), RAVN_EVT_CLOSE);
			net_owner.update(&sk, &h);
		}
		return 0;
	}

	if (oldstate == TCP_SYN_SENT) {
		/* softirq (or the connecting thread): the handshake ended; the tuple is now complete */
		struct net_tuple t = {.sport = args->sport, .dport = args->dport, .family = args->family, .skaddr = sk};
		if (args->family == R_AF_INET) {
			__builtin_memcpy(t.saddr, args->saddr, 4);
			__builtin_memcpy(t.daddr, args->daddr, 4);
		} else {
			__builtin_memcpy(t.saddr, args->saddr_v6, 16);
			__builtin_memcpy(t.daddr, args->daddr_v6, 16);
		}
		struct ravn_net_event *p = net_pending.lookup(&sk);
		if (p) {
			__builtin_memcpy(p->saddr, t.saddr, 16);
			p->sport = t.sport;
			p->flags &= ~RAVN_NET_F_NO_LOCAL;
			net_submit(p);
			net_pending.delete(&sk);
		} else if (net_owner.lookup(&sk)) {
			net_active.update(&sk, &t);
		}
		if (newstate == TCP_CLOSE)
			net_owner.delete(&sk);
		return 0;
	}

	if (oldstate == TCP_SYN_RECV && newstate == TCP_ESTABLISHED) {
		/* softirq: a passive connection completed; the accept (process context) picks it up by peer */
		struct net_peer_key pk = {.port = args->dport, .family = args->family};
		struct net_tuple t = {.sport = args->sport, .dport = args->dport, .family = args->family, .skaddr = sk};
		if (args->family == R_AF_INET) {
			__builtin_memcpy(pk.addr, args->daddr, 4);
			__builtin_memcpy(t.saddr, args->saddr, 4);
			__builtin_memcpy(t.daddr, args->daddr, 4);
		} else {
			__builtin_memcpy(pk.addr, args->daddr_v6, 16);
			__builtin_memcpy(t.saddr, args->saddr_v6, 16);
			__builtin_memcpy(t.daddr, args->daddr_v6, 16);
		}
		net_passive.update(&pk, &t);
		return 0;
	}

	if ((oldstate == TCP_ESTABLISHED || oldstate == TCP_CLOSE_WAIT) &&
	    (newstate == TCP_FIN_WAIT1 || newstate == TCP_LAST_ACK || newstate == TCP_CLOSE)) {
		/* the local side closes (or the connection is reset): once per connection */
		struct net_call *c = net_new_call();
		if (!c)
			return 0;
		struct ravn_net_event *e = &c->ev;
		struct ravn_hdr *owner = net_owner.lookup(&sk);
		if (owner) {
			__builtin_memcpy(&e->hdr, owner, sizeof(e->hdr));
			e->hdr.ts_ns = bpf_ktime_get_ns();
			e->hdr.type = RAVN_EVT_CLOSE;
			net_owner.delete(&sk);
		} else if (newstate == TCP_FIN_WAIT1 || newstate == TCP_LAST_ACK) {
			/* not seen opening; these two transitions only happen in close()/shutdown() of the process */
			u64 id = bpf_get_current_pid_tgid();
			u64 ug = bpf_get_current_uid_gid();
			if (ravn_filtered(id, ug))
				return 0;
			ravn_fill_hdr(&e->hdr, id, ug, RAVN_EVT_CLOSE);
		} else {
			return 0;
		}
		net_copy_addrs(e, args);
		e->proto = R_IPPROTO_TCP;
		e->fd = -1;
		net_active.delete(&sk);
		net_submit(e);
		return 0;
	}
	if (newstate == TCP_CLOSE) {
		net_owner.delete(&sk);
		net_active.delete(&sk);
	}
	return 0;
}

/* ----------------------------------------------------------------------------------------------- UDP sends */
#if RAVN_NET_UDP

static __always_inline int net_send_enter(const void *uaddr)
{
	u64 id = bpf_get_current_pid_tgid();
	u32 tid = (u32)id;
	if (!uaddr)
		return 0;
	struct net_dest d = {};
	if (net_read_sockaddr(uaddr, d.addr, &d.port, &d.family) != 0)
		return 0;
	if (ravn_filtered(id, bpf_get_current_uid_gid()))
		return 0;
	net_send_dest.update(&tid, &d);
	return 0;
}

static __always_inline int net_send_exit(void)
{
	u32 tid = (u32)bpf_get_current_pid_tgid();
	net_send_dest.delete(&tid);
	return 0;
}

int ravn_net_enter_sendto(struct ravn_sys_enter *args)
{
	return net_send_enter((const void *)args->a[4]);
}

int ravn_net_enter_sendmsg(struct ravn_sys_enter *args)
{
	/* struct user_msghdr starts with void *msg_name (user ABI, stable) */
	void *name = 0;
	if (bpf_probe_read_user(&name, sizeof(name), (const void *)args->a[1]) != 0)
		return 0;
	return net_send_enter(name);
}

int ravn_net_enter_sendmmsg(struct ravn_sys_enter *args)
{
	/* first message only: struct mmsghdr starts with struct user_msghdr */
	void *name = 0;
	if (bpf_probe_read_user(&name, sizeof(name), (const void *)args->a[1]) != 0)
		return 0;
	return net_send_enter(name);
}

/* attached to sys_exit_sendto, sys_exit_sendmsg and sys_exit_sendmmsg */
int ravn_net_exit_send(struct ravn_sys_exit *args)
{
	return net_send_exit();
}

int ravn_net_send_length(struct net_send_length_args *args)
{
	if (args->protocol != R_IPPROTO_UDP || args->ret < 0)
		return 0;
	u16 fam = args->family;
	if (fam != R_AF_INET && fam != R_AF_INET6)
		return 0;
	u64 id = bpf_get_current_pid_tgid();
	u32 tid = (u32)id;
	const char *sk = (const char *)args->sk;
	struct net_udp_key k = {.tgid = id >> 32, .family = fam};
	struct net_dest *d = net_send_dest.lookup(&tid);
	if (d) {
		k.port = d->port;
		k.family = d->family;
		__builtin_memcpy(k.addr, d->addr, 16);
	} else {
		/* connected socket (send/write without an address): the destination is the socket's peer */
		u16 be_port = 0;
		bpf_probe_read_kernel(&be_port, 2, sk + 12);
		k.port = __builtin_bswap16(be_port);
		if (fam == R_AF_INET)
			bpf_probe_read_kernel(k.addr, 4, sk + 0);
		else
			bpf_probe_read_kernel(k.addr, 16, sk + 56);
		if (k.port == 0)
			return 0;
		if (ravn_filtered(id, bpf_get_current_uid_gid()))
			return 0;
	}
	if (net_udp_seen.lookup(&k))
		return 0;
	u8 one = 1;
	net_udp_seen.update(&k, &one);
	struct ravn_net_event *e = RAVN_RESERVE(struct ravn_net_event);
	if (!e)
		return 0;
	__builtin_memset(e, 0, sizeof(*e));
	ravn_fill_hdr(&e->hdr, id, bpf_get_current_uid_gid(), RAVN_EVT_UDP_SEND);
	e->family = k.family;
	e->proto = R_IPPROTO_UDP;
	e->dport = k.port;
	__builtin_memcpy(e->daddr, k.addr, 16);
	bpf_probe_read_kernel(&e->sport, 2, sk + 14);
	if (k.family == R_AF_INET)
		bpf_probe_read_kernel(e->saddr, 4, sk + 4);
	else
		bpf_probe_read_kernel(e->saddr, 16, sk + 72);
	e->fd = -1;
	ravn_submit(e);
	return 0;
}

#endif /* RAVN_NET_UDP */
