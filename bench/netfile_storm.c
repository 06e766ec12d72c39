/* Load generator for bench/netfile.py: one tight loop of a syscall pattern, prints ns per iteration.
 *   netfile_storm open  N PATH [wr]   openat(PATH) + close, read-only (or O_WRONLY with "wr")
 *   netfile_storm udp   N             sendto() of 1 byte to one loopback UDP destination
 *   netfile_storm tcp   N             connect() + accept() + close() of loopback TCP connections
 */
#define _GNU_SOURCE
#include <arpa/inet.h>
#include <fcntl.h>
#include <netinet/in.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <time.h>
#include <unistd.h>

static double now(void)
{
	struct timespec ts;
	clock_gettime(CLOCK_MONOTONIC, &ts);
	return ts.tv_sec * 1e9 + ts.tv_nsec;
}

int main(int argc, char **argv)
{
	if (argc < 3)
		return 2;
	long n = atol(argv[2]);
	double t0 = 0, t1 = 0;
	if (!strcmp(argv[1], "open")) {
		int flags = argc > 4 && !strcmp(argv[4], "wr") ? O_WRONLY | O_CREAT : O_RDONLY;
		t0 = now();
		for (long i = 0; i < n; i++) {
			int fd = openat(AT_FDCWD, argv[3], flags, 0600);
			if (fd < 0)
				return 1;
			close(fd);
		}
		t1 = now();
	} else if (!strcmp(argv[1], "udp")) {
		int r = socket(AF_INET, SOCK_DGRAM, 0), s = socket(AF_INET, SOCK_DGRAM, 0);
		struct sockaddr_in a = {.sin_family = AF_INET, .sin_addr.s_addr = htonl(INADDR_LOOPBACK)};
		socklen_t l = sizeof(a);
		bind(r, (struct sockaddr *)&a, sizeof(a));
		getsockname(r, (struct sockaddr *)&a, &l);
		int big = 1 << 20;
		setsockopt(r, SOL_SOCKET, SO_RCVBUF, &big, sizeof(big));
		char buf[64];
		t0 = now();
		for (long i = 0; i < n; i++) {
			sendto(s, "x", 1, 0, (struct sockaddr *)&a, sizeof(a));
			recv(r, buf, sizeof(buf), 0);
		}
		t1 = now();
	} else if (!strcmp(argv[1], "tcp")) {
		int ls = socket(AF_INET, SOCK_STREAM, 0);
		struct sockaddr_in a = {.sin_family = AF_INET, .sin_addr.s_addr = htonl(INADDR_LOOPBACK)};
		socklen_t l = sizeof(a);
		bind(ls, (struct sockaddr *)&a, sizeof(a));
		listen(ls, 128);
		getsockname(ls, (struct sockaddr *)&a, &l);
		t0 = now();
		for (long i = 0; i < n; i++) {
			int c = socket(AF_INET, SOCK_STREAM, 0);
			if (connect(c, (struct sockaddr *)&a, sizeof(a)) != 0)
				return 1;
			int s = accept(ls, NULL, NULL);
			close(c);
			close(s);
		}
		t1 = now();
	} else {
		return 2;
	}
	printf("%.1f\n", (t1 - t0) / n);
	return 0;
}
