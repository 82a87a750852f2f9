/* user.c - end users (who approve requests) and the scope descriptions they are shown
 * SPDX-License-Identifier: MIT
 *
 * A login_hint names a user by phone number, username or subject. To keep that lookup
 * unambiguous, a new user's username may not equal another user's subject, nor its
 * subject another user's username. Nor may a subject or username read as a phone
 * number, because such a login_hint is looked up by phone number only. No CHECK
 * constraint can enforce that rule, since it depends on util_phone_normalize, so
 * `cibad user create` (server/main.c) rejects such values before they get here.
 */
#include "storage/storage_int.h"

#include <stdio.h>
#include <string.h>

/* ---- asynchronous lookup ----------------------------------------------------------- */

static const char sql_user_by_phone[] =
    "SELECT subject, username, phone_number, user_code_hash, user_code_failures"
    " FROM app_user WHERE phone_number = $1";
static const struct storage_stmt stmt_user_by_phone = {"user_by_phone", sql_user_by_phone,
                                                       1};

/* A subject match wins over a username match; user creation keeps the two apart, so
 * the ORDER BY only matters for rows written by hand. */
static const char sql_user_by_name_or_sub[] =
    "SELECT subject, username, phone_number, user_code_hash, user_code_failures"
    " FROM app_user WHERE subject = $1 OR username = $1 ORDER BY subject = $1 DESC LIMIT "
    "1";
static const struct storage_stmt stmt_user_by_name_or_sub = {"user_by_name_or_sub",
                                                             sql_user_by_name_or_sub, 1};

/* The sub of an ID token names a subject only, never a username. */
static const char sql_user_by_sub[] =
    "SELECT subject, username, phone_number, user_code_hash, user_code_failures"
    " FROM app_user WHERE subject = $1";
static const struct storage_stmt stmt_user_by_sub = {"user_by_sub", sql_user_by_sub, 1};

/* A login_hint_token issuer that names users by email; the column is lower-cased. */
static const char sql_user_by_email[] =
    "SELECT subject, username, phone_number, user_code_hash, user_code_failures"
    " FROM app_user WHERE email = $1";
static const struct storage_stmt stmt_user_by_email = {"user_by_email", sql_user_by_email,
                                                       1};

static void finish_user_find(union storage_cb cb, void *arg, enum storage_status status,
                             const PGresult *res)
{
    struct storage_user user;

    if (status != STORAGE_OK) {
        cb.user(arg, status, NULL);
        return;
    }
    if (PQntuples(res) == 0) {
        cb.user(arg, STORAGE_NOT_FOUND, NULL);
        return;
    }
    user.subject = storage_col_text(res, 0, 0);
    user.username = storage_col_text(res, 0, 1);
    user.phone_number = storage_col_text(res, 0, 2);
    user.user_code_hash = storage_col_text(res, 0, 3);
    user.user_code_failures = storage_col_int(res, 0, 4);
    user.email = NULL;
    cb.user(arg, STORAGE_OK, &user);
}

int storage_user_find(struct storage_conn *db, enum storage_hint_kind kind,
                      const char *value, storage_user_cb cb, void *arg)
{
    struct storage_params p = {0};
    union storage_cb u = {.user = cb};
    const struct storage_stmt *stmt;

    if (value == NULL || cb == NULL)
        return -1;
    switch (kind) {
    case STORAGE_HINT_PHONE:
        stmt = &stmt_user_by_phone;
        break;
    case STORAGE_HINT_NAME_OR_SUB:
        stmt = &stmt_user_by_name_or_sub;
        break;
    case STORAGE_HINT_SUB:
        stmt = &stmt_user_by_sub;
        break;
    case STORAGE_HINT_EMAIL:
        stmt = &stmt_user_by_email;
        break;
    default:
        return -1;
    }
    storage_param_text(&p, value);
    return storage_conn_send(db, stmt, &p, finish_user_find, u, arg);
}

/* A match resets the count of wrong codes, and a wrong code adds one. */
static const char sql_user_code_result[] =
    "UPDATE app_user SET user_code_failures = CASE WHEN $2 THEN 0"
    " ELSE user_code_failures + 1 END WHERE subject = $1";
static const struct storage_stmt stmt_user_code_result = {"user_code_result",
                                                          sql_user_code_result, 2};

