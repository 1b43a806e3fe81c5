/*
 * test_pagecache.c - C unit tests and a threaded stress for pagecache.c.
 *
 * Built and run by `make -C csrc test` (also under ASan/UBSan, TSan and
 * valgrind: see the Makefile). Ends with "N passed, N failed".
 */
#define _POSIX_C_SOURCE 200809L

#include "pagecache.h"

#include <errno.h>
#include <pthread.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#define PS 4096u

static int passed, failed;

#define CHECK(cond)                                                            \
    do {                                                                       \
        if (!(cond)) {                                                         \
            fprintf(stderr, "%s:%d: CHECK failed: %s\n", __FILE__, __LINE__,   \
                    #cond);                                                    \
            return 1;                                                          \
        }                                                                      \
    } while (0)

/* Content that names its key; the length varies by key too. */
static size_t fill(unsigned char *buf, uint64_t file, uint64_t page, size_t cap)
{
    uint64_t x = (file * 0x9e3779b97f4a7c15ULL) ^ (page + 0x632be59bd9b4e019ULL);
    x ^= x >> 31;
    size_t len = 1 + (size_t)(x % cap);
    for (size_t i = 0; i < len; i++)
        buf[i] = (unsigned char)((file * 31 + page * 7 + i) & 0xff);
    return len;
}

static int test_args(void)
{
    pagecache_t *pc = NULL;
    unsigned char buf[PS];
    CHECK(pagecache_create(NULL, 1 << 20, PS, NULL) == -EINVAL);
    CHECK(pagecache_create(&pc, 1 << 20, 1000, NULL) == -EINVAL);
    CHECK(pagecache_create(&pc, 1 << 20, 2u << 20, NULL) == -EINVAL);
    CHECK(pagecache_create(&pc, PS - 1, PS, NULL) == -EINVAL);
    pagecache_config_t cfg;
    pagecache_config_default(&cfg);
    cfg.move_to_main_threshold = 4;
    CHECK(pagecache_create(&pc, 1 << 20, PS, &cfg) == -EINVAL);
    CHECK(pc == NULL);
    pagecache_config_default(&cfg);
    cfg.policy = 7;
    CHECK(pagecache_create(&pc, 1 << 20, PS, &cfg) == -EINVAL);
    cfg.policy = PAGECACHE_POLICY_CLOCK;
    CHECK(pagecache_create(&pc, 1 << 20, PS, &cfg) == 0);
    CHECK(pagecache_put(pc, 1, 1, buf, 10, PAGECACHE_HINT_NORMAL) == 0);
    CHECK(pagecache_get(pc, 1, 1, buf, PS) == 10);
    pagecache_destroy(pc);
    pc = NULL;
    CHECK(pagecache_create(&pc, 8 * PS, PS, NULL) == 0);
    CHECK(pagecache_put(pc, 1, 1, buf, 0, PAGECACHE_HINT_NORMAL) == -EINVAL);
    CHECK(pagecache_put(pc, 1, 1, buf, PS + 1, PAGECACHE_HINT_NORMAL) == -EINVAL);
    CHECK(pagecache_put(pc, 1, 1, buf, 10, 9) == -EINVAL);
    CHECK(pagecache_get(NULL, 1, 1, buf, PS) == -EINVAL);
    CHECK(pagecache_invalidate_range(pc, 1, 5, 4) == -EINVAL);
    pagecache_destroy(pc);
    pagecache_destroy(NULL);
    return 0;
}

static int test_put_get(void)
{
    pagecache_t *pc;
    unsigned char in[PS], out[PS];
    CHECK(pagecache_create(&pc, 8 * PS, PS, NULL) == 0);
    CHECK(pagecache_get(pc, 1, 2, out, PS) == -ENOENT);
    size_t len = fill(in, 1, 2, PS);
    CHECK(pagecache_put(pc, 1, 2, in, len, PAGECACHE_HINT_NORMAL) == 0);
    CHECK(pagecache_get(pc, 1, 2, out, PS) == (int64_t)len);
    CHECK(memcmp(in, out, len) == 0);
    if (len > 1)
        CHECK(pagecache_get(pc, 1, 2, out, len - 1) == -ENOBUFS);
    memset(in, 0xab, PS);
    CHECK(pagecache_put(pc, 1, 2, in, PS, PAGECACHE_HINT_NORMAL) == 0);
    CHECK(pagecache_get(pc, 1, 2, out, PS) == PS);
    CHECK(memcmp(in, out, PS) == 0);
    CHECK(pagecache_put(pc, 1, 3, in, 5, PAGECACHE_HINT_DONT_ADMIT) == 0);
    CHECK(pagecache_peek(pc, 1, 3, out, PS) == -ENOENT);
    pagecache_stats_t s;
    CHECK(pagecache_stats(pc, &s) == 0);
    CHECK(s.hits == 2 && s.misses == 1 && s.insertions == 1 && s.updates == 1);
    CHECK(s.not_admitted == 1 && s.bytes_used == PS && s.pages_used == 1);
    pagecache_destroy(pc);
    return 0;
}

static int test_get_range(void)
{
    pagecache_t *pc;
    static unsigned char in[PS], out[4 * PS];
    CHECK(pagecache_create(&pc, 16 * PS, PS, NULL) == 0);
    memset(in, 7, PS);
    for (uint64_t p = 0; p < 3; p++)
        CHECK(pagecache_put(pc, 9, p, in, PS, PAGECACHE_HINT_NORMAL) == 0);
    CHECK(pagecache_put(pc, 9, 3, in, 10, PAGECACHE_HINT_NORMAL) == 0);
    CHECK(pagecache_put(pc, 9, 4, in, PS, PAGECACHE_HINT_NORMAL) == 0);
    CHECK(pagecache_get_range(pc, 9, 0, out, sizeof(out)) == 3 * PS + 10);
    CHECK(pagecache_get_range(pc, 9, 1, out, 2 * PS + 5) == 2 * PS);
    CHECK(pagecache_get_range(pc, 9, 5, out, sizeof(out)) == 0);
    CHECK(pagecache_invalidate_page(pc, 9, 1) == 1);
    CHECK(pagecache_get_range(pc, 9, 0, out, sizeof(out)) == PS);
    pagecache_stats_t s;
    CHECK(pagecache_stats(pc, &s) == 0);
    CHECK(s.hits == 4 + 2 + 1 && s.misses == 2);
    pagecache_destroy(pc);
    return 0;
}

static int test_eviction_and_pins(void)
{
    pagecache_t *pc;
    unsigned char in[PS], out[PS];
    CHECK(pagecache_create(&pc, 4 * PS, PS, NULL) == 0);
    for (uint64_t p = 0; p < 4; p++) {
        size_t len = fill(in, 0, p, PS);
        CHECK(pagecache_put(pc, 0, p, in, len, PAGECACHE_HINT_PIN) == 0);
    }
    CHECK(pagecache_put(pc, 0, 9, in, 1, PAGECACHE_HINT_NORMAL) == -EBUSY);
    CHECK(pagecache_unpin(pc, 0, 1) == 0);
    CHECK(pagecache_unpin(pc, 0, 1) == -EINVAL);
    CHECK(pagecache_unpin(pc, 0, 42) == -ENOENT);
    CHECK(pagecache_put(pc, 0, 9, in, 1, PAGECACHE_HINT_NORMAL) == 0);
    CHECK(pagecache_peek(pc, 0, 1, out, PS) == -ENOENT);
    for (uint64_t p = 0; p < 4; p++) {
        if (p == 1)
            continue;
        size_t len = fill(in, 0, p, PS);
        CHECK(pagecache_peek(pc, 0, p, out, PS) == (int64_t)len);
        CHECK(memcmp(in, out, len) == 0);
    }
    pagecache_stats_t s;
    CHECK(pagecache_stats(pc, &s) == 0);
    CHECK(s.pinned_pages == 3 && s.evictions == 1 && s.busy == 1);
    pagecache_destroy(pc);
    return 0;
}

static int test_invalidate(void)
{
    pagecache_t *pc;
    unsigned char in[PS];
    CHECK(pagecache_create(&pc, 64 * PS, PS, NULL) == 0);
    for (uint64_t f = 1; f <= 2; f++)
        for (uint64_t p = 0; p < 20; p++)
            CHECK(pagecache_put(pc, f, p, in, 100, PAGECACHE_HINT_NORMAL) == 0);
    CHECK(pagecache_pin(pc, 1, 3) == 0);
    CHECK(pagecache_invalidate_page(pc, 1, 3) == 1);
    CHECK(pagecache_invalidate_page(pc, 1, 3) == 0);
    CHECK(pagecache_invalidate_range(pc, 1, 0, 5) == 4);
    CHECK(pagecache_invalidate_range(pc, 1, 10, UINT64_MAX) == 10);
    CHECK(pagecache_invalidate_file(pc, 1) == 5);
    CHECK(pagecache_invalidate_file(pc, 1) == 0);
    pagecache_stats_t s;
    CHECK(pagecache_stats(pc, &s) == 0);
    CHECK(s.pages_used == 20 && s.pinned_pages == 0 && s.invalidations == 20);
    CHECK(s.bytes_used == 20 * 100);
    pagecache_destroy(pc);
    return 0;
}

/* Pages of file f held, among pages 0..FI_PAGES-1 and FI_FAR. */
#define FI_FILES 9
#define FI_PAGES 24
#define FI_FAR (UINT64_MAX - 1)

static uint64_t fi_file(unsigned i)
{
    return i + 1 == FI_FILES ? UINT64_MAX : i; /* an extreme id too */
}

static uint64_t fi_page(unsigned j)
{
    return j == FI_PAGES ? FI_FAR : j;
}

static int64_t fi_held(pagecache_t *pc, uint64_t f, uint64_t first,
                       uint64_t end)
{
    unsigned char out[PS];
    int64_t n = 0;
    for (unsigned j = 0; j <= FI_PAGES; j++) {
        uint64_t p = fi_page(j);
        if (p >= first && p < end && pagecache_peek(pc, f, p, out, PS) >= 0)
            n++;
    }
    return n;
}

/*
 * The per-file index under random puts (with evictions), pins, unpins and
 * invalidations: every invalidation drops exactly the pages of its file in
 * its range, the other files keep theirs, and pagecache_debug_check() holds
 * after every call.
 */
static int test_file_index(void)
{
    unsigned char in[PS];
    memset(in, 0x5a, sizeof(in));
    uint64_t caps[] = {1, 2, 7, 32, 100};
    unsigned seed = 12345;
    for (size_t c = 0; c < 2 * sizeof(caps) / sizeof(caps[0]); c++) {
        pagecache_config_t cfg;
        pagecache_config_default(&cfg);
        cfg.policy = c % 2 ? PAGECACHE_POLICY_CLOCK : PAGECACHE_POLICY_S3FIFO;
        pagecache_t *pc;
        CHECK(pagecache_create(&pc, caps[c / 2] * PS, PS, &cfg) == 0);
        CHECK(pagecache_debug_check(pc) == 0);
        CHECK(pagecache_invalidate_file(pc, 3) == 0);
        for (int i = 0; i < 4000; i++) {
            seed = seed * 1103515245u + 12345u;
            unsigned r = seed >> 8;
            uint64_t f = fi_file(r % FI_FILES);
            uint64_t p = fi_page((r / FI_FILES) % (FI_PAGES + 1));
            unsigned op = (r / 1024) % 100;
            if (op < 55) {
                int rc = pagecache_put(pc, f, p, in, 1 + r % PS,
                                       op < 5 ? PAGECACHE_HINT_PIN
                                              : PAGECACHE_HINT_NORMAL);
                CHECK(rc == 0 || rc == -EBUSY);
            } else if (op < 65) {
                int rc = pagecache_unpin(pc, f, p);
                CHECK(rc == 0 || rc == -EINVAL || rc == -ENOENT);
            } else if (op < 70) {
                int rc = pagecache_pin(pc, f, p);
                CHECK(rc == 0 || rc == -ENOENT);
            } else if (op < 80) {
                int64_t want = fi_held(pc, f, p, p + 1);
                CHECK(pagecache_invalidate_page(pc, f, p) == want);
            } else if (op < 90) {
                /* Narrow (probed), wide (listed) and open-ended ranges. */
                uint64_t first = p == FI_FAR ? FI_FAR : p / 2;
                uint64_t end = op < 84   ? first + 1 + r % 6
                               : op < 87 ? first + caps[c / 2] + 1 + r % 4
                                         : UINT64_MAX;
                if (end < first)
                    end = UINT64_MAX;
                pagecache_stats_t before, after;
                CHECK(pagecache_stats(pc, &before) == 0);
                int64_t want = fi_held(pc, f, first, end);
                CHECK(pagecache_invalidate_range(pc, f, first, end) == want);
                CHECK(fi_held(pc, f, first, end) == 0);
                CHECK(pagecache_stats(pc, &after) == 0);
                CHECK(after.pages_used + (uint64_t)want == before.pages_used);
            } else {
                int64_t others[FI_FILES];
                for (unsigned k = 0; k < FI_FILES; k++)
                    others[k] = fi_held(pc, fi_file(k), 0, UINT64_MAX);
                int64_t want = fi_held(pc, f, 0, UINT64_MAX);
                CHECK(pagecache_invalidate_file(pc, f) == want);
                for (unsigned k = 0; k < FI_FILES; k++)
                    CHECK(fi_held(pc, fi_file(k), 0, UINT64_MAX) ==
                          (fi_file(k) == f ? 0 : others[k]));
            }
            CHECK(pagecache_debug_check(pc) == 0);
        }
        pagecache_stats_t s;
        CHECK(pagecache_stats(pc, &s) == 0);
        int64_t held = 0;
        for (unsigned k = 0; k < FI_FILES; k++)
            held += fi_held(pc, fi_file(k), 0, UINT64_MAX);
        CHECK((uint64_t)held == s.pages_used);
        for (unsigned k = 0; k < FI_FILES; k++) {
            int64_t want = fi_held(pc, fi_file(k), 0, UINT64_MAX);
            CHECK(pagecache_invalidate_file(pc, fi_file(k)) == want);
        }
        CHECK(pagecache_stats(pc, &s) == 0);
        CHECK(s.pages_used == 0 && s.bytes_used == 0 && s.pinned_pages == 0);
        CHECK(pagecache_debug_check(pc) == 0);
        pagecache_destroy(pc);
    }
    CHECK(pagecache_debug_check(NULL) == -EINVAL);
    return 0;
}

static int test_scan_resistance(void)
{
    pagecache_t *pc;
    unsigned char in[PS], out[PS];
    CHECK(pagecache_create(&pc, 100 * PS, PS, NULL) == 0);
    for (int round = 0; round < 3; round++)
        for (uint64_t p = 0; p < 50; p++)
            if (pagecache_get(pc, 0, p, out, PS) < 0)
                CHECK(pagecache_put(pc, 0, p, in, PS, 0) == 0);
    for (uint64_t p = 0; p < 5000; p++)
        if (pagecache_get(pc, 1, p, out, PS) < 0)
            CHECK(pagecache_put(pc, 1, p, in, PS, 0) == 0);
    for (uint64_t p = 0; p < 50; p++)
        CHECK(pagecache_peek(pc, 0, p, out, PS) == PS);
    pagecache_destroy(pc);
    return 0;
}

static int test_meta_budget(void)
{
    /* 64 before the per-file index (8 bytes of list links a descriptor, 6
     * of file slots a page). */
    CHECK(pagecache_meta_bytes_per_page(0.9) <= 75.0);
    uint64_t sizes[] = {1, 20, 1000, 4096, 100000};
    for (size_t i = 0; i < sizeof(sizes) / sizeof(sizes[0]); i++) {
        pagecache_t *pc;
        CHECK(pagecache_create(&pc, sizes[i] * PS, PS, NULL) == 0);
        if (sizes[i] >= 1000)
            CHECK(pagecache_meta_bytes(pc) <= 78 * sizes[i]);
        pagecache_destroy(pc);
    }
    return 0;
}

/* ---- threaded stress --------------------------------------------------------- */

#define STRESS_THREADS 4
#define STRESS_FILES 4
#define STRESS_PAGES 256

typedef struct {
    pagecache_t *pc;
    size_t ps;
    unsigned seed;
    long ops;
    int bad;
} stress_arg_t;

static unsigned next_rand(unsigned *s)
{
    *s = *s * 1103515245u + 12345u;
    return (*s >> 8) & 0xffffff;
}

static void *stress_worker(void *argp)
{
    stress_arg_t *a = argp;
    size_t ps = a->ps;
    unsigned char *in = malloc(ps), *out = malloc(ps), *want = malloc(ps);
    if (in == NULL || out == NULL || want == NULL) {
        a->bad++;
        a->ops = 0;
    }
    for (long i = 0; i < a->ops; i++) {
        uint64_t f = next_rand(&a->seed) % STRESS_FILES;
        uint64_t r = next_rand(&a->seed) % 1000;
        /* Skewed pages: a hot head and a long tail. */
        uint64_t p = r < 600 ? r % 32 : next_rand(&a->seed) % STRESS_PAGES;
        unsigned op = next_rand(&a->seed) % 100;
        if (op < 60) {
            int64_t n = pagecache_get(a->pc, f, p, out, ps);
            if (n > 0) {
                size_t len = fill(want, f, p, ps);
                if ((size_t)n != len || memcmp(out, want, len) != 0)
                    a->bad++;
            } else {
                size_t len = fill(in, f, p, ps);
                int rc = pagecache_put(a->pc, f, p, in, len, 0);
                if (rc != 0 && rc != -EBUSY)
                    a->bad++;
            }
        } else if (op < 75) {
            size_t len = fill(in, f, p, ps);
            int rc = pagecache_put(a->pc, f, p, in, len, 0);
            if (rc != 0 && rc != -EBUSY)
                a->bad++;
        } else if (op < 85) {
            if (pagecache_invalidate_page(a->pc, f, p) < 0)
                a->bad++;
        } else if (op < 88) {
            /* Mostly probed ranges; one in three walks the file's list. */
            uint64_t end = op == 87 ? UINT64_MAX : p + 8;
            if (pagecache_invalidate_range(a->pc, f, p, end) < 0)
                a->bad++;
        } else if (op < 89) {
            if (pagecache_invalidate_file(a->pc, f) < 0)
                a->bad++;
        } else if (op < 95) {
            int rc = pagecache_pin(a->pc, f, p);
            if (rc == 0)
                (void)pagecache_unpin(a->pc, f, p); /* may be gone already */
            else if (rc != -ENOENT)
                a->bad++;
        } else {
            pagecache_stats_t s;
            if (pagecache_stats(a->pc, &s) != 0 || s.pages_used > s.capacity_pages)
                a->bad++;
            if (op == 99 && pagecache_debug_check(a->pc) != 0)
                a->bad++;
        }
    }
    free(in);
    free(out);
    free(want);
    return NULL;
}

static int test_stress(long ops, uint32_t ps)
{
    pagecache_t *pc;
    CHECK(pagecache_create(&pc, 128 * (uint64_t)ps, ps, NULL) == 0);
    pthread_t th[STRESS_THREADS];
    stress_arg_t args[STRESS_THREADS];
    for (int t = 0; t < STRESS_THREADS; t++) {
        args[t] = (stress_arg_t){pc, ps, (unsigned)(t * 7919 + 1), ops, 0};
        CHECK(pthread_create(&th[t], NULL, stress_worker, &args[t]) == 0);
    }
    int bad = 0;
    for (int t = 0; t < STRESS_THREADS; t++) {
        pthread_join(th[t], NULL);
        bad += args[t].bad;
    }
    CHECK(bad == 0);
    CHECK(pagecache_debug_check(pc) == 0);
    pagecache_stats_t s;
    CHECK(pagecache_stats(pc, &s) == 0);
    CHECK(s.pages_used == s.small_pages + s.main_pages + s.pinned_pages);
    unsigned char *out = malloc(ps), *want = malloc(ps);
    CHECK(out != NULL && want != NULL);
    uint64_t held = 0, bytes = 0;
    int wrong = 0;
    for (uint64_t f = 0; f < STRESS_FILES; f++) {
        for (uint64_t p = 0; p < STRESS_PAGES; p++) {
            int64_t n = pagecache_peek(pc, f, p, out, ps);
            if (n < 0)
                continue;
            size_t len = fill(want, f, p, ps);
            if ((size_t)n != len || memcmp(out, want, len) != 0)
                wrong++;
            held++;
            bytes += len;
        }
    }
    free(out);
    free(want);
    pagecache_destroy(pc);
    CHECK(wrong == 0);
    CHECK(held == s.pages_used && bytes == s.bytes_used);
    return 0;
}

int main(int argc, char **argv)
{
    long ops = argc > 1 ? atol(argv[1]) : 200000;
    struct {
        const char *name;
        int (*fn)(void);
    } tests[] = {
        {"args", test_args},
        {"put_get", test_put_get},
        {"get_range", test_get_range},
        {"eviction_and_pins", test_eviction_and_pins},
        {"invalidate", test_invalidate},
        {"file_index", test_file_index},
        {"scan_resistance", test_scan_resistance},
        {"meta_budget", test_meta_budget},
    };
    for (size_t i = 0; i < sizeof(tests) / sizeof(tests[0]); i++) {
        int rc = tests[i].fn();
        printf("%-20s %s\n", tests[i].name, rc ? "FAILED" : "ok");
        rc ? failed++ : passed++;
    }
    /* 4 KiB puts copy under the queue lock, 64 KiB ones outside it. */
    uint32_t sizes[] = {PS, 16 * PS};
    for (int i = 0; i < 2; i++) {
        int rc = test_stress(i == 0 ? ops : ops / 4, sizes[i]);
        printf("stress %-13u %s (%ld ops x %d threads)\n", sizes[i],
               rc ? "FAILED" : "ok", i == 0 ? ops : ops / 4, STRESS_THREADS);
        rc ? failed++ : passed++;
    }
    printf("%d passed, %d failed\n", passed, failed);
    return failed ? 1 : 0;
}
