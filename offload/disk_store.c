/* The disk tier: the index (chained hash table + LRU over entries, one mutex: contains runs on the
 * engine thread, get/put on the host tier's I/O threads, the scan on its own thread), the file
 * format and the start-up scan. */
#include "offload/disk_store.h"

#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <pthread.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <time.h>
#include <sys/uio.h>
#include <unistd.h>

#include "offload/block_header.h"

#define DS_ALIGN       4096 /* O_DIRECT alignment of buffers, offsets and lengths */
#define DS_HEADER_SIZE 4096 /* the header block before the payload */

typedef struct ds_entry {
    block_hash h;
    int32_t next; /* bucket chain, or the free list */
    int32_t lru_prev, lru_next;
    bool used;
} ds_entry;

typedef struct disk_store {
    kv_block_store base;
    char *dir;
    size_t block_bytes;
    uint64_t file_bytes; /* DS_HEADER_SIZE + block_bytes */
    uint64_t limit;
    block_hash ns;
    bool quiet;
    atomic_bool direct; /* O_DIRECT works here (false after the first EINVAL) */

    pthread_mutex_t lock; /* everything below */
    ds_entry *e;
    int32_t n_e, cap_e, free_head;
    int32_t *buckets;
    uint32_t mask;
    int32_t lru_head, lru_tail; /* head: least recently used */
    int64_t n_blocks;
    kv_block_store_stats st;
    uint64_t n_tmp;
    pthread_t scan;
    bool scan_running;

    struct ds_scratch *scratch; /* free scratch buffers (lock): one per get/put running */
} disk_store;

/* The buffers of one get or put (several I/O threads may run them at once). */
typedef struct ds_scratch {
    uint8_t *hdr;    /* [DS_HEADER_SIZE], aligned */
    uint8_t *bounce; /* [round_up(block_bytes + 1)], aligned: payloads not aligned for O_DIRECT */
    struct ds_scratch *next;
} ds_scratch;

static disk_store *ds_of(kv_block_store *s) {
    return (disk_store *)s;
}

static size_t round_up(size_t n) {
    return (n + DS_ALIGN - 1) / DS_ALIGN * DS_ALIGN;
}

static void hex_of(const block_hash *h, char out[65]) {
    static const char digits[] = "0123456789abcdef";
    for (int i = 0; i < 32; i++) {
        out[2 * i] = digits[h->b[i] >> 4];
        out[2 * i + 1] = digits[h->b[i] & 15];
    }
    out[64] = 0;
}

void disk_store_block_path(kv_block_store *s, const block_hash *h, char *out, size_t cap) {
    char hex[65];
    hex_of(h, hex);
    snprintf(out, cap, "%s/%.2s/%s.kvb", ds_of(s)->dir, hex, hex);
}

/* --- index (lock held) --- */

static uint32_t bucket_of(const disk_store *d, const block_hash *h) {
    uint32_t x;
    memcpy(&x, h->b, 4);
    return x & d->mask;
}

static int32_t idx_find(const disk_store *d, const block_hash *h) {
    for (int32_t i = d->buckets[bucket_of(d, h)]; i >= 0; i = d->e[i].next)
        if (block_hash_eq(&d->e[i].h, h)) return i;
    return -1;
}

static void lru_unlink(disk_store *d, int32_t i) {
    ds_entry *x = &d->e[i];
    if (x->lru_prev >= 0)
        d->e[x->lru_prev].lru_next = x->lru_next;
    else
        d->lru_head = x->lru_next;
    if (x->lru_next >= 0)
        d->e[x->lru_next].lru_prev = x->lru_prev;
    else
        d->lru_tail = x->lru_prev;
    x->lru_prev = x->lru_next = -1;
}

static void lru_push(disk_store *d, int32_t i) {
    ds_entry *x = &d->e[i];
    x->lru_prev = d->lru_tail;
    x->lru_next = -1;
    if (d->lru_tail >= 0)
        d->e[d->lru_tail].lru_next = i;
    else
        d->lru_head = i;
    d->lru_tail = i;
}

static void idx_rehash(disk_store *d, uint32_t n_buckets) {
    free(d->buckets);
    d->buckets = kv_malloc((size_t)n_buckets * sizeof *d->buckets);
    for (uint32_t b = 0; b < n_buckets; b++) d->buckets[b] = -1;
    d->mask = n_buckets - 1;
    for (int32_t i = 0; i < d->n_e; i++) {
        if (!d->e[i].used) continue;
        uint32_t b = bucket_of(d, &d->e[i].h);
        d->e[i].next = d->buckets[b];
        d->buckets[b] = i;
    }
}

