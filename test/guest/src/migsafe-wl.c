/*
 * migsafe-wl — self-checking guest workloads for migsafe's end-to-end tests.
 *
 * One static binary, one workload per process:  migsafe-wl <idle|wset|qsort|kv|udp|serve>
 * Parameters come from the kernel command line (/proc/cmdline), see README.md:
 *   migsafe.mib=N  migsafe.rate=OPS_PER_S  migsafe.seed=N  migsafe.entries=N
 *   migsafe.pps=N  migsafe.peer=IP:PORT  migsafe.port=N (serve, wl-serve.c)
 *
 * Every workload
 *   - keeps its data in a "region" of 4 KiB pages; every page starts with a 16-byte
 *     header (8-byte page magic, u32 page index, 4-byte workload tag) and has a checksum
 *     in a separate table, updated in O(1) on every write:
 *         cs[page] = XOR over words i of rotl(word[i], i % 64)
 *   - verifies the whole region once per tick (about 1 s) and prints one progress line;
 *     a mismatch prints "MIGSAFE ERROR ..." and the checksum is re-based (reported once);
 *   - keeps its progress counter in a page-aligned record of its own (g_progress below):
 *         [0,16) magic  [16,24) u64 counter  [24,32) u64 counter ^ CHECK_XOR
 *         [32,48) workload name (NUL padded)  [48,56) u64 region pages
 *     counter and check are written by one 16-byte SSE store, so a vCPU stopped at any
 *     instruction boundary never leaves a torn record.
 * The magics are never stored in plain form in this binary (they are XOR-obfuscated and
 * decoded at run time), so a RAM image holds exactly one record: the live one.
 */
#define _GNU_SOURCE
#include <arpa/inet.h>
#include <emmintrin.h>
#include <errno.h>
#include <netinet/in.h>
#include <stdarg.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/socket.h>
#include <time.h>
#include <unistd.h>

#define PAGE_SIZE 4096u
#define PAGE_WORDS 512u   /* u64 words per page */
#define HDR_WORDS 2u      /* header words per page */
#define DATA_WORDS (PAGE_WORDS - HDR_WORDS)
#define CHECK_XOR 0x9E3779B97F4A7C15ull
#define OBF 0x5Au
#define MAX_ERR_LINES_PER_TICK 16

/* ---- obfuscated magics: decoded at run time with a volatile key ---- */
#define X(c) ((unsigned char)((c) ^ OBF))
static const unsigned char rec_magic_obf[16] = {
    X('M'), X('I'), X('G'), X('S'), X('A'), X('F'), X('E'), X('-'),
    X('P'), X('R'), X('O'), X('G'), X('R'), X('E'), X('S'), X('S')};
static const unsigned char page_magic_obf[8] = {
    X('M'), X('I'), X('G'), X('S'), X('A'), X('F'), X('E'), X('P')};
#undef X
static volatile unsigned char g_obf_key = OBF;

/* ---- the progress record: one page, page-aligned, nothing else in it ---- */
struct progress_page {
    unsigned char b[PAGE_SIZE];
} __attribute__((aligned(PAGE_SIZE)));
struct progress_page g_progress; /* .bss, exactly one copy */

/* ---- options ---- */
static char g_cmdline[4096];
static const char *g_name = "?";
static uint64_t g_counter;      /* progress counter (also in g_progress) */
static uint64_t g_ops;          /* total operations */
static uint64_t g_errors;       /* cumulative mismatches */
static uint64_t g_rate;         /* ops per second, 0 = unlimited */
static uint64_t g_poll_every = 1024;
static uint64_t g_since_poll;
static uint64_t g_next_tick_ns;
static uint64_t g_pace_start_ns, g_pace_ops;
static uint64_t g_start_ns;
static uint64_t g_cycles;       /* workload specific: completed cycles (qsort) */
static int g_counter_per_tick = 1;
static int g_sock = -1;
static struct sockaddr_in g_peer;
static int g_have_peer;
static int g_send_warned;

