/*
 * serve: a request/response service (npm run eval's E8, V-Recover Fig. 13-15). Listens on UDP
 * migsafe.port (default 7007); each request is one datagram, its text an id (at most 64
 * printable bytes). Serving it is an update: one random 8-byte write into the region (as a
 * key-value store's update dirties a page), then one reply to the sender:
 *     MIGSAFE reply workload=serve counter=N id=<the request's text>
 * counter = replies sent; the record is stored before the reply leaves (as udp's datagrams),
 * so a checkpoint's record bounds what a client can have seen. Once a tick the usual progress
 * line, and one datagram to migsafe.peer when there is one: it tells the network (the output
 * gate) where the guest is before any request came in.
 * Included by migsafe-wl.c: it uses that file's region, record, tick and options.
 */
#include <poll.h>

static int run_serve(void) {
    uint64_t port = opt_u64("port", 7007);
    int s = socket(AF_INET, SOCK_DGRAM, 0);
    struct sockaddr_in me;
    memset(&me, 0, sizeof me);
    me.sin_family = AF_INET;
    me.sin_port = htons((uint16_t)port);
    me.sin_addr.s_addr = htonl(INADDR_ANY);
    if (s < 0 || bind(s, (struct sockaddr *)&me, sizeof me) != 0) {
        emit("MIGSAFE ERROR workload=serve counter=0 kind=config msg=cannot-bind-udp-port-%llu errno=%d",
             (unsigned long long)port, errno);
        return 2;
    }
    if (region_init(opt_u64("mib", 1) * 256, fill_random)) return 2;
    record_init(R.pages);
    record_store(g_counter);
    g_counter_per_tick = 0;
    emit("MIGSAFE ready workload=serve pages=%llu port=%llu", (unsigned long long)R.pages, (unsigned long long)port);
    start_clock();
    send_datagram();
    uint64_t words = R.pages * DATA_WORDS;
    for (;;) {
        uint64_t now = now_ns();
        if (now >= g_next_tick_ns) {
            poll_now();
            send_datagram();
            continue;
        }
        struct pollfd pfd = {.fd = s, .events = POLLIN};
        int wait_ms = (int)((g_next_tick_ns - now) / 1000000ull) + 1;
        if (poll(&pfd, 1, wait_ms) <= 0) continue;
        char req[65], out[160];
        struct sockaddr_in from;
        socklen_t fl = sizeof from;
        ssize_t n = recvfrom(s, req, sizeof req - 1, MSG_DONTWAIT, (struct sockaddr *)&from, &fl);
        if (n <= 0) continue;
        req[n] = 0;
        for (ssize_t i = 0; i < n; i++) /* the id goes into a console-safe reply: no spaces */
            if (req[i] <= ' ' || req[i] > '~') req[i] = '_';
        uint64_t k = rnd_below(words);
        rset64(k / DATA_WORDS, (unsigned)(HDR_WORDS + k % DATA_WORDS), rnd());
        g_ops++;
        g_counter++;
        record_store(g_counter); /* record before the reply leaves */
        int m = snprintf(out, sizeof out, "MIGSAFE reply workload=serve counter=%llu id=%s\n",
                         (unsigned long long)g_counter, req);
        if (sendto(s, out, (size_t)m, 0, (struct sockaddr *)&from, fl) < 0 && !g_send_warned) {
            emit("MIGSAFE warn workload=serve msg=sendto-failed errno=%d", errno);
            g_send_warned = 1;
        }
    }
}
