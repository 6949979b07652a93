/*
 * megalos: the CNI binary. Forwards the runtime's request (the CNI_* environment and the
 * network config on stdin) to the node agent over its UNIX socket and prints the answer.
 *
 * The C edition of cni/shim.py, whose docstring describes the wire protocol; the two behave
 * the same, byte for byte, and tests/test_shim.py runs both. Plain C and libc, nothing
 * allocated: every buffer is static and bounded. Build (megalos-install-shim --kind c does):
 *     cc -O2 -static -o megalos shim.c
 *
 * Before it forwards anything the shim refuses, itself, a config larger than 1 MiB or nesting
 * arrays and objects more than 64 deep (code 6) and an "agentSocket" that is not a socket in
 * /run/megalos/ (code 7); it answers VERSION itself (static). The agent's socket: the config's
 * "agentSocket", else $MEGALOS_AGENT_SOCKET, else the default. The config is scanned, not
 * parsed (see scan_member), for "agentSocket" and for the "cniVersion" that the shim's own
 * answers carry; cni/shim.py scans it the same way, so both find the same values in any bytes.
 */
#define _GNU_SOURCE
#include <errno.h>
#include <poll.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/time.h>
#include <sys/un.h>
#include <time.h>
#include <unistd.h>

#define MAGIC "CNI1\n"
#define DEFAULT_SOCKET "/run/megalos/agent.sock"
#define SOCKET_DIR "/run/megalos/"
#define SOCKET_RULE "agentSocket must be a socket in " SOCKET_DIR " (" SOCKET_DIR "NAME, NAME of " \
	"letters, digits, '.', '_', '-'): the plugin talks only to the megalos agent"
#define DEFAULT_VERSION "1.1.0"
#define SUPPORTED_VERSIONS "[\"0.3.0\", \"0.3.1\", \"0.4.0\", \"1.0.0\", \"1.1.0\"]"
#define DEFAULT_TIMEOUT 120.0
#define MAX_STDIN (1 << 20)
#define MAX_ENV (1 << 16)
#define MAX_REPLY (1 << 20)
#define MAX_DEPTH 64 /* nested arrays and objects in a config; a real one has fewer than 10 */
#define MAX_VALUE 4096 /* the longest cniVersion or agentSocket value read from the config */
#define ERR_IO 5
#define ERR_DECODE 6
#define ERR_INVALID_CONFIG 7
#define ERR_TRY_AGAIN_LATER 11
#define ERR_NOT_AVAILABLE 50

extern char **environ;

static char config[MAX_STDIN + 1];
static size_t config_len;
static char request_head[sizeof MAGIC - 1 + MAX_ENV];
static char reply[MAX_REPLY + 1];
static char version[MAX_VALUE] = DEFAULT_VERSION;
static size_t version_len = sizeof DEFAULT_VERSION - 1;
static char config_socket[MAX_VALUE];
/* JSON's short escapes: backslash + json_escape[i] stands for json_special[i]. The last two
 * are only read: json.dumps writes '/' as it is, and after "\u" come four hex digits. */
static const char json_special[] = "\"\\\n\r\t\b\f/", json_escape[] = "\"\\nrtbf/u";

/* -- error answers: the CNI error JSON, formatted as Python's json.dumps formats it -------- */

/* The length of the valid UTF-8 sequence at s (n bytes left), its code point in *cp; 0 if
 * the bytes are not valid UTF-8 (encoded surrogates are, with `surrogates`). */
static int utf8_decode(const unsigned char *s, size_t n, unsigned *cp, int surrogates)
{
	unsigned lo = 0x80, hi = 0xBF;
	int len;

	if (s[0] < 0x80) {
		*cp = s[0];
		return 1;
	}
	if (s[0] >= 0xC2 && s[0] <= 0xDF) {
		len = 2;
		*cp = s[0] & 0x1F;
	} else if (s[0] >= 0xE0 && s[0] <= 0xEF) {
		len = 3;
		*cp = s[0] & 0x0F;
		lo = s[0] == 0xE0 ? 0xA0 : 0x80; /* no overlong forms */
		hi = s[0] == 0xED && !surrogates ? 0x9F : 0xBF;
	} else if (s[0] >= 0xF0 && s[0] <= 0xF4) {
		len = 4;
		*cp = s[0] & 0x07;
		lo = s[0] == 0xF0 ? 0x90 : 0x80;
		hi = s[0] == 0xF4 ? 0x8F : 0xBF; /* nothing above U+10FFFF */
	} else {
		return 0;
	}
	if ((size_t)len > n)
		return 0;
	for (int i = 1; i < len; i++, lo = 0x80, hi = 0xBF) {
		if (s[i] < lo || s[i] > hi)
			return 0;
		*cp = (*cp << 6) | (s[i] & 0x3F);
	}
	return len;
}