static uint64_t now_ns(void) {
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (uint64_t)ts.tv_sec * 1000000000ull + (uint64_t)ts.tv_nsec;
}

static void emit(const char *fmt, ...) __attribute__((format(printf, 1, 2)));
static void emit(const char *fmt, ...) {
    char buf[512];
    va_list ap;
    va_start(ap, fmt);
    int n = vsnprintf(buf, sizeof buf - 1, fmt, ap);
    va_end(ap);
    if (n < 0) return;
    if ((size_t)n > sizeof buf - 2) n = (int)sizeof buf - 2;
    buf[n++] = '\n';
    const char *p = buf;
    while (n > 0) { /* one write per line when possible */
        ssize_t w = write(1, p, (size_t)n);
        if (w < 0) { if (errno == EINTR) continue; return; }
        p += w; n -= (int)w;
    }
}

static const char *opt_str(const char *key) {
    /* returns pointer to value of " migsafe.<key>=" in the cmdline, or NULL */
    char pat[64];
    snprintf(pat, sizeof pat, "migsafe.%s=", key);
    size_t pl = strlen(pat);
    const char *p = g_cmdline;
    while ((p = strstr(p, pat)) != NULL) {
        if (p == g_cmdline || p[-1] == ' ') return p + pl;
        p += pl;
    }
    return NULL;
}
static uint64_t opt_u64(const char *key, uint64_t def) {
    const char *v = opt_str(key);
    if (!v || !*v || *v == ' ') return def;
    return strtoull(v, NULL, 0);
}

/* ---- random ---- */
static uint64_t g_rng;
static inline uint64_t rnd(void) { /* xorshift64* */
    g_rng ^= g_rng >> 12; g_rng ^= g_rng << 25; g_rng ^= g_rng >> 27;
    return g_rng * 0x2545F4914F6CDD1Dull;
}
static inline uint64_t rnd_below(uint64_t n) { return (uint64_t)(((unsigned __int128)rnd() * n) >> 64); }

/* ---- record ---- */
static void record_init(uint64_t pages) {
    for (int i = 0; i < 16; i++) g_progress.b[i] = rec_magic_obf[i] ^ g_obf_key;
    memset(g_progress.b + 32, 0, 16);
    strncpy((char *)g_progress.b + 32, g_name, 15);
    memcpy(g_progress.b + 48, &pages, 8);
    __asm__ volatile("" ::: "memory");
}
static void record_store(uint64_t c) {
    __m128i v = _mm_set_epi64x((long long)(c ^ CHECK_XOR), (long long)c);
    _mm_store_si128((__m128i *)(void *)(g_progress.b + 16), v);
    __asm__ volatile("" ::: "memory");
}
static void record_clear(void) {
    memset(g_progress.b, 0, 64);
    __asm__ volatile("" ::: "memory");
}

/* ---- region with per-page checksums ---- */
struct region {
    uint64_t *w;     /* pages * PAGE_WORDS words */
    uint64_t *cs;    /* pages checksums (separate allocation) */
    uint64_t pages;
};
static struct region R;

static inline uint64_t rotl(uint64_t x, unsigned r) {
    r &= 63u;
    return r ? (x << r) | (x >> (64u - r)) : x;
}
static uint64_t page_sum(const uint64_t *w) {
    uint64_t c = 0;
    for (unsigned i = 0; i < PAGE_WORDS; i += 64) {
#pragma GCC unroll 64
        for (unsigned j = 0; j < 64; j++) c ^= rotl(w[i + j], j);
    }
    return c;
}
/* write one u64 word (wi is the index inside the page, HDR_WORDS..PAGE_WORDS-1) */
static inline void rset64(uint64_t page, unsigned wi, uint64_t v) {
    uint64_t *p = R.w + page * PAGE_WORDS + wi;
    uint64_t old = *p;
    *p = v;
    R.cs[page] ^= rotl(old ^ v, wi);
}
static inline uint64_t rget64(uint64_t page, unsigned wi) { return R.w[page * PAGE_WORDS + wi]; }

