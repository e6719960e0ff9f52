/* A disk whose flushes are slow, or frozen, for tests and benchmarks (LD_PRELOAD).
 *
 * This machine's disk completes an fsync in ~0.1 ms; an SD card or eMMC on a Jetson takes
 * 2-20 ms, and now and then a disk stalls for seconds. Preloaded into a process, this makes
 * every fsync/fdatasync of that process do the real flush and then wait:
 *   SLOW_FSYNC_MS=N     N milliseconds more per flush;
 *   SLOW_FSYNC_GATE=P   while the file P exists, the flush does not return (a frozen disk).
 * Nothing else changes: data reaches the disk exactly as without it.
 */
#define _GNU_SOURCE
#include <dlfcn.h>
#include <stdlib.h>
#include <time.h>
#include <unistd.h>

static void pause_ms(long ms) {
    struct timespec t = {ms / 1000, (ms % 1000) * 1000000L};
    while (nanosleep(&t, &t) != 0) {
    }
}

static void wait_like_a_slow_disk(void) {
    const char *gate = getenv("SLOW_FSYNC_GATE");
    const char *ms = getenv("SLOW_FSYNC_MS");
    if (ms != NULL)
        pause_ms(atol(ms));
    while (gate != NULL && access(gate, F_OK) == 0)
        pause_ms(5);
}

int fsync(int fd) {
    static int (*real)(int);
    if (real == NULL)
        real = (int (*)(int))dlsym(RTLD_NEXT, "fsync");
    int result = real(fd);
    wait_like_a_slow_disk();
    return result;
}

int fdatasync(int fd) {
    static int (*real)(int);
    if (real == NULL)
        real = (int (*)(int))dlsym(RTLD_NEXT, "fdatasync");
    int result = real(fd);
    wait_like_a_slow_disk();
    return result;
}