/* Adds h as most recently used (no-op when present). */
static void idx_insert(disk_store *d, const block_hash *h) {
    if (idx_find(d, h) >= 0) return;
    int32_t i = d->free_head;
    if (i >= 0) {
        d->free_head = d->e[i].next;
    } else {
        if (d->n_e == d->cap_e) {
            d->cap_e = d->cap_e ? 2 * d->cap_e : 1024;
            d->e = kv_realloc(d->e, (size_t)d->cap_e * sizeof *d->e);
        }
        i = d->n_e++;
    }
    d->e[i] = (ds_entry){.h = *h, .used = true, .lru_prev = -1, .lru_next = -1};
    uint32_t b = bucket_of(d, h);
    d->e[i].next = d->buckets[b];
    d->buckets[b] = i;
    lru_push(d, i);
    d->n_blocks++;
    if ((uint64_t)d->n_blocks > (uint64_t)d->mask + 1) idx_rehash(d, 2 * (d->mask + 1));
}

static void idx_remove(disk_store *d, int32_t i) {
    int32_t *link = &d->buckets[bucket_of(d, &d->e[i].h)];
    while (*link != i) link = &d->e[*link].next;
    *link = d->e[i].next;
    lru_unlink(d, i);
    d->e[i].used = false;
    d->e[i].next = d->free_head;
    d->free_head = i;
    d->n_blocks--;
}

/* Deletes least recently used files while over the limit. Lock held. */
static void ds_enforce_limit(disk_store *d) {
    while ((uint64_t)d->n_blocks * d->file_bytes > d->limit && d->lru_head >= 0) {
        int32_t i = d->lru_head;
        char path[4200];
        disk_store_block_path(&d->base, &d->e[i].h, path, sizeof path);
        idx_remove(d, i);
        if (unlink(path) != 0 && errno != ENOENT) d->st.n_errors++;
        d->st.n_evicted++;
    }
}

/* Drops a file that failed its checks: out of the index, deleted, counted. */
static void ds_reject(disk_store *d, const block_hash *h, const char *path, kv_block_verdict v) {
    pthread_mutex_lock(&d->lock);
    int32_t i = idx_find(d, h);
    if (i >= 0) idx_remove(d, i);
    d->st.n_rejected++;
    pthread_mutex_unlock(&d->lock);
    unlink(path);
    if (!d->quiet)
        fprintf(stderr, "kvserve: disk tier: %s: %s, deleted\n", path, kv_block_verdict_name(v));
}

/* --- files --- */

static int ds_open(disk_store *d, const char *path, int flags) {
    int fd = -1;
    if (d->direct) {
        fd = open(path, flags | O_DIRECT | O_CLOEXEC, 0644);
        if (fd < 0 && errno == EINVAL) d->direct = false; /* tmpfs and friends */
    }
    if (fd < 0 && !d->direct) fd = open(path, flags | O_CLOEXEC, 0644);
    return fd;
}

/* The payload's buffer for one transfer: the caller's when O_DIRECT can use it, else bounce. */
static uint8_t *ds_payload_buf(disk_store *d, ds_scratch *sc, void *p) {
    bool aligned = ((uintptr_t)p % DS_ALIGN) == 0 && d->block_bytes % DS_ALIGN == 0;
    return !d->direct || aligned ? p : sc->bounce;
}

static ds_scratch *ds_scratch_take(disk_store *d) {
    pthread_mutex_lock(&d->lock);
    ds_scratch *sc = d->scratch;
    if (sc) d->scratch = sc->next;
    pthread_mutex_unlock(&d->lock);
    if (sc) return sc;
    sc = kv_calloc(1, sizeof *sc);
    sc->hdr = aligned_alloc(DS_ALIGN, DS_HEADER_SIZE);
    sc->bounce = aligned_alloc(DS_ALIGN, round_up(d->block_bytes + 1));
    KV_CHECK(sc->hdr && sc->bounce);
    return sc;
}

static void ds_scratch_give(disk_store *d, ds_scratch *sc) {
    pthread_mutex_lock(&d->lock);
    sc->next = d->scratch;
    d->scratch = sc;
    pthread_mutex_unlock(&d->lock);
}

static int ds_contains(kv_block_store *s, const block_hash *h, int n) {
    disk_store *d = ds_of(s);
    pthread_mutex_lock(&d->lock);
    int k = 0;
    while (k < n && idx_find(d, &h[k]) >= 0) k++;
    pthread_mutex_unlock(&d->lock);
    return k;
}