static void *alloc_pages(size_t bytes) {
    void *p = mmap(NULL, bytes, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS | MAP_POPULATE, -1, 0);
    if (p == MAP_FAILED) return NULL;
    madvise(p, bytes, MADV_NOHUGEPAGE);
    return p;
}

static uint32_t workload_tag(void) {
    uint32_t t = 0;
    for (int i = 0; i < 4 && g_name[i]; i++) t |= (uint32_t)(unsigned char)g_name[i] << (8 * i);
    return t;
}

/* Allocates the region, writes the page headers, fills data words with fill(page, wi)
 * (or zero), computes checksums. */
static int region_init(uint64_t pages, uint64_t (*fill)(uint64_t, unsigned)) {
    R.pages = pages;
    R.w = alloc_pages(pages * PAGE_SIZE);
    R.cs = alloc_pages(((pages * 8) + PAGE_SIZE - 1) / PAGE_SIZE * PAGE_SIZE);
    if (!R.w || !R.cs) return -1;
    uint64_t magic = 0;
    for (int i = 0; i < 8; i++) magic |= (uint64_t)(page_magic_obf[i] ^ g_obf_key) << (8 * i);
    uint64_t tag = (uint64_t)workload_tag() << 32;
    for (uint64_t p = 0; p < pages; p++) {
        uint64_t *w = R.w + p * PAGE_WORDS;
        w[0] = magic;
        w[1] = tag | (p & 0xffffffffull);
        for (unsigned i = HDR_WORDS; i < PAGE_WORDS; i++) w[i] = fill ? fill(p, i) : 0;
        R.cs[p] = page_sum(w);
    }
    return 0;
}

/* verify every page; report (up to a limit) and re-base mismatching pages */
static uint64_t region_verify(void) {
    uint64_t bad = 0;
    for (uint64_t p = 0; p < R.pages; p++) {
        uint64_t got = page_sum(R.w + p * PAGE_WORDS);
        if (got != R.cs[p]) {
            if (bad < MAX_ERR_LINES_PER_TICK)
                emit("MIGSAFE ERROR workload=%s counter=%llu kind=checksum page=%llu expected=0x%016llx got=0x%016llx",
                     g_name, (unsigned long long)g_counter, (unsigned long long)p,
                     (unsigned long long)R.cs[p], (unsigned long long)got);
            R.cs[p] = got;
            bad++;
        }
    }
    if (bad > MAX_ERR_LINES_PER_TICK)
        emit("MIGSAFE ERROR workload=%s counter=%llu kind=checksum-summary pages=%llu",
             g_name, (unsigned long long)g_counter, (unsigned long long)bad);
    return bad;
}

/* workload specific extra verification (returns number of problems) */
static uint64_t (*g_extra_verify)(void);

static void send_datagram(void) {
    if (!g_have_peer) return;
    char buf[128];
    int n = snprintf(buf, sizeof buf, "MIGSAFE udp workload=%s counter=%llu\n", g_name,
                     (unsigned long long)g_counter);
    if (sendto(g_sock, buf, (size_t)n, 0, (struct sockaddr *)&g_peer, sizeof g_peer) < 0 && !g_send_warned) {
        emit("MIGSAFE warn workload=%s msg=sendto-failed errno=%d", g_name, errno);
        g_send_warned = 1;
    }
}

static void tick(uint64_t now) {
    uint64_t bad = region_verify();
    if (g_extra_verify) bad += g_extra_verify();
    g_errors += bad;
    if (g_counter_per_tick) {
        g_counter++;
        record_store(g_counter); /* record first, then the line: see README */
        send_datagram();
    }
    emit("MIGSAFE progress workload=%s counter=%llu verified=%d errors=%llu ops=%llu cycles=%llu uptime_ms=%llu",
         g_name, (unsigned long long)g_counter, bad == 0 ? 1 : 0, (unsigned long long)g_errors,
         (unsigned long long)g_ops, (unsigned long long)g_cycles,
         (unsigned long long)((now - g_start_ns) / 1000000ull));
}

