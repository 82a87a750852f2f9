/* sync.c - the blocking connection of the command line, and schema migrations
 * SPDX-License-Identifier: MIT
 *
 * Migrations are files named NNNN_name.sql (four digits, then lower-case letters,
 * digits and underscores), applied in name order. Each file runs in its own
 * transaction together with its row in schema_migrations, whose version is the file
 * name without ".sql". The whole run holds a session advisory lock, so a second
 * instance starting at the same time waits and then finds nothing left to apply.
 * Statements that cannot run inside a transaction (CREATE INDEX CONCURRENTLY) are
 * therefore not allowed in a migration.
 */
#include "storage/storage_int.h"

#include <dirent.h>
#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

/* Key of the advisory lock that serializes migration runs ("cibad" in ASCII). */
#define MIGRATE_LOCK_KEY "426969817444"

#define MIGRATION_MAX_BYTES (4 * 1024 * 1024)

static void copy_message(char *err, size_t err_len, const char *message)
{
    size_t len;

    if (err == NULL || err_len == 0)
        return;
    snprintf(err, err_len, "%s", message && *message ? message : "unknown error");
    len = strlen(err);
    while (len > 0 && err[len - 1] == '\n')
        err[--len] = '\0';
}

struct storage_sync *storage_sync_connect(const char *conninfo, char *err, size_t err_len)
{
    /* Keywords after dbname override its connection string. cibad sends and reads UTF-8
     * only, and storage/batch.c escapes array literals for UTF-8. */
    const char *keys[] = {"dbname", "fallback_application_name", "client_encoding", NULL};
    const char *values[] = {conninfo, "cibad", "UTF8", NULL};
    struct storage_sync *s;
    PGconn *pg;

    if (conninfo == NULL) {
        copy_message(err, err_len, "no database_url given");
        return NULL;
    }
    pg = PQconnectdbParams(keys, values, 1);
    if (pg == NULL || PQstatus(pg) != CONNECTION_OK) {
        copy_message(err, err_len, pg ? PQerrorMessage(pg) : "out of memory");
        PQfinish(pg);
        return NULL;
    }
    PQsetNoticeProcessor(pg, storage_notice_to_log, NULL);
    s = util_calloc(1, sizeof(*s));
    s->pg = pg;
    return s;
}

void storage_sync_close(struct storage_sync *s)
{
    if (s == NULL)
        return;
    PQfinish(s->pg);
    free(s);
}

PGresult *storage_sync_exec(struct storage_sync *s, const char *sql,
                            const struct storage_params *params)
{
    if (params == NULL)
        return PQexecParams(s->pg, sql, 0, NULL, NULL, NULL, NULL, 0);
    return PQexecParams(s->pg, sql, params->n, NULL, params->values, params->lengths,
                        params->formats, 0);
}

/* Runs a statement whose rows do not matter; logs and returns -1 on failure. */
static int exec_command(struct storage_sync *s, const char *what, const char *sql,
                        const struct storage_params *params)
{
    PGresult *res = storage_sync_exec(s, sql, params);
    int rc = 0;

    if (storage_status_of(res) != STORAGE_OK) {
        storage_log_failure(what, res);
        rc = -1;
    }
    PQclear(res);
    return rc;
}

/* ---- migration files --------------------------------------------------------------- */

struct file_list {
    char **names;
    size_t n, cap;
};

static void file_list_free(struct file_list *l)
{
    for (size_t i = 0; i < l->n; i++)
        free(l->names[i]);
    free(l->names);
    l->names = NULL;
    l->n = l->cap = 0;
}

static bool is_migration_name(const char *name)
{
    size_t len = strlen(name);

    if (len < 10 || strcmp(name + len - 4, ".sql") != 0)
        return false;
    for (size_t i = 0; i < 4; i++)
        if (name[i] < '0' || name[i] > '9')
            return false;
    if (name[4] != '_')
        return false;
    for (size_t i = 5; i < len - 4; i++)
        if (!((name[i] >= 'a' && name[i] <= 'z') || (name[i] >= '0' && name[i] <= '9') ||
              name[i] == '_'))
            return false;
    return true;
}