static bool ds_get_with(disk_store *d, ds_scratch *sc, const block_hash *h, void *dst,
                        size_t bytes) {
    kv_block_store *s = &d->base;
    double t0 = kv_now();
    pthread_mutex_lock(&d->lock);
    bool present = bytes == d->block_bytes && idx_find(d, h) >= 0;
    if (!present) d->st.misses++;
    pthread_mutex_unlock(&d->lock);
    if (!present) return false;
    char path[4200];
    disk_store_block_path(s, h, path, sizeof path);
    int fd = ds_open(d, path, O_RDONLY);
    if (fd < 0) { /* deleted behind our back: a miss */
        pthread_mutex_lock(&d->lock);
        int32_t i = idx_find(d, h);
        if (i >= 0) idx_remove(d, i);
        d->st.misses++;
        d->st.n_errors += errno != ENOENT;
        pthread_mutex_unlock(&d->lock);
        return false;
    }
    uint8_t *pay = ds_payload_buf(d, sc, dst);
    /* one byte more than the file should hold (rounded for O_DIRECT) shows a longer file */
    size_t want = d->direct ? round_up(bytes + 1) : bytes + 1;
    uint8_t *extra = NULL;
    struct iovec iov[3] = {{sc->hdr, DS_HEADER_SIZE}, {pay, bytes}, {NULL, 0}};
    int n_iov = 2;
    if (pay == sc->bounce) {
        iov[1].iov_len = want;
    } else {
        extra = d->direct ? aligned_alloc(DS_ALIGN, DS_ALIGN) : malloc(1);
        iov[2] = (struct iovec){extra, d->direct ? DS_ALIGN : 1};
        n_iov = 3;
    }
    ssize_t got = preadv(fd, iov, n_iov, 0);
    int read_errno = errno;
    close(fd);
    free(extra);
    kv_block_verdict v = KV_BLOCK_SHORT;
    kv_block_header hd;
    if (got < 0) {
        pthread_mutex_lock(&d->lock);
        d->st.n_errors++;
        d->st.misses++;
        pthread_mutex_unlock(&d->lock);
        if (!d->quiet) fprintf(stderr, "kvserve: disk tier: %s: %s\n", path, strerror(read_errno));
        return false;
    }
    if ((size_t)got == DS_HEADER_SIZE + bytes) {
        v = kv_block_header_parse(sc->hdr, DS_HEADER_SIZE, &hd);
        if (v == KV_BLOCK_OK) v = kv_block_header_expect(&hd, &d->ns, h, bytes);
        if (v == KV_BLOCK_OK) v = kv_block_payload_check(&hd, pay, bytes);
    }
    if (v != KV_BLOCK_OK) {
        ds_reject(d, h, path, v);
        return false;
    }
    if (pay != dst) memcpy(dst, pay, bytes);
    pthread_mutex_lock(&d->lock);
    int32_t i = idx_find(d, h);
    if (i >= 0) lru_unlink(d, i), lru_push(d, i);
    d->st.hits++;
    d->st.bytes_read += bytes;
    d->st.read_seconds += kv_now() - t0;
    pthread_mutex_unlock(&d->lock);
    return true;
}

static bool ds_put_with(disk_store *d, ds_scratch *sc, const block_hash *h, const void *src,
                        size_t bytes) {
    kv_block_store *s = &d->base;
    if (bytes != d->block_bytes) return false;
    double t0 = kv_now();
    pthread_mutex_lock(&d->lock);
    int32_t i = idx_find(d, h);
    if (i >= 0) lru_unlink(d, i), lru_push(d, i);
    uint64_t tmp_id = ++d->n_tmp;
    pthread_mutex_unlock(&d->lock);
    if (i >= 0) return true; /* already on disk */

    char path[4200], tmp[4300];
    disk_store_block_path(s, h, path, sizeof path);
    snprintf(tmp, sizeof tmp, "%s.%ld.%llu.tmp", path, (long)getpid(), (unsigned long long)tmp_id);
    int fd = ds_open(d, tmp, O_WRONLY | O_CREAT | O_TRUNC);
    if (fd < 0 && errno == ENOENT) { /* the hash's subdirectory */
        char sub[4200];
        snprintf(sub, sizeof sub, "%.*s", (int)(strrchr(path, '/') - path), path);
        mkdir(sub, 0755);
        fd = ds_open(d, tmp, O_WRONLY | O_CREAT | O_TRUNC);
    }
    bool ok = fd >= 0;
    if (ok) {
        memset(sc->hdr, 0, DS_HEADER_SIZE);
        kv_block_header_encode(sc->hdr, &d->ns, h, src, bytes);
        uint8_t *pay = ds_payload_buf(d, sc, (void *)src);
        size_t len = bytes;
        if (pay == sc->bounce) {
            memcpy(pay, src, bytes);
            if (d->direct) { /* whole aligned blocks, cut back to size below */
                len = round_up(bytes);
                memset(pay + bytes, 0, len - bytes);
            }
        }
        struct iovec iov[2] = {{sc->hdr, DS_HEADER_SIZE}, {pay, len}};
        ssize_t put = pwritev(fd, iov, 2, 0);
        ok = put == (ssize_t)(DS_HEADER_SIZE + len);
        if (ok && len != bytes) ok = ftruncate(fd, (off_t)(DS_HEADER_SIZE + bytes)) == 0;
        ok = close(fd) == 0 && ok;
        ok = ok && rename(tmp, path) == 0;
        if (!ok) unlink(tmp);
    }
    pthread_mutex_lock(&d->lock);
    if (ok) {
        idx_insert(d, h);
        ds_enforce_limit(d);
        d->st.n_put++;
        d->st.bytes_written += bytes;
        d->st.write_seconds += kv_now() - t0;
    } else {
        d->st.n_put_failed++;
        d->st.n_errors++;
    }
    pthread_mutex_unlock(&d->lock);
    return ok;
}

