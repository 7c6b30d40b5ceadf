/*
 * tftpload: many lock-step TFTP read transfers from one process, for bench/tftp.py.
 *
 *   tftpload HOST PORT FILENAME LOCALFILE BLKSIZE CLIENTS
 *
 * Starts CLIENTS read requests for FILENAME at once (each from its own socket, so its own TID),
 * asking for BLKSIZE with RFC 2348 unless it is 512, and carries them all in one epoll loop:
 * DATA n -> ACK n, OACK -> ACK 0, a duplicate DATA is acknowledged again, a quiet second
 * resends the last packet (five times at most). Every received block is compared with the same
 * bytes of LOCALFILE, so a transfer that ends counts only when it delivered the file exactly.
 * Prints "<seconds> <bytes>" (wall time from the first request to the last block) and exits 0
 * when every transfer delivered the whole file; otherwise says which failed and exits 1.
 *
 * Why: fifty curl processes on a two-CPU machine spend about twice the CPU of the server they
 * test (exec, a poll loop, a wake-up and a context switch per block each), so a "50 clients"
 * run measures mostly them and the scheduler. Here a block costs the client one recvfrom, one
 * memcmp and one sendto: the server's own cost per block decides, as with fifty Pis on a LAN.
 */
#define _GNU_SOURCE
#include <arpa/inet.h>
#include <errno.h>
#include <fcntl.h>
#include <netinet/in.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/epoll.h>
#include <sys/mman.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <time.h>
#include <unistd.h>

enum { OP_RRQ = 1, OP_DATA = 3, OP_ACK = 4, OP_ERROR = 5, OP_OACK = 6 };
enum { MAX_TRIES = 5, MAX_EVENTS = 64 };

struct client {
    int fd;
    int done;               /* 0 running, 1 ok, -1 failed */
    uint16_t tid;           /* the server's port for this transfer, 0 until its first packet */
    uint64_t next;          /* absolute number of the block expected next */
    uint64_t bytes;         /* bytes received and checked */
    unsigned char last[600]; /* the last packet sent (RRQ or ACK), for a resend */
    size_t last_len;
    int tries;
    double last_heard;
    char why[160];
};

static double now(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return ts.tv_sec + ts.tv_nsec / 1e9;
}

static void fail(struct client *c, const char *why)
{
    c->done = -1;
    snprintf(c->why, sizeof c->why, "%s", why);
}

static void send_last(struct client *c, const struct sockaddr_in *server)
{
    struct sockaddr_in to = *server;
    if (c->tid)
        to.sin_port = htons(c->tid);
    if (sendto(c->fd, c->last, c->last_len, 0, (struct sockaddr *)&to, sizeof to) < 0 &&
        errno != EAGAIN && errno != ENOBUFS)
        fail(c, strerror(errno));
}

static void ack(struct client *c, const struct sockaddr_in *server, uint16_t block)
{
    c->last[0] = 0;
    c->last[1] = OP_ACK;
    c->last[2] = block >> 8;
    c->last[3] = block & 0xff;
    c->last_len = 4;
    send_last(c, server);
}

