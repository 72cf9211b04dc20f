/* Fuzz smoke driver: runs a libFuzzer target's LLVMFuzzerTestOneInput over every file of the
 * directories (or files) named on the command line, so the regular test suite exercises each
 * target on its seed corpus. Fails when it finds no input at all. */
#include <dirent.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <sys/stat.h>

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

/* Runs the target on one file; returns 1 when it ran, 0 when the path is not a regular file. */
static int run_file(const char *path) {
    struct stat st;
    if (stat(path, &st) != 0 || !S_ISREG(st.st_mode)) return 0;
    FILE *f = fopen(path, "rb");
    if (!f) {
        fprintf(stderr, "fuzz_main: cannot open %s\n", path);
        exit(1);
    }
    size_t size = (size_t)st.st_size;
    /* exact-size heap copy so that ASan sees reads past the end of the input */
    uint8_t *buf = malloc(size ? size : 1);
    if (!buf || fread(buf, 1, size, f) != size) {
        fprintf(stderr, "fuzz_main: cannot read %s\n", path);
        exit(1);
    }
    fclose(f);
    LLVMFuzzerTestOneInput(buf, size);
    free(buf);
    return 1;
}

int main(int argc, char **argv) {
    int n_inputs = 0;
    for (int i = 1; i < argc; i++) {
        DIR *dir = opendir(argv[i]);
        if (!dir) {
            n_inputs += run_file(argv[i]);
            continue;
        }
        struct dirent *e;
        while ((e = readdir(dir)) != NULL) {
            if (e->d_name[0] == '.') continue;
            char path[4096];
            snprintf(path, sizeof path, "%s/%s", argv[i], e->d_name);
            n_inputs += run_file(path);
        }
        closedir(dir);
    }
    printf("fuzz_main: ran %d inputs\n", n_inputs);
    return n_inputs > 0 ? 0 : 1;
}