static bool ds_get(kv_block_store *s, const block_hash *h, void *dst, size_t bytes) {
    disk_store *d = ds_of(s);
    ds_scratch *sc = ds_scratch_take(d);
    bool ok = ds_get_with(d, sc, h, dst, bytes);
    ds_scratch_give(d, sc);
    return ok;
}

static bool ds_put(kv_block_store *s, const block_hash *h, const void *src, size_t bytes) {
    disk_store *d = ds_of(s);
    ds_scratch *sc = ds_scratch_take(d);
    bool ok = ds_put_with(d, sc, h, src, bytes);
    ds_scratch_give(d, sc);
    return ok;
}

static kv_block_store_stats ds_stats(kv_block_store *s) {
    disk_store *d = ds_of(s);
    pthread_mutex_lock(&d->lock);
    kv_block_store_stats st = d->st;
    st.n_blocks = (uint64_t)d->n_blocks;
    st.bytes_used = (uint64_t)d->n_blocks * d->file_bytes;
    st.bytes_limit = d->limit;
    pthread_mutex_unlock(&d->lock);
    return st;
}

/* --- the start-up scan --- */

static bool parse_hex_name(const char *name, block_hash *h) {
    static const char digits[] = "0123456789abcdef";
    if (strlen(name) != 68 || strcmp(name + 64, ".kvb") != 0) return false;
    for (int i = 0; i < 64; i++) {
        const char *p = strchr(digits, name[i]);
        if (!p || !*p) return false;
        int v = (int)(p - digits);
        if (i % 2 == 0)
            h->b[i / 2] = (uint8_t)(v << 4);
        else
            h->b[i / 2] |= (uint8_t)v;
    }
    return true;
}

/* One file found by the scan: indexed when its header is ours and its size right. */
static void scan_file(disk_store *d, const char *path, const char *name, uint64_t *n_found,
                      uint64_t *n_foreign) {
    block_hash h;
    if (!parse_hex_name(name, &h)) {
        struct stat st;
        /* a temp file of a crashed writer (ours are renamed within a second) */
        if (strstr(name, ".tmp") && stat(path, &st) == 0 && st.st_mtime + 600 < time(NULL))
            unlink(path);
        return;
    }
    int fd = open(path, O_RDONLY | O_CLOEXEC);
    if (fd < 0) return;
    uint8_t buf[KV_BLOCK_HEADER_BYTES];
    struct stat st;
    ssize_t got = pread(fd, buf, sizeof buf, 0);
    bool have_size = fstat(fd, &st) == 0;
    close(fd);
    kv_block_header hd;
    kv_block_verdict v =
        got == (ssize_t)sizeof buf ? kv_block_header_parse(buf, sizeof buf, &hd) : KV_BLOCK_SHORT;
    if (v == KV_BLOCK_OK && (!block_hash_eq(&hd.ns, &d->ns) || hd.version != KV_LAYOUT_VERSION)) {
        (*n_foreign)++; /* another model's or layout's: not ours to judge */
        return;
    }
    if (v == KV_BLOCK_OK) v = kv_block_header_expect(&hd, &d->ns, &h, d->block_bytes);
    if (v == KV_BLOCK_OK && (!have_size || (uint64_t)st.st_size != d->file_bytes))
        v = KV_BLOCK_SHORT; /* truncated (or grown) */
    if (v != KV_BLOCK_OK) {
        ds_reject(d, &h, path, v);
        return;
    }
    pthread_mutex_lock(&d->lock);
    idx_insert(d, &h);
    pthread_mutex_unlock(&d->lock);
    (*n_found)++;
}