static void sleep_ns(uint64_t ns) {
    struct timespec ts = {(time_t)(ns / 1000000000ull), (long)(ns % 1000000000ull)};
    while (nanosleep(&ts, &ts) != 0 && errno == EINTR) {}
}

/* called every g_poll_every ops: ticks and paces */
static void poll_now(void) {
    uint64_t now = now_ns();
    if (now >= g_next_tick_ns) {
        tick(now);
        /* next tick 1 s after this one started; never catch up (counter +1 per tick) */
        g_next_tick_ns = now + 1000000000ull;
        now = now_ns();
        if (g_next_tick_ns < now + 100000000ull) g_next_tick_ns = now + 100000000ull;
    }
    if (g_rate) {
        uint64_t elapsed = now - g_pace_start_ns;
        uint64_t allowed = (uint64_t)((unsigned __int128)elapsed * g_rate / 1000000000ull);
        if (allowed > g_pace_ops + g_rate / 5) { /* far behind (clock jump, stall): restart pacing */
            g_pace_start_ns = now;
            g_pace_ops = 0;
        } else if (g_pace_ops > allowed) {
            uint64_t ahead_ns = (uint64_t)((unsigned __int128)(g_pace_ops - allowed) * 1000000000ull / g_rate);
            if (ahead_ns > g_next_tick_ns - now) ahead_ns = g_next_tick_ns > now ? g_next_tick_ns - now : 0;
            if (ahead_ns > 200000) sleep_ns(ahead_ns);
        }
    }
}

static inline void account(uint64_t n) {
    g_ops += n;
    g_pace_ops += n;
    g_since_poll += n;
    if (g_since_poll >= g_poll_every) {
        g_since_poll = 0;
        poll_now();
    }
}

static void start_clock(void) {
    uint64_t now = now_ns();
    g_pace_start_ns = now;
    g_pace_ops = 0;
    g_next_tick_ns = now + 1000000000ull;
}

/* ---------------------------------------------------------------- workloads */

static uint64_t fill_random(uint64_t p, unsigned i) { (void)p; (void)i; return rnd(); }

/* idle: a region filled once and never written; ticks once a second */
static int run_idle(void) {
    uint64_t mib = opt_u64("mib", 1);
    if (region_init(mib * 256, fill_random)) return 2;
    record_init(R.pages);
    record_store(g_counter);
    emit("MIGSAFE ready workload=idle pages=%llu", (unsigned long long)R.pages);
    start_clock();
    for (;;) {
        uint64_t now = now_ns();
        if (now < g_next_tick_ns) sleep_ns(g_next_tick_ns - now);
        poll_now();
    }
}

/* wset: random 8-byte writes over N MiB at a given rate */
static int run_wset(void) {
    uint64_t mib = opt_u64("mib", 64);
    g_rate = opt_u64("rate", 200000);
    if (region_init(mib * 256, fill_random)) return 2;
    record_init(R.pages);
    record_store(g_counter);
    emit("MIGSAFE ready workload=wset pages=%llu rate=%llu", (unsigned long long)R.pages,
         (unsigned long long)g_rate);
    uint64_t words = R.pages * DATA_WORDS;
    start_clock();
    for (;;) {
        uint64_t k = rnd_below(words);
        rset64(k / DATA_WORDS, (unsigned)(HDR_WORDS + k % DATA_WORDS), rnd());
        account(1);
    }
}

