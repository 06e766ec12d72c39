/* Syscall generator for bench/probes.py: waits for a line on stdin, then issues exactly N getppid() syscalls
 * (raw syscall(2), no libc caching), optionally sleeping interval_us between them, and prints the elapsed ns.
 *   storm N [interval_us]                                                                                  */
#define _GNU_SOURCE
#include <stdio.h>
#include <stdlib.h>
#include <sys/syscall.h>
#include <time.h>
#include <unistd.h>

int main(int argc, char **argv)
{
	long n = argc > 1 ? atol(argv[1]) : 1000000;
	long interval_us = argc > 2 ? atol(argv[2]) : 0;
	char line[16];
	struct timespec a, b;
	if (!fgets(line, sizeof line, stdin))
		return 1;
	clock_gettime(CLOCK_MONOTONIC, &a);
	for (long i = 0; i < n; i++) {
		syscall(SYS_getppid);
		if (interval_us)
			usleep(interval_us);
	}
	clock_gettime(CLOCK_MONOTONIC, &b);
	printf("%lld\n", (long long)(b.tv_sec - a.tv_sec) * 1000000000LL + (b.tv_nsec - a.tv_nsec));
	return 0;
}
