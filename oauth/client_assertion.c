/* client_assertion.c - the claim rules of JWT client assertions (RFC 7523 section 3,
 * OpenID Connect Core 1.0 section 9)
 * SPDX-License-Identifier: MIT
 */
#include "oauth/oauth_int.h"

#include <math.h>
#include <string.h>

/* Paths of the two endpoints that authenticate clients, after the issuer. */
#define TOKEN_PATH       "/token"
#define BACKCHANNEL_PATH "/bc-authorize"
/* Maximum number of aud values looked at in an array. */
#define AUD_MAX 16
/* Maximum jti length, as the client_assertion_jti table allows. */
#define JTI_MAX 256

/* True when aud names this server: the issuer, or the URL of the token or backchannel
 * endpoint. CIBA Core 1.0 section 7.1 requires the backchannel endpoint to accept all
 * three, and OpenID Connect Core 1.0 section 9 tells clients to use the token endpoint
 * URL. */
static bool aud_is_ours(const char *aud, const char *issuer)
{
    size_t n = strlen(issuer);

    if (strncmp(aud, issuer, n) != 0)
        return false;
    aud += n;
    return *aud == '\0' || strcmp(aud, TOKEN_PATH) == 0 ||
           strcmp(aud, BACKCHANNEL_PATH) == 0;
}

static bool aud_ok(const json_t *aud, const char *issuer)
{
    size_t i;
    json_t *item;

    if (json_is_string(aud))
        return aud_is_ours(json_string_value(aud), issuer);
    if (!json_is_array(aud) || json_array_size(aud) > AUD_MAX)
        return false;
    json_array_foreach(aud, i, item)
    {
        if (json_is_string(item) && aud_is_ours(json_string_value(item), issuer))
            return true;
    }
    return false;
}

int oauth_jwt_numeric_date(const json_t *claims, const char *name, int64_t *out)
{
    const json_t *v = json_object_get(claims, name);
    double d;

    if (!v)
        return 0;
    if (!json_is_number(v))
        return -1;
    d = json_number_value(v);
    /* Up to the year 5138: far enough, and safe to convert. */
    if (!isfinite(d) || d < 0 || d > 1e11)
        return -1;
    *out = (int64_t)d; /* d >= 0, so this is floor(d) */
    return 1;
}

static bool string_claim_is(const json_t *claims, const char *name, const char *value)
{
    const char *s = json_string_value(json_object_get(claims, name));

    return s && strcmp(s, value) == 0;
}

const char *oauth_assertion_check(const json_t *claims, const char *client_id,
                                  const char *issuer, int64_t now,
                                  struct oauth_assertion_claims *out)
{
    const json_t *jti = json_object_get(claims, "jti");
    int64_t exp = 0, nbf = 0, iat = 0;
    int has_exp, has_nbf, has_iat;

    if (!string_claim_is(claims, "iss", client_id))
        return "iss is not the client_id";
    if (!string_claim_is(claims, "sub", client_id))
        return "sub is not the client_id";
    if (!aud_ok(json_object_get(claims, "aud"), issuer))
        return "aud names neither the issuer nor an endpoint of this server";

    has_exp = oauth_jwt_numeric_date(claims, "exp", &exp);
    has_nbf = oauth_jwt_numeric_date(claims, "nbf", &nbf);
    has_iat = oauth_jwt_numeric_date(claims, "iat", &iat);
    if (has_exp != 1)
        return has_exp == 0 ? "exp is missing" : "exp is not a number";
    if (has_nbf < 0 || has_iat < 0)
        return "nbf or iat is not a number";
    if (exp + OAUTH_ASSERTION_SKEW_S <= now)
        return "the assertion has expired";
    if (exp > now + OAUTH_ASSERTION_MAX_LIFETIME_S + OAUTH_ASSERTION_SKEW_S)
        return "exp is too far in the future";
    if (has_nbf && nbf > now + OAUTH_ASSERTION_SKEW_S)
        return "the assertion is not valid yet (nbf)";
    if (has_iat && iat > now + OAUTH_ASSERTION_SKEW_S)
        return "iat is in the future";
    if (has_iat && exp - iat > OAUTH_ASSERTION_MAX_LIFETIME_S + OAUTH_ASSERTION_SKEW_S)
        return "the assertion lives longer than allowed (exp - iat)";

    if (!json_is_string(jti) || json_string_length(jti) == 0 ||
        json_string_length(jti) > JTI_MAX)
        return "jti is missing, empty or longer than 256 characters";
    out->jti = json_string_value(jti);
    /* Keep the jti until the skew no longer lets the assertion pass. */
    out->jti_expires_at = exp + OAUTH_ASSERTION_SKEW_S;
    return NULL;
}