int main(int argc, char **argv)
{
    if (argc != 7) {
        fprintf(stderr, "usage: %s HOST PORT FILENAME LOCALFILE BLKSIZE CLIENTS\n", argv[0]);
        return 2;
    }
    struct sockaddr_in server = {.sin_family = AF_INET, .sin_port = htons(atoi(argv[2]))};
    if (inet_pton(AF_INET, argv[1], &server.sin_addr) != 1) {
        fprintf(stderr, "tftpload: %s: not an IPv4 address\n", argv[1]);
        return 2;
    }
    const char *name = argv[3];
    long blksize = atol(argv[5]);
    long nclients = atol(argv[6]);
    if (blksize < 8 || blksize > 65464 || nclients < 1 || nclients > 4096 ||
        strlen(name) > 400) {
        fprintf(stderr, "tftpload: bad blksize, clients or filename\n");
        return 2;
    }
    int lf = open(argv[4], O_RDONLY);
    struct stat st;
    if (lf < 0 || fstat(lf, &st) < 0) {
        perror(argv[4]);
        return 2;
    }
    uint64_t size = st.st_size;
    const unsigned char *want = size ? mmap(NULL, size, PROT_READ, MAP_PRIVATE, lf, 0) : NULL;
    if (size && want == MAP_FAILED) {
        perror("mmap");
        return 2;
    }

    int ep = epoll_create1(0);
    struct client *clients = calloc(nclients, sizeof *clients);
    unsigned char *buf = malloc(blksize + 4 + 1);
    if (ep < 0 || !clients || !buf) {
        perror("tftpload");
        return 2;
    }
    double t0 = now();
    for (long i = 0; i < nclients; i++) {
        struct client *c = &clients[i];
        c->fd = socket(AF_INET, SOCK_DGRAM | SOCK_NONBLOCK | SOCK_CLOEXEC, 0);
        if (c->fd < 0) {
            perror("socket");
            return 2;
        }
        int rcv = 1 << 20;
        setsockopt(c->fd, SOL_SOCKET, SO_RCVBUF, &rcv, sizeof rcv);
        struct epoll_event ev = {.events = EPOLLIN, .data.u64 = (uint64_t)i};
        epoll_ctl(ep, EPOLL_CTL_ADD, c->fd, &ev);
        size_t n = 0;
        c->last[n++] = 0;
        c->last[n++] = OP_RRQ;
        n += sprintf((char *)c->last + n, "%s", name) + 1;
        n += sprintf((char *)c->last + n, "octet") + 1;
        if (blksize != 512) {
            n += sprintf((char *)c->last + n, "blksize") + 1;
            n += sprintf((char *)c->last + n, "%ld", blksize) + 1;
        }
        c->last_len = n;
        c->next = 1;
        c->last_heard = t0;
        send_last(c, &server);
    }

    long running = nclients;
    double t_end = t0;
    struct epoll_event events[MAX_EVENTS];
    while (running > 0) {
        int n = epoll_wait(ep, events, MAX_EVENTS, 100);
        if (n < 0 && errno != EINTR) {
            perror("epoll_wait");
            return 2;
        }
        double t = now();
        for (int e = 0; e < n; e++) {
            struct client *c = &clients[events[e].data.u64];
            for (;;) { /* drain this socket */
                if (c->done)
                    break;
                struct sockaddr_in from;
                socklen_t fl = sizeof from;
                ssize_t len = recvfrom(c->fd, buf, blksize + 4 + 1, 0,
                                       (struct sockaddr *)&from, &fl);
                if (len < 0) {
                    if (errno != EAGAIN && errno != EINTR)
                        fail(c, strerror(errno));
                    break;
                }
                if (from.sin_addr.s_addr != server.sin_addr.s_addr)
                    continue;
                uint16_t port = ntohs(from.sin_port);
                if (c->tid == 0)
                    c->tid = port;
                else if (port != c->tid)
                    continue; /* another TID: not this transfer (RFC 1350 would answer ERROR 5) */
                c->last_heard = t;
                c->tries = 0;
                int op = len >= 2 ? buf[0] << 8 | buf[1] : -1;
                if (op == OP_OACK) {
                    if (c->next != 1) /* a late duplicate OACK */
                        continue;
                    ack(c, &server, 0);
                } else if (op == OP_DATA && len >= 4) {
                    uint16_t block = buf[2] << 8 | buf[3];
                    size_t payload = len - 4;
                    if (block == (uint16_t)c->next) {
                        if (payload > (size_t)blksize || c->bytes + payload > size ||
                            memcmp(buf + 4, want + c->bytes, payload) != 0) {
                            fail(c, "received bytes differ from the file");
                            break;
                        }
                        c->bytes += payload;
                        c->next++;
                        ack(c, &server, block);
                        if (payload < (size_t)blksize) {
                            c->done = c->bytes == size ? 1 : -1;
                            if (c->done < 0)
                                snprintf(c->why, sizeof c->why, "ended after %llu of %llu bytes",
                                         (unsigned long long)c->bytes, (unsigned long long)size);
                        }
                    } else if (block == (uint16_t)(c->next - 1)) {
                        ack(c, &server, block); /* a resent block: our ACK was lost */
                    }
                } else if (op == OP_ERROR) {
                    char why[140];
                    snprintf(why, sizeof why, "server ERROR %d: %.100s", len >= 4 ? buf[3] : -1,
                             len > 4 ? (char *)buf + 4 : "");
                    fail(c, why);
                }
            }
            if (c->done && c->fd >= 0) {
                epoll_ctl(ep, EPOLL_CTL_DEL, c->fd, NULL);
                close(c->fd);
                c->fd = -1;
                running--;
                t_end = t;
            }
        }
        for (long i = 0; i < nclients; i++) { /* timeouts */
            struct client *c = &clients[i];
            if (c->done || t - c->last_heard < 1.0)
                continue;
            if (++c->tries > MAX_TRIES) {
                fail(c, "timed out");
                epoll_ctl(ep, EPOLL_CTL_DEL, c->fd, NULL);
                close(c->fd);
                c->fd = -1;
                running--;
                continue;
            }
            c->last_heard = t;
            send_last(c, &server);
        }
    }

    int failed = 0;
    uint64_t total = 0;
    for (long i = 0; i < nclients; i++) {
        total += clients[i].bytes;
        if (clients[i].done != 1) {
            if (failed++ < 5)
                fprintf(stderr, "tftpload: transfer %ld: %s\n", i, clients[i].why);
        }
    }
    printf("%.6f %llu\n", t_end - t0, (unsigned long long)total);
    return failed ? 1 : 0;
}
