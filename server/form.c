/* form.c - a strict application/x-www-form-urlencoded parser for OAuth request bodies
 * SPDX-License-Identifier: MIT
 *
 * evhttp's own parser keeps repeated parameters and truncates a value at %00, so OAuth
 * bodies and query strings are parsed here instead. The rules: '&' separates
 * parameters (empty pieces, as in "a=1&&b=2", are skipped like the WHATWG URL standard
 * does), '+' is a space, %XX needs two hex digits, and the decoded name and value must
 * be valid UTF-8 without NUL. A name may appear only once (RFC 6749 section 3.1).
 */
#include "server/config.h"
#include "server/http.h"

#include <stdlib.h>
#include <string.h>
#include <strings.h>

/* Used when no configuration is loaded (unit tests of the parser). */
#define DEFAULT_MAX_BODY 65536

static int hex_value(char c)
{
    if (c >= '0' && c <= '9')
        return c - '0';
    if (c >= 'a' && c <= 'f')
        return c - 'a' + 10;
    if (c >= 'A' && c <= 'F')
        return c - 'A' + 10;
    return -1;
}

/* True when s[0..len) is well-formed UTF-8: no overlong forms, no surrogates, nothing
 * above U+10FFFF (RFC 3629 section 4). */
static bool utf8_valid(const unsigned char *s, size_t len)
{
    size_t i = 0;

    while (i < len) {
        unsigned char c = s[i];
        size_t extra;
        uint32_t cp, min;

        if (c < 0x80) {
            i++;
            continue;
        } else if ((c & 0xe0) == 0xc0) {
            extra = 1, cp = c & 0x1f, min = 0x80;
        } else if ((c & 0xf0) == 0xe0) {
            extra = 2, cp = c & 0x0f, min = 0x800;
        } else if ((c & 0xf8) == 0xf0) {
            extra = 3, cp = c & 0x07, min = 0x10000;
        } else {
            return false; /* a continuation byte without a lead byte, or 0xf8..0xff */
        }
        if (len - i <= extra)
            return false;
        for (size_t k = 1; k <= extra; k++) {
            if ((s[i + k] & 0xc0) != 0x80)
                return false;
            cp = (cp << 6) | (s[i + k] & 0x3f);
        }
        if (cp < min || cp > 0x10ffff || (cp >= 0xd800 && cp <= 0xdfff))
            return false;
        i += extra + 1;
    }
    return true;
}

/* Decodes in[0..len) into a new string. Returns NULL and sets *error on a bad escape,
 * a NUL byte (raw or %00) or invalid UTF-8. */
static char *decode_component(const char *in, size_t len, const char **error)
{
    char *out = util_malloc(len + 1);
    size_t n = 0;

    for (size_t i = 0; i < len; i++) {
        char c = in[i];

        if (c == '+') {
            c = ' ';
        } else if (c == '%') {
            int hi = i + 2 < len ? hex_value(in[i + 1]) : -1;
            int lo = hi >= 0 ? hex_value(in[i + 2]) : -1;

            if (hi < 0 || lo < 0) {
                *error = "invalid percent-encoding in the form";
                free(out);
                return NULL;
            }
            c = (char)(hi << 4 | lo);
            i += 2;
        }
        if (c == '\0') {
            *error = "the form contains a NUL byte";
            free(out);
            return NULL;
        }
        out[n++] = c;
    }
    out[n] = '\0';

    if (!utf8_valid((const unsigned char *)out, n)) {
        *error = "the form is not valid UTF-8";
        free(out);
        return NULL;
    }
    return out;
}

static bool form_has(const struct server_form *form, const char *name)
{
    for (size_t i = 0; i < form->count; i++) {
        if (strcmp(form->params[i].name, name) == 0)
            return true;
    }
    return false;
}

/* Decodes one "name=value" piece and appends it. Returns 0, or -1 with *error set. */
static int add_param(struct server_form *form, const char *piece, size_t len,
                     const char **error)
{
    const char *eq = memchr(piece, '=', len);
    size_t name_len = eq ? (size_t)(eq - piece) : len;
    char *name, *value;

    if (name_len == 0) {
        *error = "a form parameter has an empty name";
        return -1;
    }
    if (form->count == SERVER_FORM_MAX_PARAMS) {
        *error = "the form has too many parameters";
        return -1;
    }

    name = decode_component(piece, name_len, error);
    if (!name)
        return -1;
    value = eq ? decode_component(eq + 1, len - name_len - 1, error) : util_strdup("");
    if (!value) {
        free(name);
        return -1;
    }
    if (form_has(form, name)) {
        *error = "a form parameter is repeated";
        free(name);
        free(value);
        return -1;
    }

    form->params[form->count].name = name;
    form->params[form->count].value = value;
    form->count++;
    return 0;
}

int server_form_parse_text(const char *text, size_t len, struct server_form *form,
                           const char **error)
{
    size_t max_body = server_config ? (size_t)server_config->max_body : DEFAULT_MAX_BODY;
    size_t start = 0;

    form->count = 0;
    form->params = NULL;
    if (len > max_body) {
        *error = "the form is too large";
        return -1;
    }
    form->params = util_calloc(SERVER_FORM_MAX_PARAMS, sizeof(*form->params));

    while (start <= len) {
        const char *amp = memchr(text + start, '&', len - start);
        size_t end = amp ? (size_t)(amp - text) : len;

        if (end > start && add_param(form, text + start, end - start, error) != 0) {
            server_form_free(form);
            return -1;
        }
        start = end + 1;
    }
    return 0;
}

bool server_form_content_type_ok(const char *content_type)
{
    static const char media_type[] = "application/x-www-form-urlencoded";
    const char *p;

    if (!content_type ||
        strncasecmp(content_type, media_type, sizeof(media_type) - 1) != 0)
        return false;
    p = content_type + sizeof(media_type) - 1;
    while (*p == ' ' || *p == '\t')
        p++;
    if (*p == '\0')
        return true;
    if (*p++ != ';')
        return false;

    /* The one parameter accepted is charset=utf-8 (quoted or not), because the
     * parameters are decoded as UTF-8. */
    while (*p == ' ' || *p == '\t')
        p++;
    if (strncasecmp(p, "charset=", 8) != 0)
        return false;
    p += 8;
    if (strncasecmp(p, "utf-8", 5) == 0)
        p += 5;
    else if (strncasecmp(p, "\"utf-8\"", 7) == 0)
        p += 7;
    else
        return false;
    while (*p == ' ' || *p == '\t')
        p++;
    return *p == '\0';
}

const char *server_form_get(const struct server_form *form, const char *name)
{
    for (size_t i = 0; i < form->count; i++) {
        if (strcmp(form->params[i].name, name) == 0)
            return form->params[i].value[0] ? form->params[i].value : NULL;
    }
    return NULL;
}

void server_form_free(struct server_form *form)
{
    if (!form)
        return;
    for (size_t i = 0; i < form->count; i++) {
        free(form->params[i].name);
        free(form->params[i].value);
    }
    free(form->params);
    form->params = NULL;
    form->count = 0;
}