/* qsort: M MiB of u32 (1020 per page after the header), fill random, sort, check, repeat */
#define QS_PER_PAGE (DATA_WORDS * 2u)
static inline uint32_t qget(uint64_t e) {
    const uint32_t *p = (const uint32_t *)(R.w + (e / QS_PER_PAGE) * PAGE_WORDS);
    return p[HDR_WORDS * 2 + e % QS_PER_PAGE];
}
static inline void qset(uint64_t e, uint32_t v) {
    uint64_t page = e / QS_PER_PAGE;
    unsigned u = (unsigned)(HDR_WORDS * 2 + e % QS_PER_PAGE);
    uint32_t *p = (uint32_t *)(R.w + page * PAGE_WORDS) + u;
    uint32_t old = *p;
    *p = v;
    R.cs[page] ^= rotl((uint64_t)(old ^ v) << ((u & 1u) * 32u), u >> 1);
}
static void qsort_range(uint64_t lo0, uint64_t hi0) { /* [lo, hi] inclusive, explicit stack */
    uint64_t stk[128][2];
    int sp = 0;
    stk[sp][0] = lo0; stk[sp][1] = hi0; sp++;
    while (sp > 0) {
        sp--;
        uint64_t lo = stk[sp][0], hi = stk[sp][1];
        while (hi > lo) {
            if (hi - lo < 16) { /* insertion sort */
                for (uint64_t i = lo + 1; i <= hi; i++) {
                    uint32_t v = qget(i);
                    uint64_t j = i;
                    while (j > lo && qget(j - 1) > v) { qset(j, qget(j - 1)); j--; account(1); }
                    qset(j, v);
                    account(1);
                }
                break;
            }
            /* median of three pivot, Hoare partition */
            uint64_t mid = lo + (hi - lo) / 2;
            uint32_t a = qget(lo), b = qget(mid), c = qget(hi);
            uint32_t pv = a < b ? (b < c ? b : (a < c ? c : a)) : (a < c ? a : (b < c ? c : b));
            uint64_t i = lo, j = hi;
            for (;;) {
                while (qget(i) < pv) { i++; account(1); }
                while (qget(j) > pv) { j--; account(1); }
                if (i >= j) break;
                uint32_t t = qget(i); qset(i, qget(j)); qset(j, t);
                i++; j--;
                account(2);
            }
            /* [lo, j] and [j+1, hi]: push the larger, loop on the smaller */
            if (j - lo > hi - (j + 1)) {
                stk[sp][0] = lo; stk[sp][1] = j; sp++;
                lo = j + 1;
            } else {
                stk[sp][0] = j + 1; stk[sp][1] = hi; sp++;
                hi = j;
            }
        }
    }
}
static int run_qsort(void) {
    uint64_t mib = opt_u64("mib", 64);
    g_rate = opt_u64("rate", 0);
    g_poll_every = 4096;
    if (region_init(mib * 256, NULL)) return 2;
    record_init(R.pages);
    record_store(g_counter);
    uint64_t n = R.pages * QS_PER_PAGE;
    emit("MIGSAFE ready workload=qsort pages=%llu elements=%llu", (unsigned long long)R.pages,
         (unsigned long long)n);
    start_clock();
    for (;;) {
        for (uint64_t e = 0; e < n; e++) {
            qset(e, (uint32_t)rnd());
            if ((e & 1023) == 1023) account(1024);
        }
        qsort_range(0, n - 1);
        for (uint64_t e = 1; e < n; e++) {
            if (qget(e - 1) > qget(e)) {
                emit("MIGSAFE ERROR workload=qsort counter=%llu kind=unsorted index=%llu",
                     (unsigned long long)g_counter, (unsigned long long)e);
                g_errors++;
                break;
            }
            if ((e & 1023) == 0) account(1024);
        }
        g_cycles++;
    }
}