static void finish_user_code_result(union storage_cb cb, void *arg,
                                    enum storage_status status, const PGresult *res)
{
    (void)res;
    if (cb.done)
        cb.done(arg, status);
}

int storage_user_code_result(struct storage_conn *db, const char *subject, bool matched,
                             storage_done_cb cb, void *arg)
{
    struct storage_params p = {0};
    union storage_cb u = {.done = cb};

    if (subject == NULL)
        return -1;
    storage_param_text(&p, subject);
    storage_param_bool(&p, matched);
    return storage_conn_send(db, &stmt_user_code_result, &p, finish_user_code_result, u,
                             arg);
}

/* ---- command line ------------------------------------------------------------------ */

/* Inserts nothing (and returns no row) when the new names would collide with another
 * user's subject or username. */
static const char sql_user_create[] =
    "INSERT INTO app_user (subject, username, phone_number, email)"
    " SELECT $1, $2, $3, $4 WHERE NOT EXISTS ("
    "  SELECT 1 FROM app_user WHERE username = $1 OR subject = $2::text)"
    " RETURNING subject";

static void describe_user_error(const PGresult *res, char *err, size_t err_len)
{
    const char *state = res ? PQresultErrorField(res, PG_DIAG_SQLSTATE) : NULL;
    const char *constraint =
        res ? PQresultErrorField(res, PG_DIAG_CONSTRAINT_NAME) : NULL;
    const char *message = res ? PQresultErrorField(res, PG_DIAG_MESSAGE_PRIMARY) : NULL;

    if (state && strcmp(state, "23505") == 0) {
        if (constraint && strcmp(constraint, "app_user_phone_number_key") == 0)
            snprintf(err, err_len, "another user already has this phone number");
        else if (constraint && strcmp(constraint, "app_user_username_key") == 0)
            snprintf(err, err_len, "another user already has this username");
        else if (constraint && strcmp(constraint, "app_user_email_key") == 0)
            snprintf(err, err_len, "another user already has this email address");
        else
            snprintf(err, err_len, "a user with this subject already exists");
    } else if (state && strcmp(state, "23502") == 0) {
        snprintf(err, err_len, "a required user field is missing");
    } else if (state && strcmp(state, "23514") == 0) {
        if (constraint && strcmp(constraint, "app_user_phone_number_check") == 0)
            snprintf(err, err_len,
                     "invalid phone number: E.164 expected, as +15551234567");
        else if (constraint && strcmp(constraint, "app_user_email_check") == 0)
            snprintf(err, err_len,
                     "invalid email address: lower case, NAME@DOMAIN, at most 254 "
                     "characters");
        else
            snprintf(err, err_len, "invalid user field (constraint %s)",
                     constraint ? constraint : "unknown");
    } else {
        snprintf(err, err_len, "creating the user failed: %s",
                 message ? message : "no result from the database");
    }
}

int storage_sync_user_create(struct storage_sync *s, const char *subject,
                             const char *username, const char *phone_number, char *err,
                             size_t err_len)
{
    return storage_sync_user_create_email(s, subject, username, phone_number, NULL, err,
                                          err_len);
}

int storage_sync_user_create_email(struct storage_sync *s, const char *subject,
                                   const char *username, const char *phone_number,
                                   const char *email, char *err, size_t err_len)
{
    struct storage_params p = {0};
    PGresult *res;
    int rc = 0;

    storage_param_text(&p, subject);
    storage_param_text(&p, username);
    storage_param_text(&p, phone_number);
    storage_param_text(&p, email);
    res = storage_sync_exec(s, sql_user_create, &p);
    if (storage_status_of(res) != STORAGE_OK) {
        describe_user_error(res, err, err_len);
        rc = -1;
    } else if (PQntuples(res) == 0) {
        snprintf(err, err_len,
                 "the subject or username equals another user's username or subject");
        rc = -1;
    }
    PQclear(res);
    return rc;
}

static const char sql_user_each[] =
    "SELECT subject, username, phone_number, email FROM app_user ORDER BY subject";