/* A JSON string, ASCII only, equal to json.dumps of the text Python's shim shows: a byte that
 * is not UTF-8 becomes U+DC80..U+DCFF, as with Python's surrogateescape. `surrogates`: text
 * unescaped from the config, where (as in a Python str) a lone surrogate is a character. */
static void put_json_string(const char *text, size_t n, int surrogates)
{
	const unsigned char *s = (const unsigned char *)text;

	putchar('"');
	for (size_t i = 0; i < n;) {
		unsigned cp;
		int len = utf8_decode(s + i, n - i, &cp, surrogates);
		const char *escape;

		if (len == 0) {
			cp = 0xDC00 + s[i];
			len = 1;
		}
		i += len;
		escape = cp > 0 && cp < 0x80 && cp != '/' ? strchr(json_special, cp) : NULL;
		if (escape)
			printf("\\%c", json_escape[escape - json_special]);
		else if (cp >= 0x20 && cp < 0x7F)
			putchar(cp);
		else if (cp < 0x10000)
			printf("\\u%04x", cp);
		else
			printf("\\u%04x\\u%04x", 0xD800 + ((cp - 0x10000) >> 10), 0xDC00 + ((cp - 0x10000) & 0x3FF));
	}
	putchar('"');
}

/* Print the error answer (details: NULL for none) and return the exit status, 1. */
static int fail(int code, const char *details, const char *fmt, ...)
{
	static char msg[MAX_ENV + 256]; /* paths from the environment may be long */
	va_list ap;

	va_start(ap, fmt);
	vsnprintf(msg, sizeof msg, fmt, ap);
	va_end(ap);
	fputs("{\"cniVersion\": ", stdout);
	put_json_string(version, version_len, 1);
	printf(", \"code\": %d, \"msg\": ", code);
	put_json_string(msg, strlen(msg), 0);
	if (details && *details) {
		fputs(", \"details\": ", stdout);
		put_json_string(details, strlen(details), 0);
	}
	fputs("}\n", stdout);
	return 1;
}

/* -- the config: a scan for two top-level strings ----------------------------------------- */

static size_t skip_space(const char *s, size_t n, size_t i)
{
	while (i < n && (s[i] == ' ' || s[i] == '\t' || s[i] == '\n' || s[i] == '\r'))
		i++;
	return i;
}

/* The index just past the JSON string that starts at s[i] (a quote); n if unterminated. */
static size_t string_end(const char *s, size_t n, size_t i)
{
	for (i++; i < n; i++) {
		if (s[i] == '\\')
			i++;
		else if (s[i] == '"')
			return i + 1;
	}
	return n;
}

static int hex4(const char *s, unsigned *value)
{
	*value = 0;
	for (int i = 0; i < 4; i++) {
		char c = s[i];
		int digit = c >= '0' && c <= '9' ? c - '0' : c >= 'a' && c <= 'f' ? c - 'a' + 10
			  : c >= 'A' && c <= 'F' ? c - 'A' + 10 : -1;
		if (digit < 0)
			return 0;
		*value = *value * 16 + digit;
	}
	return 1;
}

/* Write code point cp as UTF-8 (a lone surrogate too, as Python's surrogatepass does). */
static size_t put_utf8(char *out, unsigned cp)
{
	static const unsigned char lead[] = { 0, 0, 0xC0, 0xE0, 0xF0 };
	size_t n = cp < 0x80 ? 1 : cp < 0x800 ? 2 : cp < 0x10000 ? 3 : 4;

	for (size_t i = n - 1; i > 0; i--, cp >>= 6)
		out[i] = 0x80 | (cp & 0x3F);
	out[0] = lead[n] | cp;
	return n;
}