static int compare_names(const void *a, const void *b)
{
    return strcmp(*(char *const *)a, *(char *const *)b);
}

/* Lists the migration files of dir in order, as versions (names without ".sql"). Two
 * files with the same number are an error, since their order would be arbitrary. */
static int list_migrations(const char *dir, struct file_list *out)
{
    DIR *d = opendir(dir);
    struct dirent *e;

    if (d == NULL) {
        log_error("storage: cannot open migrations directory %s: %s", dir,
                  strerror(errno));
        return -1;
    }
    while ((e = readdir(d)) != NULL) {
        size_t len = strlen(e->d_name);

        if (len < 4 || strcmp(e->d_name + len - 4, ".sql") != 0)
            continue;
        if (!is_migration_name(e->d_name)) {
            log_warn("storage: skipping %s/%s: migration names are NNNN_name.sql", dir,
                     e->d_name);
            continue;
        }
        if (out->n == out->cap) {
            out->cap = out->cap ? out->cap * 2 : 16;
            out->names = util_realloc(out->names, out->cap * sizeof(out->names[0]));
        }
        out->names[out->n++] = util_strndup(e->d_name, len - 4);
    }
    closedir(d);

    qsort(out->names, out->n, sizeof(out->names[0]), compare_names);
    for (size_t i = 1; i < out->n; i++) {
        if (strncmp(out->names[i - 1], out->names[i], 4) == 0) {
            log_error("storage: migrations %s and %s share the number %.4s",
                      out->names[i - 1], out->names[i], out->names[i]);
            file_list_free(out);
            return -1;
        }
    }
    return 0;
}

static char *read_file(const char *path)
{
    FILE *f = fopen(path, "rb");
    char *buf = NULL;
    size_t len = 0, cap = 0, n;

    if (f == NULL) {
        log_error("storage: cannot open %s: %s", path, strerror(errno));
        return NULL;
    }
    do {
        if (cap - len < 4096) {
            cap = cap ? cap * 2 : 16384;
            buf = util_realloc(buf, cap);
        }
        n = fread(buf + len, 1, cap - len - 1, f);
        len += n;
    } while (n > 0 && len <= MIGRATION_MAX_BYTES);
    if (ferror(f) || len > MIGRATION_MAX_BYTES) {
        log_error("storage: cannot read %s: %s", path,
                  ferror(f) ? strerror(errno) : "larger than 4 MiB");
        fclose(f);
        free(buf);
        return NULL;
    }
    fclose(f);
    buf[len] = '\0';
    return buf;
}

/* ---- applied versions -------------------------------------------------------------- */

static const char sql_applied[] = "SELECT version FROM schema_migrations";
static const char sql_has_table[] = "SELECT to_regclass('schema_migrations') IS NOT NULL";

/* Loads the applied versions into out. A database without schema_migrations has none. */
static int load_applied(struct storage_sync *s, struct file_list *out)
{
    PGresult *res = storage_sync_exec(s, sql_has_table, NULL);
    int rc = -1;

    if (storage_status_of(res) != STORAGE_OK) {
        storage_log_failure("reading schema_migrations", res);
        goto out;
    }
    if (strcmp(PQgetvalue(res, 0, 0), "t") != 0) {
        rc = 0;
        goto out;
    }
    PQclear(res);
    res = storage_sync_exec(s, sql_applied, NULL);
    if (storage_status_of(res) != STORAGE_OK) {
        storage_log_failure("reading schema_migrations", res);
        goto out;
    }
    for (int i = 0; i < PQntuples(res); i++) {
        if (out->n == out->cap) {
            out->cap = out->cap ? out->cap * 2 : 16;
            out->names = util_realloc(out->names, out->cap * sizeof(out->names[0]));
        }
        out->names[out->n++] = util_strdup(PQgetvalue(res, i, 0));
    }
    rc = 0;
out:
    PQclear(res);
    return rc;
}

