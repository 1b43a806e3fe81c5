/*
 * bench_pagecache.c - the page cache's C-level throughput, no Python, no GIL.
 *
 * For 4 KiB and 64 KiB pages and 1 and 2 threads: a raw memcpy of random
 * pages out of a plain 64 MiB buffer (the floor any cache's hit pays), hits
 * through pagecache_get() on a full 64 MiB cache, and misses (a get that
 * misses plus the put that fills it, evicting). Runs alternate and each
 * figure is the median of 5, since the machine is shared. Prints one JSON
 * object; benchmarks/bench_pagecache.py runs it (`make -C csrc bench`).
 */
#define _POSIX_C_SOURCE 200809L

#include "pagecache.h"

#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#define WORKING_SET (64u << 20)
#define RUN_SECONDS 0.4
#define ROUNDS 5

enum { RAW, HIT, MISS, KINDS };
static const char *kind_name[KINDS] = {"raw_memcpy", "hit", "miss"};

typedef struct {
    int kind;
    uint32_t ps;
    uint32_t n;
    unsigned char *raw;
    pagecache_t *pc;
    unsigned seed;
    uint64_t next_page;
    long ops;
} job_t;

static volatile unsigned sink;

static double now(void)
{
    struct timespec t;
    clock_gettime(CLOCK_MONOTONIC, &t);
    return (double)t.tv_sec + (double)t.tv_nsec * 1e-9;
}

static void *worker(void *arg)
{
    job_t *j = arg;
    unsigned char *buf = malloc(j->ps);
    unsigned char *data = calloc(1, j->ps);
    double end = now() + RUN_SECONDS;
    long ops = 0;
    while (now() < end) {
        for (int i = 0; i < 64; i++) {
            j->seed = j->seed * 1103515245u + 12345u;
            uint32_t p = (j->seed >> 4) % j->n;
            if (j->kind == RAW) {
                memcpy(buf, j->raw + (size_t)p * j->ps, j->ps);
            } else if (j->kind == HIT) {
                if (pagecache_get(j->pc, 0, p, buf, j->ps) < 0)
                    abort();
            } else {
                uint64_t page = j->next_page++;
                if (pagecache_get(j->pc, j->seed % 1000 + 1000 * (j->seed & 1) + 1,
                                  page, buf, j->ps) >= 0)
                    abort();
                if (pagecache_put(j->pc, 7 + (uint64_t)j->seed % 2, page, data,
                                  j->ps, PAGECACHE_HINT_NORMAL) != 0)
                    abort();
            }
            sink += buf[j->ps - 1];
        }
        ops += 64;
    }
    j->ops = ops;
    free(buf);
    free(data);
    return NULL;
}

static int cmp_double(const void *a, const void *b)
{
    double x = *(const double *)a, y = *(const double *)b;
    return (x > y) - (x < y);
}

int main(void)
{
    uint32_t sizes[] = {4096, 65536};
    printf("{\"working_set\": %u, \"rounds\": %d, \"run_seconds\": %.2f, \"results\": [",
           WORKING_SET, ROUNDS, RUN_SECONDS);
    int first = 1;
    for (int s = 0; s < 2; s++) {
        uint32_t ps = sizes[s];
        uint32_t n = WORKING_SET / ps;
        unsigned char *raw = aligned_alloc(4096, WORKING_SET);
        unsigned char *page = calloc(1, ps);
        pagecache_t *hit_pc, *miss_pc;
        if (raw == NULL || page == NULL ||
            pagecache_create(&hit_pc, WORKING_SET, ps, NULL) != 0 ||
            pagecache_create(&miss_pc, WORKING_SET, ps, NULL) != 0)
            return 1;
        memset(raw, 1, WORKING_SET);
        for (uint32_t p = 0; p < n; p++) {
            page[0] = (unsigned char)p;
            pagecache_put(hit_pc, 0, p, page, ps, PAGECACHE_HINT_NORMAL);
            pagecache_put(miss_pc, 0, p, page, ps, PAGECACHE_HINT_NORMAL);
        }
        double rate[KINDS][3][ROUNDS];
        uint64_t next_page = 1;
        for (int r = 0; r < ROUNDS; r++) {
            for (int k = 0; k < KINDS; k++) {
                for (int threads = 1; threads <= 2; threads++) {
                    pthread_t th[2];
                    job_t jobs[2];
                    for (int t = 0; t < threads; t++) {
                        jobs[t] = (job_t){k, ps, n, raw, k == MISS ? miss_pc : hit_pc,
                                          (unsigned)(r * 131 + t * 7 + 1), next_page, 0};
                        next_page += 1u << 30; /* disjoint new keys per job */
                        pthread_create(&th[t], NULL, worker, &jobs[t]);
                    }
                    long total = 0;
                    for (int t = 0; t < threads; t++) {
                        pthread_join(th[t], NULL);
                        total += jobs[t].ops;
                    }
                    rate[k][threads][r] = (double)total / RUN_SECONDS;
                }
            }
        }
        for (int k = 0; k < KINDS; k++) {
            for (int threads = 1; threads <= 2; threads++) {
                qsort(rate[k][threads], ROUNDS, sizeof(double), cmp_double);
                printf("%s{\"page_size\": %u, \"threads\": %d, \"kind\": \"%s\", "
                       "\"ops_per_s\": %.0f}",
                       first ? "" : ", ", ps, threads, kind_name[k],
                       rate[k][threads][ROUNDS / 2]);
                first = 0;
            }
        }
        pagecache_destroy(hit_pc);
        pagecache_destroy(miss_pc);
        free(raw);
        free(page);
    }
    printf("]}\n");
    return 0;
}
