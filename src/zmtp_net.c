/*
** zmtp_net.c -- the socket layer of the network engine: endpoint strings,
** listening sockets, accept, and the self-pipe that wakes the poll loop.
**
** Everything here is a thin, careful wrapper over POSIX sockets, kept in
** one file so that the rest of the engine never sees a sockaddr.  The rules
** it enforces:
**   - Every descriptor is created non-blocking and close-on-exec in the same
**     call (accept4, pipe2, SOCK_NONBLOCK), so a fork+exec elsewhere in the
**     host program never inherits a socket of ours and nothing ever blocks
**     the loop.
**   - Endpoints are numeric: "tcp://HOST:PORT" with an IPv4 address, an IPv6
**     address in brackets, "*" (all IPv4 addresses, as libzmq reads it) or
**     "localhost".  No name resolution, so binding never waits on DNS.
**   - Listeners set SO_REUSEADDR: a restarted server must get its port back
**     at once although its old connections linger in TIME_WAIT, because
**     libzmq peers keep reconnecting to that very port.
**   - mqi_net_pipe_poke is async-signal-safe (one write(2), errno kept), so
**     mq_server_stop may be called from a signal handler.
*/
#include <arpa/inet.h>
#include <errno.h>
#include <fcntl.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <unistd.h>

#include "zmtp_net.h"

#define NET_BACKLOG 128

#if defined(__GNUC__)
__attribute__((format(printf, 4, 5)))
#endif
static int
net_fail(char *err, size_t errlen, int rc, const char *fmt, ...) {
  va_list ap;
  va_start(ap, fmt);
  if (err && errlen) vsnprintf(err, errlen, fmt, ap);
  va_end(ap);
  return rc;
}

/* Parse a decimal port 0..65535 that fills s exactly. */
static int net_port(const char *s, unsigned *port) {
  unsigned v = 0;
  if (!*s || strlen(s) > 5) return -1;
  for (const char *p = s; *p; p++) {
    if (*p < '0' || *p > '9') return -1;
    v = v * 10 + (unsigned)(*p - '0');
  }
  if (v > 65535) return -1;
  *port = v;
  return 0;
}

int mqi_net_parse(const char *endpoint, struct sockaddr_storage *ss, socklen_t *len, char *err,
                  size_t errlen) {
  char host[64];
  const char *rest, *colon;
  unsigned port = 0;
  if (err && errlen) err[0] = '\0';
  if (!endpoint || !ss || !len) return net_fail(err, errlen, MQ_EINVAL, "endpoint is NULL");
  memset(ss, 0, sizeof *ss);
  if (strncmp(endpoint, "tcp://", 6) != 0)
    return net_fail(err, errlen, MQ_EINVAL, "endpoint \"%.100s\" does not start with tcp://",
                    endpoint);
  rest = endpoint + 6;
  if (rest[0] == '[') {
    const char *rb = strchr(rest, ']');
    if (!rb || rb[1] != ':')
      return net_fail(err, errlen, MQ_EINVAL, "endpoint \"%.100s\": expected [IPV6]:PORT",
                      endpoint);
    size_t n = (size_t)(rb - rest - 1);
    if (n == 0 || n >= sizeof host)
      return net_fail(err, errlen, MQ_EINVAL, "endpoint \"%.100s\": bad IPv6 address", endpoint);
    memcpy(host, rest + 1, n);
    host[n] = '\0';
    colon = rb + 1;
  } else {
    colon = strrchr(rest, ':');
    size_t n = colon ? (size_t)(colon - rest) : 0;
    if (!colon || n == 0 || n >= sizeof host)
      return net_fail(err, errlen, MQ_EINVAL, "endpoint \"%.100s\": expected HOST:PORT", endpoint);
    memcpy(host, rest, n);
    host[n] = '\0';
  }
  if (net_port(colon + 1, &port) != 0)
    return net_fail(err, errlen, MQ_EINVAL, "endpoint \"%.100s\": bad port \"%.20s\"", endpoint,
                    colon + 1);
  if (rest[0] == '[') {
    struct sockaddr_in6 *a6 = (struct sockaddr_in6 *)ss;
    if (inet_pton(AF_INET6, host, &a6->sin6_addr) != 1)
      return net_fail(err, errlen, MQ_EINVAL, "endpoint \"%.100s\": bad IPv6 address \"%s\"",
                      endpoint, host);
    a6->sin6_family = AF_INET6;
    a6->sin6_port = htons((uint16_t)port);
    *len = sizeof *a6;
    return MQ_OK;
  }
  struct sockaddr_in *a4 = (struct sockaddr_in *)ss;
  a4->sin_family = AF_INET;
  a4->sin_port = htons((uint16_t)port);
  *len = sizeof *a4;
  if (strcmp(host, "*") == 0) {
    a4->sin_addr.s_addr = htonl(INADDR_ANY);
  } else if (strcmp(host, "localhost") == 0) {
    a4->sin_addr.s_addr = htonl(INADDR_LOOPBACK);
  } else if (inet_pton(AF_INET, host, &a4->sin_addr) != 1) {
    return net_fail(err, errlen, MQ_EINVAL,
                    "endpoint \"%.100s\": \"%s\" is not an IPv4 address, [IPv6], * or localhost",
                    endpoint, host);
  }
  return MQ_OK;
}