/* kv: open-addressing hash table, 32-byte slots (key, seq, value[8], check), 127 per page */
#define KV_PER_PAGE 127u
static uint64_t kv_slots, kv_entries;
static inline uint64_t mix64(uint64_t x) {
    x ^= x >> 30; x *= 0xbf58476d1ce4e5b9ull; x ^= x >> 27; x *= 0x94d049bb133111ebull; x ^= x >> 31;
    return x;
}
static inline uint64_t kv_key(uint64_t i) { return mix64(i + 0x1234567ull) | 1ull; } /* never 0 */
static inline uint64_t kv_check(uint64_t key, uint64_t seq, uint64_t val) { return mix64(key ^ mix64(seq ^ mix64(val))); }
static inline void kv_loc(uint64_t s, uint64_t *page, unsigned *wi) {
    *page = s / KV_PER_PAGE;
    *wi = 4u + (unsigned)(s % KV_PER_PAGE) * 4u;
}
static uint64_t kv_value(uint64_t seq) { /* short printable value, e.g. "v0001234" */
    char v[8];
    v[0] = 'v';
    uint64_t x = seq;
    for (int i = 7; i >= 1; i--) { v[i] = (char)('0' + x % 10); x /= 10; }
    uint64_t r;
    memcpy(&r, v, 8);
    return r;
}
static uint64_t kv_find(uint64_t key, int insert) {
    uint64_t s = mix64(key) & (kv_slots - 1);
    for (;;) {
        uint64_t page; unsigned wi;
        kv_loc(s, &page, &wi);
        uint64_t k = rget64(page, wi);
        if (k == key) return s;
        if (k == 0) return insert ? s : ~0ull;
        s = (s + 1) & (kv_slots - 1);
    }
}
static void kv_put(uint64_t s, uint64_t key, uint64_t seq) {
    uint64_t page; unsigned wi;
    kv_loc(s, &page, &wi);
    uint64_t val = kv_value(seq);
    rset64(page, wi + 0, key);
    rset64(page, wi + 1, seq);
    rset64(page, wi + 2, val);
    rset64(page, wi + 3, kv_check(key, seq, val));
}
static uint64_t kv_verify(void) {
    uint64_t bad = 0, found = 0;
    for (uint64_t s = 0; s < kv_slots; s++) {
        uint64_t page; unsigned wi;
        kv_loc(s, &page, &wi);
        uint64_t key = rget64(page, wi);
        if (!key) continue;
        found++;
        uint64_t seq = rget64(page, wi + 1), val = rget64(page, wi + 2), chk = rget64(page, wi + 3);
        if (chk != kv_check(key, seq, val) || val != kv_value(seq)) {
            if (bad < MAX_ERR_LINES_PER_TICK)
                emit("MIGSAFE ERROR workload=kv counter=%llu kind=entry slot=%llu page=%llu",
                     (unsigned long long)g_counter, (unsigned long long)s, (unsigned long long)page);
            bad++;
        }
    }
    if (found != kv_entries) {
        emit("MIGSAFE ERROR workload=kv counter=%llu kind=entry-count expected=%llu got=%llu",
             (unsigned long long)g_counter, (unsigned long long)kv_entries, (unsigned long long)found);
        kv_entries = found; /* report once */
        bad++;
    }
    return bad;
}
static int run_kv(void) {
    kv_entries = opt_u64("entries", 200000);
    g_rate = opt_u64("rate", 100000);
    kv_slots = 1024;
    while (kv_slots < kv_entries + kv_entries / 5) kv_slots <<= 1; /* load <= ~0.83 */
    if (region_init((kv_slots + KV_PER_PAGE - 1) / KV_PER_PAGE, NULL)) return 2;
    record_init(R.pages);
    record_store(g_counter);
    for (uint64_t i = 0; i < kv_entries; i++) {
        uint64_t key = kv_key(i);
        kv_put(kv_find(key, 1), key, 0);
    }
    g_extra_verify = kv_verify;
    emit("MIGSAFE ready workload=kv pages=%llu entries=%llu slots=%llu rate=%llu", (unsigned long long)R.pages,
         (unsigned long long)kv_entries, (unsigned long long)kv_slots, (unsigned long long)g_rate);
    start_clock();
    for (;;) {
        uint64_t key = kv_key(rnd_below(kv_entries));
        uint64_t s = kv_find(key, 0);
        if (s == ~0ull) {
            emit("MIGSAFE ERROR workload=kv counter=%llu kind=missing-key key=0x%016llx",
                 (unsigned long long)g_counter, (unsigned long long)key);
            g_errors++;
            sleep_ns(100000000ull);
            continue;
        }
        uint64_t page; unsigned wi;
        kv_loc(s, &page, &wi);
        kv_put(s, key, rget64(page, wi + 1) + 1);
        account(1);
    }
}

