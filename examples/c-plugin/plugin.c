/* The plugin: edit it, then rebuild it (make libplugin.so). */
#include <stdio.h>

const char *greeting(int primes) {
    static char text[128];
    snprintf(text, sizeof text, "hello from the plugin, %d primes", primes);
    return text;
}
