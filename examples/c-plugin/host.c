/* A C host with a plugin, and no reload logic at all: it starts up (here,
 * half a second of work standing for assets, a scene, a database), then
 * dlopens the plugin beside it and calls it.
 *
 *   make -C examples/c-plugin
 *   cargo xtask run -- --filter libplugin.so -- examples/c-plugin/host
 *   # edit plugin.c, then: make -C examples/c-plugin libplugin.so
 *
 * forkmon checkpoints the host at the plugin's open inside dlopen; each
 * rebuild resumes from there: the new plugin is loaded and called, the
 * start-up is not run again. */
#include <dlfcn.h>
#include <limits.h>
#include <stdio.h>
#include <string.h>
#include <time.h>

/* The start-up: a sieve, re-run until half a second has passed. */
static int startup(void) {
    static char composite[1 << 20];
    struct timespec start, now;
    clock_gettime(CLOCK_MONOTONIC, &start);
    int primes = 0;
    do {
        memset(composite, 0, sizeof composite);
        primes = 0;
        for (long i = 2; i < (long)sizeof composite; i++) {
            if (composite[i])
                continue;
            primes++;
            for (long j = i * i; j < (long)sizeof composite; j += i)
                composite[j] = 1;
        }
        clock_gettime(CLOCK_MONOTONIC, &now);
    } while ((now.tv_sec - start.tv_sec) * 1000 + (now.tv_nsec - start.tv_nsec) / 1000000 < 500);
    return primes;
}

int main(int argc, char **argv) {
    (void)argc;
    int primes = startup();
    printf("start-up done: %d primes\n", primes);
    /* Buffered output would be written again by every resumed run:
     * forkmon flushes C stdio at a checkpoint, and so does the host. */
    fflush(stdout);

    /* The plugin beside the host's executable. */
    char path[PATH_MAX];
    const char *slash = strrchr(argv[0], '/');
    int dir = slash ? (int)(slash - argv[0]) + 1 : 0;
    snprintf(path, sizeof path, "%.*slibplugin.so", dir, argv[0]);
    if (!slash)
        snprintf(path, sizeof path, "./libplugin.so");

    void *plugin = dlopen(path, RTLD_NOW);
    if (!plugin) {
        fprintf(stderr, "host: %s\n", dlerror());
        return 1;
    }
    const char *(*greeting)(int) = (const char *(*)(int))dlsym(plugin, "greeting");
    if (!greeting) {
        fprintf(stderr, "host: %s\n", dlerror());
        return 1;
    }
    printf("plugin: %s\n", greeting(primes));
    dlclose(plugin);
    return 0;
}