int storage_sync_user_each(struct storage_sync *s,
                           void (*fn)(void *arg, const struct storage_user *u), void *arg)
{
    PGresult *res = storage_sync_exec(s, sql_user_each, NULL);
    int n;

    if (storage_status_of(res) != STORAGE_OK) {
        storage_log_failure("listing users", res);
        PQclear(res);
        return -1;
    }
    n = PQntuples(res);
    for (int i = 0; i < n; i++) {
        struct storage_user u = {
            .subject = storage_col_text(res, i, 0),
            .username = storage_col_text(res, i, 1),
            .phone_number = storage_col_text(res, i, 2),
            .email = storage_col_text(res, i, 3),
        };

        fn(arg, &u);
    }
    PQclear(res);
    return n;
}

/* Sets the user code of one user: the one with this subject, or else the one with this
 * username. */
static const char sql_user_set_code[] =
    "UPDATE app_user SET user_code_hash = $2, user_code_failures = 0"
    " WHERE subject = coalesce("
    " (SELECT subject FROM app_user WHERE subject = $1),"
    " (SELECT subject FROM app_user WHERE username = $1))";

int storage_sync_user_set_code(struct storage_sync *s, const char *subject_or_name,
                               const char *code_hash)
{
    struct storage_params p = {0};
    PGresult *res;
    int rc;

    storage_param_text(&p, subject_or_name);
    storage_param_text(&p, code_hash);
    res = storage_sync_exec(s, sql_user_set_code, &p);
    if (storage_status_of(res) != STORAGE_OK) {
        storage_log_failure("setting a user code", res);
        rc = -1;
    } else {
        rc = strcmp(PQcmdTuples(res), "0") == 0 ? 0 : 1;
    }
    PQclear(res);
    return rc;
}

/* Deletes one user: the one with this subject, or else the one with this username. */
static const char sql_user_delete[] =
    "DELETE FROM app_user WHERE subject = coalesce("
    " (SELECT subject FROM app_user WHERE subject = $1),"
    " (SELECT subject FROM app_user WHERE username = $1))";

int storage_sync_user_delete(struct storage_sync *s, const char *subject_or_name)
{
    struct storage_params p = {0};
    PGresult *res;
    int rc;

    storage_param_text(&p, subject_or_name);
    res = storage_sync_exec(s, sql_user_delete, &p);
    if (storage_status_of(res) != STORAGE_OK) {
        storage_log_failure("deleting a user", res);
        rc = -1;
    } else {
        rc = strcmp(PQcmdTuples(res), "0") == 0 ? 0 : 1;
    }
    PQclear(res);
    return rc;
}

/* ---- scope descriptions ------------------------------------------------------------ */

static const char sql_scope_set[] =
    "INSERT INTO scope (name, description) VALUES ($1, $2)"
    " ON CONFLICT (name) DO UPDATE SET description = excluded.description";

/* True for an RFC 6749 scope-token: printable ASCII except space, '"' and backslash. */
static bool is_scope_token(const char *name)
{
    if (name == NULL || *name == '\0')
        return false;
    for (const unsigned char *c = (const unsigned char *)name; *c; c++)
        if (*c < 0x21 || *c > 0x7e || *c == '"' || *c == '\\')
            return false;
    return true;
}

int storage_sync_scope_set(struct storage_sync *s, const char *name,
                           const char *description)
{
    struct storage_params p = {0};
    PGresult *res;
    int rc = 0;

    if (!is_scope_token(name) || description == NULL || *description == '\0') {
        log_error("storage: a scope needs a name without spaces, quotes or backslashes"
                  " and a non-empty description");
        return -1;
    }
    storage_param_text(&p, name);
    storage_param_text(&p, description);
    res = storage_sync_exec(s, sql_scope_set, &p);
    if (storage_status_of(res) != STORAGE_OK) {
        storage_log_failure("setting a scope description", res);
        rc = -1;
    }
    PQclear(res);
    return rc;
}

static const char sql_scope_each[] = "SELECT name, description FROM scope ORDER BY name";

int storage_sync_scope_each(struct storage_sync *s,
                            void (*fn)(void *arg, const char *name,
                                       const char *description),
                            void *arg)
{
    PGresult *res = storage_sync_exec(s, sql_scope_each, NULL);
    int n;

    if (storage_status_of(res) != STORAGE_OK) {
        storage_log_failure("listing scopes", res);
        PQclear(res);
        return -1;
    }
    n = PQntuples(res);
    for (int i = 0; i < n; i++)
        fn(arg, storage_col_text(res, i, 0), storage_col_text(res, i, 1));
    PQclear(res);
    return n;
}