/* The JSON string s[start..end) (quotes included) unescaped into out, NUL-terminated; its
 * length, or -1 if malformed or longer than cap - 1. */
static long unescape(const char *s, size_t start, size_t end, char *out, size_t cap)
{
	size_t o = 0;

	if (end - start < 2 || s[end - 1] != '"')
		return -1;
	for (size_t i = start + 1; i < end - 1; i++) {
		unsigned cp, low;
		const char *escape;

		if (o + 4 >= cap)
			return -1;
		if (s[i] != '\\') {
			out[o++] = s[i]; /* raw bytes go as they are */
			continue;
		}
		escape = strchr(json_escape, s[++i]);
		if (!escape || !*escape)
			return -1;
		cp = (unsigned char)json_special[escape - json_escape]; /* for 'u', read below */
		if (*escape == 'u') {
			if (i + 4 >= end - 1 || !hex4(s + i + 1, &cp))
				return -1;
			i += 4;
			if (cp >= 0xD800 && cp < 0xDC00 && i + 6 < end - 1 && s[i + 1] == '\\'
			    && s[i + 2] == 'u' && hex4(s + i + 3, &low) && low >= 0xDC00 && low < 0xE000) {
				cp = 0x10000 + ((cp - 0xD800) << 10) + (low - 0xDC00);
				i += 6;
			}
		}
		o += put_utf8(out + o, cp);
	}
	out[o] = '\0';
	return o;
}

/* The string value of the top-level member `key` of the JSON object in s (the last one wins,
 * as with Python's json), unescaped into out; its length, or -1 if absent or not a string.
 * A scan, not a parser: it follows strings and nesting only. On a well-formed config it finds
 * what json.loads finds; on a malformed one (which the agent refuses anyway) it may find a
 * value where json.loads gives up. A key written with escapes is not recognised. */
static long scan_member(const char *s, size_t n, const char *key, char *out, size_t cap)
{
	size_t i = skip_space(s, n, 0), key_len = strlen(key);
	int depth = 0, at_key = 0;
	long found = -1;

	if (i >= n || s[i] != '{')
		return -1;
	for (; i < n; i++) {
		size_t end, value;

		switch (s[i]) {
		case '{': case '[':
			at_key = ++depth == 1;
			break;
		case '}': case ']':
			if (--depth == 0)
				return found;
			break;
		case ',':
			at_key = depth == 1;
			break;
		case '"':
			end = string_end(s, n, i);
			if (at_key) {
				at_key = 0;
				value = skip_space(s, n, end);
				if (value < n && s[value] == ':') {
					value = skip_space(s, n, value + 1);
					if (end - i == key_len + 2 && memcmp(s + i + 1, key, key_len) == 0)
						found = value < n && s[value] == '"'
							? unescape(s, value, string_end(s, n, value), out, cap) : -1;
					end = value; /* go on with the value */
				}
			}
			i = end - 1;
			break;
		}
	}
	return found;
}

/* Whether arrays and objects nest more than MAX_DEPTH deep anywhere in the config (brackets in
 * strings do not count; well-formed or not). */
static int too_deep(const char *s, size_t n)
{
	long depth = 0;

	for (size_t i = 0; i < n; i++) {
		switch (s[i]) {
		case '"':
			i = string_end(s, n, i) - 1;
			break;
		case '{': case '[':
			if (++depth > MAX_DEPTH)
				return 1;
			break;
		case '}': case ']':
			depth--;
			break;
		}
	}
	return 0;
}

