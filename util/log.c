/* log.c - one-line, thread-safe log output to stderr
 * SPDX-License-Identifier: MIT
 */
#include "util.h"

#include <stdio.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

static volatile enum util_log_level min_level = UTIL_LOG_INFO;

static const char *const level_names[] = {"debug", "info", "warn", "error"};

void util_log_set_level(enum util_log_level level)
{
    min_level = level;
}

int util_log_level_parse(const char *name, enum util_log_level *out)
{
    for (size_t i = 0; i < ARRAY_LEN(level_names); i++) {
        if (strcmp(name, level_names[i]) == 0) {
            *out = (enum util_log_level)i;
            return 0;
        }
    }
    return -1;
}

bool util_log_enabled(enum util_log_level level)
{
    return level >= min_level;
}

/* Appends src to buf at *pos as \xNN escapes for control characters (and spaces with
 * escape_space), so that one event is always one line. */
static void append_escaped(char *buf, size_t cap, size_t *pos, const char *src,
                           bool escape_space)
{
    for (; *src && *pos + 5 < cap; src++) {
        unsigned char c = (unsigned char)*src;

        if (c < 0x20 || c == 0x7f || (escape_space && c == ' '))
            *pos += (size_t)snprintf(buf + *pos, cap - *pos, "\\x%02x", c);
        else
            buf[(*pos)++] = (char)c;
    }
}

void util_vlog(enum util_log_level level, const char *rid, const char *client_id,
               const char *fmt, va_list ap)
{
    char line[2048], msg[1600];
    size_t pos;
    struct timespec ts;
    struct tm tm;

    if (!util_log_enabled(level))
        return;

    clock_gettime(CLOCK_REALTIME, &ts);
    gmtime_r(&ts.tv_sec, &tm);
    pos = strftime(line, sizeof(line), "%Y-%m-%dT%H:%M:%S", &tm);
    pos += (size_t)snprintf(line + pos, sizeof(line) - pos, ".%03ldZ %s",
                            ts.tv_nsec / 1000000, level_names[level]);
    if (rid)
        pos += (size_t)snprintf(line + pos, sizeof(line) - pos, " [%s]", rid);
    if (client_id) {
        pos += (size_t)snprintf(line + pos, sizeof(line) - pos, " client_id=");
        /* A client_id comes from the request before it is checked, so a space in it
         * could make the rest of the line look like other fields. */
        append_escaped(line, sizeof(line), &pos, client_id, true);
    }
    line[pos++] = ' ';

    vsnprintf(msg, sizeof(msg), fmt, ap);
    append_escaped(line, sizeof(line) - 1, &pos, msg, false);
    line[pos++] = '\n';

    /* One write per line keeps lines from different threads whole. */
    ssize_t rc = write(STDERR_FILENO, line, pos);
    (void)rc;
}

void util_log(enum util_log_level level, const char *rid, const char *client_id,
              const char *fmt, ...)
{
    va_list ap;

    va_start(ap, fmt);
    util_vlog(level, rid, client_id, fmt, ap);
    va_end(ap);
}
