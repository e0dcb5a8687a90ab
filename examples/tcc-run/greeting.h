/* The header you edit: tcc re-reads it at each save. */
static const char *greeting(void) {
    return "hello from greeting.h";
}