static bool list_has(const struct file_list *l, const char *name)
{
    for (size_t i = 0; i < l->n; i++)
        if (strcmp(l->names[i], name) == 0)
            return true;
    return false;
}

int storage_sync_schema_behind(struct storage_sync *s, const char *dir, int *behind)
{
    struct file_list files = {0}, applied = {0};
    int rc = -1;

    if (list_migrations(dir, &files) != 0)
        return -1;
    if (load_applied(s, &applied) != 0)
        goto out;
    *behind = 0;
    for (size_t i = 0; i < files.n; i++)
        if (!list_has(&applied, files.names[i]))
            (*behind)++;
    rc = 0;
out:
    file_list_free(&files);
    file_list_free(&applied);
    return rc;
}

/* ---- applying ---------------------------------------------------------------------- */

static const char sql_lock[] = "SELECT pg_advisory_lock(" MIGRATE_LOCK_KEY ")";
static const char sql_unlock[] = "SELECT pg_advisory_unlock(" MIGRATE_LOCK_KEY ")";
static const char sql_create_table[] = "CREATE TABLE IF NOT EXISTS schema_migrations ("
                                       " version text PRIMARY KEY,"
                                       " applied_at timestamptz NOT NULL DEFAULT now())";
static const char sql_record[] = "INSERT INTO schema_migrations (version) VALUES ($1)";

/* Applies one file and records it, in one transaction. */
static int apply_one(struct storage_sync *s, const char *dir, const char *version)
{
    char *path = util_asprintf("%s/%s.sql", dir, version);
    char *text = read_file(path);
    struct storage_params p = {0};
    PGresult *res;
    int rc = -1;

    if (text == NULL)
        goto out;
    if (exec_command(s, "BEGIN", "BEGIN", NULL) != 0)
        goto out;

    /* A file contains many statements, so it goes through the simple query protocol. */
    res = PQexec(s->pg, text);
    if (storage_status_of(res) != STORAGE_OK) {
        const char *message =
            res ? PQresultErrorField(res, PG_DIAG_MESSAGE_PRIMARY) : NULL;
        const char *position =
            res ? PQresultErrorField(res, PG_DIAG_STATEMENT_POSITION) : NULL;

        log_error("storage: migration %s failed: %s (at character %s)", version,
                  message ? message : PQerrorMessage(s->pg), position ? position : "-");
        PQclear(res);
        goto rollback;
    }
    PQclear(res);

    storage_param_text(&p, version);
    if (exec_command(s, "recording a migration", sql_record, &p) != 0)
        goto rollback;
    if (exec_command(s, "COMMIT", "COMMIT", NULL) != 0)
        goto out;
    log_info("storage: applied migration %s", version);
    rc = 0;
    goto out;

rollback:
    if (exec_command(s, "ROLLBACK", "ROLLBACK", NULL) != 0)
        log_error("storage: rollback after migration %s failed", version);
out:
    free(text);
    free(path);
    return rc;
}

int storage_sync_migrate(struct storage_sync *s, const char *dir)
{
    struct file_list files = {0}, applied = {0};
    int rc = -1, n_applied = 0;

    if (list_migrations(dir, &files) != 0)
        return -1;
    if (exec_command(s, "taking the migration lock", sql_lock, NULL) != 0)
        goto out;
    if (exec_command(s, "creating schema_migrations", sql_create_table, NULL) != 0 ||
        load_applied(s, &applied) != 0)
        goto unlock;

    for (size_t i = 0; i < files.n; i++) {
        if (list_has(&applied, files.names[i]))
            continue;
        if (apply_one(s, dir, files.names[i]) != 0)
            goto unlock;
        n_applied++;
    }
    if (n_applied == 0)
        log_info("storage: schema is up to date (%zu migrations)", files.n);
    rc = 0;

unlock:
    if (exec_command(s, "releasing the migration lock", sql_unlock, NULL) != 0)
        rc = -1;
out:
    file_list_free(&files);
    file_list_free(&applied);
    return rc;
}
