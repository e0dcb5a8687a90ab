/* A C program run as a script: `tcc -run main.c`. tcc compiles it in
 * memory and runs it; forkmon checkpoints tcc at the open of the header
 * you edit, so a save compiles only what follows it, and runs the new
 * code.
 *
 *   cargo xtask run -- --filter greeting.h -- tcc -run examples/tcc-run/main.c
 *   # edit examples/tcc-run/greeting.h
 *
 * The system headers stand for what a program includes before its own;
 * tcc parses them once. */
#include <ctype.h>
#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <math.h>
#include <signal.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <time.h>
#include <unistd.h>

#include "greeting.h"

int main(void) {
    printf("%s\n", greeting());
    return 0;
}