/* udp: counter = datagrams sent; pps datagrams per second to migsafe.peer */
static int run_udp(void) {
    uint64_t pps = opt_u64("pps", 20);
    if (pps == 0) pps = 1;
    if (!g_have_peer) {
        emit("MIGSAFE ERROR workload=udp counter=0 kind=config msg=migsafe.peer=IP:PORT-required");
        return 2;
    }
    if (region_init(opt_u64("mib", 1) * 256, fill_random)) return 2;
    record_init(R.pages);
    record_store(g_counter);
    g_counter_per_tick = 0;
    emit("MIGSAFE ready workload=udp pages=%llu pps=%llu", (unsigned long long)R.pages, (unsigned long long)pps);
    start_clock();
    uint64_t period = 1000000000ull / pps, next = now_ns();
    for (;;) {
        uint64_t now = now_ns();
        if (now < next) sleep_ns(next - now);
        next += period;
        if (now_ns() > next + 1000000000ull) next = now_ns(); /* clock jump: no burst */
        g_counter++;
        record_store(g_counter); /* record before the datagram leaves */
        send_datagram();
        g_ops++;
        poll_now();
    }
}

#include "wl-serve.c"

static void setup_peer(void) {
    const char *v = opt_str("peer");
    if (!v) return;
    char host[64];
    size_t n = strcspn(v, " \n");
    if (n == 0 || n >= sizeof host) return;
    memcpy(host, v, n);
    host[n] = 0;
    char *colon = strrchr(host, ':');
    if (!colon) return;
    *colon = 0;
    memset(&g_peer, 0, sizeof g_peer);
    g_peer.sin_family = AF_INET;
    g_peer.sin_port = htons((uint16_t)atoi(colon + 1));
    if (inet_pton(AF_INET, host, &g_peer.sin_addr) != 1) return;
    g_sock = socket(AF_INET, SOCK_DGRAM, 0);
    if (g_sock >= 0) g_have_peer = 1;
}

int main(int argc, char **argv) {
    if (argc < 2) {
        fprintf(stderr, "usage: migsafe-wl <idle|wset|qsort|kv|udp|serve>\n");
        return 2;
    }
    g_name = argv[1];
    FILE *f = fopen("/proc/cmdline", "r");
    if (f) {
        size_t n = fread(g_cmdline, 1, sizeof g_cmdline - 1, f);
        g_cmdline[n] = 0;
        fclose(f);
    }
    if (argc >= 3) snprintf(g_cmdline, sizeof g_cmdline, "%s", argv[2]); /* testing on a host */
    setvbuf(stdout, NULL, _IONBF, 0);
    g_rng = opt_u64("seed", 0);
    if (!g_rng) g_rng = now_ns() ^ 0xD1B54A32D192ED03ull;
    g_start_ns = now_ns();
    record_clear();
    madvise(&g_progress, sizeof g_progress, MADV_NOHUGEPAGE);
    if (mlockall(MCL_CURRENT | MCL_FUTURE) != 0)
        emit("MIGSAFE warn workload=%s msg=mlockall-failed errno=%d", g_name, errno);
    setup_peer();
    int rc;
    if (!strcmp(g_name, "idle")) rc = run_idle();
    else if (!strcmp(g_name, "wset")) rc = run_wset();
    else if (!strcmp(g_name, "qsort")) rc = run_qsort();
    else if (!strcmp(g_name, "kv")) rc = run_kv();
    else if (!strcmp(g_name, "udp")) rc = run_udp();
    else if (!strcmp(g_name, "serve")) rc = run_serve();
    else {
        emit("MIGSAFE ERROR workload=%s counter=0 kind=config msg=unknown-workload", g_name);
        rc = 2;
    }
    if (rc == 2 && R.w == NULL && strcmp(g_name, "udp") && strcmp(g_name, "serve"))
        emit("MIGSAFE ERROR workload=%s counter=0 kind=alloc msg=region-allocation-failed", g_name);
    record_clear();
    return rc;
}
