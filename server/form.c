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

/* Decodes in[0..len) into a new string. Returns NULL and sets *error on a bad escape,
 * a NUL byte (raw or %00) or invalid UTF-8. */
static char *decode_component(const char *in, size_t len, const char **error)
{
    char *out = util_malloc(len + 1);
    size_t n;

    switch (util_form_urldecode(in, len, out, &n)) {
    case 0:
        break;
    case UTIL_URLDECODE_NUL:
        *error = "the form contains a NUL byte";
        free(out);
        return NULL;
    default:
        *error = "invalid percent-encoding in the form";
        free(out);
        return NULL;
    }
    if (!util_utf8_valid(out, n)) {
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