int mqi_net_listen(const struct sockaddr_storage *ss, socklen_t len, int *fd, char *err,
                   size_t errlen) {
  int one = 1;
  *fd = -1;
  int s = socket(ss->ss_family, SOCK_STREAM | SOCK_NONBLOCK | SOCK_CLOEXEC, 0);
  if (s < 0) return net_fail(err, errlen, MQ_ENET, "socket: %s", strerror(errno));
  if (setsockopt(s, SOL_SOCKET, SO_REUSEADDR, &one, sizeof one) != 0 ||
      (ss->ss_family == AF_INET6 &&
       setsockopt(s, IPPROTO_IPV6, IPV6_V6ONLY, &one, sizeof one) != 0)) {
    int e = errno;
    close(s);
    return net_fail(err, errlen, MQ_ENET, "setsockopt: %s", strerror(e));
  }
  if (bind(s, (const struct sockaddr *)ss, len) != 0) {
    int e = errno;
    close(s);
    return net_fail(err, errlen, MQ_ENET, "bind: %s", strerror(e));
  }
  if (listen(s, NET_BACKLOG) != 0) {
    int e = errno;
    close(s);
    return net_fail(err, errlen, MQ_ENET, "listen: %s", strerror(e));
  }
  *fd = s;
  return MQ_OK;
}

/* "ADDR:PORT" ("[ADDR]:PORT" for IPv6) of a socket address. */
static void net_addr_name(const struct sockaddr_storage *ss, char *buf, size_t cap) {
  char a[INET6_ADDRSTRLEN];
  if (ss->ss_family == AF_INET6) {
    const struct sockaddr_in6 *a6 = (const struct sockaddr_in6 *)ss;
    inet_ntop(AF_INET6, &a6->sin6_addr, a, sizeof a);
    snprintf(buf, cap, "[%s]:%u", a, (unsigned)ntohs(a6->sin6_port));
  } else if (ss->ss_family == AF_INET) {
    const struct sockaddr_in *a4 = (const struct sockaddr_in *)ss;
    inet_ntop(AF_INET, &a4->sin_addr, a, sizeof a);
    snprintf(buf, cap, "%s:%u", a, (unsigned)ntohs(a4->sin_port));
  } else {
    snprintf(buf, cap, "?");
  }
}

int mqi_net_local_name(int fd, char *buf, size_t cap) {
  struct sockaddr_storage ss;
  socklen_t len = sizeof ss;
  /* Room for the longest address (a scoped IPv6 one with its port is
  ** about 70 bytes) with "tcp://" in front, and no more: a compiler that
  ** sees the whole of mq.c can then prove the name is never cut short. */
  char addr[MQI_NET_NAME_MAX - sizeof "tcp://" + 1];
  memset(&ss, 0, sizeof ss);
  if (getsockname(fd, (struct sockaddr *)&ss, &len) != 0) return MQ_ENET;
  net_addr_name(&ss, addr, sizeof addr);
  snprintf(buf, cap, "tcp://%s", addr);
  return MQ_OK;
}

int mqi_net_accept(int lfd, char *peer, size_t cap) {
  struct sockaddr_storage ss;
  socklen_t len = sizeof ss;
  int one = 1;
  memset(&ss, 0, sizeof ss);
  int s = accept4(lfd, (struct sockaddr *)&ss, &len, SOCK_NONBLOCK | SOCK_CLOEXEC);
  if (s < 0) return -1;
  /* Small frames (READY, PONG, ACK replies) must not wait for Nagle. */
  (void)setsockopt(s, IPPROTO_TCP, TCP_NODELAY, &one, sizeof one);
  if (peer && cap) net_addr_name(&ss, peer, cap);
  return s;
}

int mqi_net_connect(const struct sockaddr_storage *ss, socklen_t len, int *fd) {
  int one = 1;
  *fd = -1;
  int s = socket(ss->ss_family, SOCK_STREAM | SOCK_NONBLOCK | SOCK_CLOEXEC, 0);
  if (s < 0) return -1;
  (void)setsockopt(s, IPPROTO_TCP, TCP_NODELAY, &one, sizeof one);
  if (connect(s, (const struct sockaddr *)ss, len) == 0) {
    *fd = s;
    return 0;
  }
  /* EINTR on a non-blocking connect means it goes on in the background,
  ** like EINPROGRESS; retrying it would give EALREADY. */
  if (errno == EINPROGRESS || errno == EINTR) {
    *fd = s;
    return 1;
  }
  int e = errno;
  close(s);
  errno = e;
  return -1;
}

int mqi_net_connect_result(int fd) {
  int err = 0;
  socklen_t len = sizeof err;
  if (getsockopt(fd, SOL_SOCKET, SO_ERROR, &err, &len) != 0) return errno ? errno : EIO;
  return err;
}

int mqi_net_pipe(int fds[2]) {
  if (pipe2(fds, O_NONBLOCK | O_CLOEXEC) != 0) {
    fds[0] = fds[1] = -1;
    return MQ_ENET;
  }
  return MQ_OK;
}

void mqi_net_pipe_poke(int wfd) {
  int saved = errno;
  char b = 1;
  /* A full pipe already holds a wake-up: EAGAIN is success here. */
  ssize_t n = write(wfd, &b, 1);
  (void)n;
  errno = saved;
}

void mqi_net_pipe_drain(int rfd) {
  char buf[256];
  /* Bounded: the pipe holds at most its capacity, and pokes that race with
  ** this loop leave a byte behind for the next poll, which is harmless. */
  for (int i = 0; i < 64; i++) {
    ssize_t n = read(rfd, buf, sizeof buf);
    if (n <= 0) break;
  }
}