/* Whether path (n bytes, no NUL) is a socket in SOCKET_DIR: the only sockets a config may name. */
static int socket_allowed(const char *path, size_t n)
{
	size_t dir = sizeof SOCKET_DIR - 1;

	if (n <= dir || memcmp(path, SOCKET_DIR, dir) != 0)
		return 0;
	if (strcmp(path + dir, ".") == 0 || strcmp(path + dir, "..") == 0)
		return 0;
	for (size_t i = dir; i < n; i++) {
		char c = path[i];

		if (!((c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') || (c >= '0' && c <= '9')
		      || c == '.' || c == '_' || c == '-'))
			return 0;
	}
	return 1;
}

/* VERSION's answer: static but for the cniVersion, the config's. */
static int answer_version(void)
{
	fputs("{\"cniVersion\": ", stdout);
	put_json_string(version, version_len, 1);
	fputs(", \"supportedVersions\": " SUPPORTED_VERSIONS "}\n", stdout);
	return 0;
}

/* -- the request ---------------------------------------------------------------------------- */

/* Read stdin (at most MAX_STDIN + 1 bytes, to see that it is too long); -1 on error. */
static int read_stdin(void)
{
	if (isatty(0))
		return 0;
	while (config_len < sizeof config) {
		ssize_t n = read(0, config + config_len, sizeof config - config_len);

		if (n == 0 || (n < 0 && errno == EBADF)) /* EBADF: no stdin at all */
			break;
		if (n < 0 && errno != EINTR)
			return -1;
		if (n > 0)
			config_len += n;
	}
	return 0;
}

/* MAGIC, each CNI_* variable as NAME=VALUE\0, and \0; its length, or 0 if too long. */
static size_t build_request_head(void)
{
	size_t len = sizeof MAGIC - 1;

	memcpy(request_head, MAGIC, len);
	for (char **e = environ; *e; e++) {
		size_t n = strlen(*e) + 1;

		if (strncmp(*e, "CNI_", 4) != 0 || !strchr(*e, '='))
			continue;
		if (len + n + 1 > sizeof request_head)
			return 0;
		memcpy(request_head + len, *e, n);
		len += n;
	}
	request_head[len++] = '\0';
	return len;
}

/* $MEGALOS_TIMEOUT: a plain decimal number of seconds (30, 0.5); anything else is 120. */
static double parse_timeout(const char *s)
{
	int digits = 0, dots = 0;
	double value;

	if (!s)
		return DEFAULT_TIMEOUT;
	for (const char *p = s; *p; p++) {
		if (*p >= '0' && *p <= '9')
			digits++;
		else if (*p != '.' || dots++)
			return DEFAULT_TIMEOUT;
	}
	value = digits ? strtod(s, NULL) : 0;
	return value > 0 && value < 1e9 ? value : DEFAULT_TIMEOUT;
}

static double now(void)
{
	struct timespec ts;

	clock_gettime(CLOCK_MONOTONIC, &ts);
	return ts.tv_sec + ts.tv_nsec / 1e9;
}

static int send_all(int fd, const char *data, size_t len)
{
	while (len > 0) {
		ssize_t n = send(fd, data, len, MSG_NOSIGNAL);

		if (n < 0 && errno == EINTR)
			continue;
		if (n < 0)
			return -1;
		data += n;
		len -= n;
	}
	return 0;
}

/* -- the exchange ----------------------------------------------------------------------------- */

static int forward(const char *path, size_t head_len, double timeout, int unavailable)
{
	struct sockaddr_un addr = { .sun_family = AF_UNIX };
	struct timeval wait = { .tv_sec = (time_t)timeout,
				.tv_usec = (suseconds_t)((timeout - (time_t)timeout) * 1e6) };
	double deadline = now() + timeout;
	size_t path_len = strlen(path), got = 0, head;
	socklen_t addr_len = offsetof(struct sockaddr_un, sun_path) + path_len;
	int fd, code = 0;

	if (path_len >= sizeof addr.sun_path) /* room for the NUL, as Python wants */
		return fail(unavailable, "AF_UNIX path too long",
			    "megalos agent is not running: cannot connect to %s", path);
	memcpy(addr.sun_path, path, path_len);
	fd = socket(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0);
	/* A blocking connect waits in the kernel while the agent's accept queue is full (it is
	 * busy, not gone), up to SO_SNDTIMEO; then EAGAIN. */
	if (fd < 0 || setsockopt(fd, SOL_SOCKET, SO_SNDTIMEO, &wait, sizeof wait) < 0)
		return fail(unavailable, strerror(errno),
			    "megalos agent is not running: cannot connect to %s", path);
	while (connect(fd, (struct sockaddr *)&addr, addr_len) < 0) {
		if (errno == EINTR)
			continue;
		if (errno == EAGAIN)
			return fail(ERR_TRY_AGAIN_LATER, NULL,
				    "megalos agent at %s is busy: no connection within %g s", path, timeout);
		return fail(unavailable, strerror(errno),
			    "megalos agent is not running: cannot connect to %s", path);
	}
	if (send_all(fd, request_head, head_len) < 0 || send_all(fd, config, config_len) < 0
	    || shutdown(fd, SHUT_WR) < 0)
		goto lost;
	while (got < sizeof reply) {
		struct pollfd pfd = { .fd = fd, .events = POLLIN };
		double left = deadline - now();
		int ms = left > 1e6 ? 1000000000 : (int)(left * 1000) + 1; /* ms fit an int */
		int ready = left > 0 ? poll(&pfd, 1, ms) : 0;
		ssize_t n;

		if (ready < 0 && errno == EINTR)
			continue;
		if (ready < 0)
			goto lost;
		if (ready == 0)
			return fail(ERR_TRY_AGAIN_LATER, NULL,
				    "megalos agent at %s did not answer within %g s", path, timeout);
		n = recv(fd, reply + got, sizeof reply - got, 0);
		if (n == 0)
			break;
		if (n < 0 && errno != EINTR)
			goto lost;
		if (n > 0)
			got += n;
	}
	close(fd);
	if (got > MAX_REPLY)
		return fail(ERR_IO, "larger than 1048576 bytes",
			    "malformed answer from the megalos agent at %s", path);
	/* The exit code: 1 to 3 digits, at most 255, then a newline. */
	for (head = 0; head < got && head < 4 && reply[head] >= '0' && reply[head] <= '9'; head++)
		code = code * 10 + reply[head] - '0';
	if (head == 0 || head > 3 || head >= got || reply[head] != '\n' || code > 255)
		return fail(ERR_IO, NULL, "malformed answer from the megalos agent at %s", path);
	if (got > head + 1) {
		fwrite(reply + head + 1, 1, got - head - 1, stdout);
		putchar('\n');
	}
	return code;
lost:
	if (errno == EAGAIN) /* SO_SNDTIMEO ran out while sending */
		return fail(ERR_TRY_AGAIN_LATER, NULL,
			    "megalos agent at %s did not answer within %g s", path, timeout);
	return fail(ERR_IO, strerror(errno), "lost the connection to the megalos agent at %s", path);
}

/* The exit status; the answer is on stdout (buffered). */
static int answer(void)
{
	const char *command = getenv("CNI_COMMAND"), *path = NULL;
	int unavailable = command && strcmp(command, "STATUS") == 0 ? ERR_NOT_AVAILABLE
								    : ERR_TRY_AGAIN_LATER;
	size_t head_len;
	long n;

	if (read_stdin() < 0)
		return fail(ERR_IO, strerror(errno), "cannot read the network configuration from stdin");
	if (config_len > MAX_STDIN)
		return fail(ERR_DECODE, NULL, "the network configuration is larger than %d bytes", MAX_STDIN);
	n = scan_member(config, config_len, "cniVersion", version, sizeof version);
	if (n >= 0)
		version_len = n;
	else
		memcpy(version, DEFAULT_VERSION, version_len = sizeof DEFAULT_VERSION - 1);
	if (too_deep(config, config_len))
		return fail(ERR_DECODE, NULL,
			    "the network configuration nests arrays and objects more than %d deep", MAX_DEPTH);
	n = scan_member(config, config_len, "agentSocket", config_socket, sizeof config_socket);
	if (n > 0 && !memchr(config_socket, '\0', n)) {
		if (!socket_allowed(config_socket, n))
			return fail(ERR_INVALID_CONFIG, NULL, "%s", SOCKET_RULE);
		path = config_socket;
	}
	if (command && strcmp(command, "VERSION") == 0)
		return answer_version();
	if (!path)
		path = getenv("MEGALOS_AGENT_SOCKET");
	if (!path || !*path)
		path = DEFAULT_SOCKET;
	head_len = build_request_head();
	if (head_len == 0)
		return fail(ERR_IO, NULL, "the CNI_* variables are larger than %d bytes", MAX_ENV);
	return forward(path, head_len, parse_timeout(getenv("MEGALOS_TIMEOUT")), unavailable);
}

int main(void)
{
	int code = answer();

	if (fflush(stdout) == EOF || ferror(stdout)) { /* a result the runtime never sees is a failure */
		fprintf(stderr, "megalos: cannot write the answer to stdout: %s\n", strerror(errno));
		return code ? code : 1;
	}
	return code;
}