static void *scan_main(void *arg) {
    disk_store *d = arg;
    double t0 = kv_now(), last = t0;
    uint64_t n_found = 0, n_foreign = 0;
    for (int sub = 0; sub < 256; sub++) {
        char dir[4200];
        snprintf(dir, sizeof dir, "%s/%02x", d->dir, sub);
        DIR *dh = opendir(dir);
        if (!dh) continue;
        for (struct dirent *e; (e = readdir(dh));) {
            if (e->d_name[0] == '.') continue;
            char path[4600];
            snprintf(path, sizeof path, "%s/%s", dir, e->d_name);
            scan_file(d, path, e->d_name, &n_found, &n_foreign);
        }
        closedir(dh);
        if (!d->quiet && kv_now() - last > 1.0) {
            last = kv_now();
            fprintf(stderr, "kvserve: disk tier: scanning %s: %d/256 directories, %llu blocks\n",
                    d->dir, sub + 1, (unsigned long long)n_found);
        }
    }
    pthread_mutex_lock(&d->lock);
    ds_enforce_limit(d); /* a smaller limit than the last run's */
    uint64_t n_blocks = (uint64_t)d->n_blocks;
    pthread_mutex_unlock(&d->lock);
    if (!d->quiet)
        fprintf(stderr,
                "kvserve: disk tier: %s: %llu blocks (%.2f GiB) ready in %.2f s; %llu files of "
                "other models left alone\n",
                d->dir, (unsigned long long)n_blocks,
                (double)(n_blocks * d->file_bytes) / (double)(1ull << 30), kv_now() - t0,
                (unsigned long long)n_foreign);
    return NULL;
}

void disk_store_wait_scan(kv_block_store *s) {
    disk_store *d = ds_of(s);
    if (d->scan_running) pthread_join(d->scan, NULL);
    d->scan_running = false;
}

static void ds_destroy(kv_block_store *s) {
    disk_store *d = ds_of(s);
    disk_store_wait_scan(s);
    pthread_mutex_destroy(&d->lock);
    for (ds_scratch *sc = d->scratch, *next; sc; sc = next) {
        next = sc->next;
        free(sc->hdr), free(sc->bounce), free(sc);
    }
    free(d->e), free(d->buckets), free(d->dir), free(d);
}

static const kv_block_store_ops disk_store_ops = {
    .name = "disk",
    .contains = ds_contains,
    .get = ds_get,
    .put = ds_put,
    .stats = ds_stats,
    .wait_ready = disk_store_wait_scan,
    .destroy = ds_destroy,
};

kv_block_store *disk_store_create(const disk_store_config *cfg, kv_error *err) {
    if (!cfg->path || !*cfg->path) return kv_error_set(err, "offload.disk.path is empty"), NULL;
    if (!(cfg->size_gib > 0))
        return kv_error_set(err, "offload.disk.size_gib must be > 0 with offload.disk.path"), NULL;
    if (strlen(cfg->path) > 3000) return kv_error_set(err, "offload.disk.path is too long"), NULL;
    if (mkdir(cfg->path, 0755) != 0 && errno != EEXIST)
        return kv_error_set(err, "offload.disk.path %s: cannot create: %s", cfg->path,
                            strerror(errno)),
               NULL;
    struct stat st;
    if (stat(cfg->path, &st) != 0 || !S_ISDIR(st.st_mode) || access(cfg->path, R_OK | W_OK | X_OK))
        return kv_error_set(err, "offload.disk.path %s: not a writable directory", cfg->path), NULL;
    disk_store *d = kv_calloc(1, sizeof *d);
    d->base.ops = &disk_store_ops;
    d->dir = kv_strdup(cfg->path);
    d->block_bytes = cfg->block_bytes;
    d->file_bytes = DS_HEADER_SIZE + cfg->block_bytes;
    d->limit = (uint64_t)(cfg->size_gib * (double)(1ull << 30));
    d->ns = cfg->ns;
    d->quiet = cfg->quiet;
    d->direct = true;
    d->free_head = -1;
    d->lru_head = d->lru_tail = -1;
    pthread_mutex_init(&d->lock, NULL);
    idx_rehash(d, 1024);
    d->scan_running = pthread_create(&d->scan, NULL, scan_main, d) == 0;
    if (!d->scan_running) scan_main(d);
    return &d->base;
}
