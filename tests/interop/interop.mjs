// interop.mjs - drives cibad with openid-client, a real OpenID client library, the way an
// agent would: discovery, a backchannel authentication request, the user's approval
// through the SMS link, then the token grant. Covers client_secret_basic,
// client_secret_jwt and private_key_jwt (keys inline and at a jwks_uri) in poll mode,
// ping mode, and a denial.
//
// It starts its own `cibad serve` on 127.0.0.1 against the empty database in
// CIBAD_TEST_DATABASE_URL (tests/run.sh provides it), with a mock SMS gateway and a ping
// receiver and the agent's jwks_uri, all node http servers on loopback. The binary comes from CIBAD_BIN.
// Prints "N passed, N failed" last and exits non-zero when a case fails.
import { spawn, spawnSync } from 'node:child_process';
import { once } from 'node:events';
import { mkdtempSync, openSync, readFileSync, rmSync, writeFileSync } from 'node:fs';
import http from 'node:http';
import net from 'node:net';
import { tmpdir } from 'node:os';
import path from 'node:path';
import * as client from 'openid-client';
import * as jose from 'jose';

const SCOPE = 'openid payments';
const STEP_MS = 15000; // maximum wait for an SMS, a ping or readiness

const bin = process.env.CIBAD_BIN;
const dbUrl = process.env.CIBAD_TEST_DATABASE_URL;
const migrations = process.env.CIBAD_TEST_MIGRATIONS;
if (!bin || !dbUrl || !migrations) {
    console.error('interop: CIBAD_BIN, CIBAD_TEST_DATABASE_URL and CIBAD_TEST_MIGRATIONS ' +
                  'must be set (run it through tests/run.sh)');
    console.log('0 passed, 1 failed');
    process.exit(1);
}

// ---- small helpers -----------------------------------------------------------------

function assert(cond, message) {
    if (!cond)
        throw new Error(message);
}

async function freePort() {
    const srv = net.createServer();
    srv.listen(0, '127.0.0.1');
    await once(srv, 'listening');
    const { port } = srv.address();
    srv.close();
    await once(srv, 'close');
    return port;
}

// A node http server on loopback that keeps every POST body and wakes its waiters.
async function startSink(name) {
    const bodies = [];
    const waiters = [];
    const srv = http.createServer((req, res) => {
        let data = '';
        req.setEncoding('utf8');
        req.on('data', (chunk) => (data += chunk));
        req.on('end', () => {
            bodies.push({ path: req.url, headers: req.headers, body: data });
            res.writeHead(200, { 'content-type': 'application/json' });
            res.end('{}');
            for (const w of waiters.splice(0))
                w();
        });
    });
    srv.listen(0, '127.0.0.1');
    await once(srv, 'listening');
    return {
        url: `http://127.0.0.1:${srv.address().port}`,
        bodies,
        // Waits for the first body for which pred returns true.
        async wait(pred) {
            const deadline = Date.now() + STEP_MS;
            for (;;) {
                const hit = bodies.find(pred);
                if (hit)
                    return hit;
                const left = deadline - Date.now();
                assert(left > 0, `${name}: nothing arrived within ${STEP_MS} ms`);
                await new Promise((resolve) => {
                    const t = setTimeout(resolve, left);
                    waiters.push(() => {
                        clearTimeout(t);
                        resolve();
                    });
                });
            }
        },
        close: () => srv.close(),
    };
}

// ---- the instance ------------------------------------------------------------------

const work = mkdtempSync(path.join(process.env.CIBAD_TEST_PG_DIR
                                       ? path.dirname(process.env.CIBAD_TEST_PG_DIR)
                                       : tmpdir(),
                                   'interop-'));
const logPath = path.join(work, 'cibad.log');
const sms = await startSink('SMS gateway');
const pings = await startSink('ping receiver');
const port = await freePort();
const issuer = `http://127.0.0.1:${port}`;

const env = Object.fromEntries(
    Object.entries(process.env).filter(([name]) => !name.startsWith('CIBAD_')));
Object.assign(env, {
    CIBAD_ISSUER: issuer,
    CIBAD_LISTEN: `127.0.0.1:${port}`,
    CIBAD_DATABASE_URL: dbUrl,
    CIBAD_MIGRATIONS_DIR: migrations,
    CIBAD_SECRET: 'interop-server-secret-0123456789abcdef0123456789abcdef',
    CIBAD_WORKERS: '2',
    CIBAD_SMS_DRIVER: 'http',
    CIBAD_SMS_HTTP_URL: `${sms.url}/sms`,
    CIBAD_SMS_HTTP_TOKEN: 't',
    CIBAD_SMS_ALLOW_HTTP_LOOPBACK: 'true',
    CIBAD_NOTIFICATION_ALLOW_LOOPBACK: 'true',
    CIBAD_JWKS_URI_ALLOW_HTTP_LOOPBACK: 'true',
    CIBAD_NOTIFICATION_RETRY_INITIAL_MS: '200',
    CIBAD_POLL_INTERVAL: '1',
    CIBAD_SMS_PER_PHONE_MAX: '20',
    CIBAD_DEFAULT_COUNTRY_CODE: '1',
});

function cli(...args) {
    const r = spawnSync(bin, args, { env, encoding: 'utf8', timeout: 30000 });
    if (r.status !== 0)
        throw new Error(`cibad ${args.join(' ')} exited with ${r.status}: ${r.stderr}`);
    return r.stdout;
}

function cliJson(...args) {
    const out = cli(...args, '--json');
    return JSON.parse(out.slice(out.indexOf('{')));
}

let server = null;
function stopServer() {
    if (server && server.exitCode === null)
        server.kill('SIGTERM');
}
process.on('exit', stopServer);

async function startServer() {
    const log = openSync(logPath, 'a');
    server = spawn(bin, ['serve'], { env, stdio: ['ignore', log, log] });
    const deadline = Date.now() + STEP_MS;
    for (;;) {
        assert(server.exitCode === null, `cibad serve exited with ${server.exitCode}`);
        try {
            const r = await fetch(`${issuer}/readyz`);
            if (r.ok)
                return;
        } catch {
            // not listening yet
        }
        assert(Date.now() < deadline, 'cibad serve did not become ready');
        await new Promise((resolve) => setTimeout(resolve, 100));
    }
}

let phoneSeq = 0;
function createUser() {
    const phone = `+1555${String(Date.now() % 1000).padStart(3, '0')}${String(
        1000 + phoneSeq++).slice(-4)}`;
    return cliJson('user', 'create', '--phone', phone);
}

// ---- the user, played through the SMS and the approval page ------------------------

// Waits for the SMS to phone, then submits the approval page with action.
async function actOnSms(phone, action) {
    const msg = await sms.wait((b) => {
        try {
            return JSON.parse(b.body).to === phone;
        } catch {
            return false;
        }
    });
    const text = JSON.parse(msg.body).text;
    const link = text.match(/(https?:\/\/\S+\/approve\/)([A-Za-z0-9_-]+)/);
    assert(link, `no approval link in the SMS: ${text}`);
    assert(link[1] === `${issuer}/approve/`, `the link is not under the issuer: ${link[0]}`);
    const code = text.replace(link[0], '').match(/\b\d{6}\b/);
    assert(code, 'no 6-digit code in the SMS');

    const page = await fetch(link[0]);
    assert(page.status === 200, `GET approval page: ${page.status}`);
    const form = new URLSearchParams({ action });
    if (action === 'approve')
        form.set('code', code[0]);
    const r = await fetch(link[0], { method: 'POST', body: form });
    const body = await r.text();
    assert(r.status === 200, `POST approval page: ${r.status}`);
    const word = action === 'approve' ? 'Approved' : 'Denied';
    assert(body.includes(word), `the page after ${action} does not say ${word}`);
    return text;
}

// ---- token checks ------------------------------------------------------------------

let jwks = null;
async function checkTokens(config, tokens, clientId, user) {
    assert(tokens.token_type?.toLowerCase() === 'bearer', `token_type ${tokens.token_type}`);
    assert(typeof tokens.access_token === 'string', 'no access_token');
    // openid-client has already checked the ID token's iss, aud, exp, iat and, with
    // enableNonRepudiationChecks, its signature against the issuer's jwks_uri.
    const idClaims = tokens.claims();
    assert(idClaims, 'no ID token');
    assert(idClaims.iss === issuer, `ID token iss ${idClaims.iss}`);
    assert(idClaims.aud === clientId ||
               (Array.isArray(idClaims.aud) && idClaims.aud.includes(clientId)),
           `ID token aud ${idClaims.aud}`);
    assert(idClaims.sub === user.subject, `ID token sub ${idClaims.sub}`);

    // The access token is an RFC 9068 JWT signed with a key from /jwks.
    const meta = config.serverMetadata();
    jwks ??= jose.createRemoteJWKSet(new URL(meta.jwks_uri));
    const { payload, protectedHeader } = await jose.jwtVerify(tokens.access_token, jwks, {
        issuer,
        typ: 'at+jwt',
        algorithms: ['ES256'],
    });
    assert(protectedHeader.alg === 'ES256', `access token alg ${protectedHeader.alg}`);
    assert(payload.sub === user.subject, `access token sub ${payload.sub}`);
    assert(payload.client_id === clientId, `access token client_id ${payload.client_id}`);
    assert(String(payload.scope).split(' ').includes('payments'),
           `access token scope ${payload.scope}`);
    assert(typeof payload.jti === 'string', 'access token has no jti');
    assert(payload.exp > payload.iat, `access token exp ${payload.exp} <= iat ${payload.iat}`);
    // A token with one signature character changed must fail verification, so the check
    // above can fail. The first character: the last one carries padding bits that a
    // base64url decoder may ignore.
    const [h, p, sig] = tokens.access_token.split('.');
    const tampered = `${h}.${p}.${sig[0] === 'A' ? 'B' : 'A'}${sig.slice(1)}`;
    let rejected = false;
    try {
        await jose.jwtVerify(tampered, jwks);
    } catch {
        rejected = true;
    }
    assert(rejected, 'a tampered access token verified');
}

// Discovery as an agent does it. cibad's issuer here is plain http on loopback, which
// openid-client refuses unless allowInsecureRequests is given; a deployed cibad is https.
async function discover(clientId, metadata, auth) {
    const config = await client.discovery(new URL(issuer), clientId, metadata, auth, {
        execute: [client.allowInsecureRequests],
    });
    client.enableNonRepudiationChecks(config);
    return config;
}

// ---- the cases ---------------------------------------------------------------------

async function pollCase(config, clientId, binding) {
    const user = createUser();
    const started = await client.initiateBackchannelAuthentication(config, {
        scope: SCOPE,
        login_hint: user.phone_number,
        binding_message: binding,
    });
    assert(typeof started.auth_req_id === 'string', 'no auth_req_id');
    assert(started.expires_in > 0, `expires_in ${started.expires_in}`);
    const text = await actOnSms(user.phone_number, 'approve');

    assert(text.includes(binding), 'the SMS does not carry the binding message');
    const tokens = await client.pollBackchannelAuthenticationGrant(config, started, undefined,
                                                                   { signal: AbortSignal.timeout(STEP_MS) });
    await checkTokens(config, tokens, clientId, user);

    // The grant is single use: redeeming again is an error, not a second token.
    let error = null;
    try {
        await client.pollBackchannelAuthenticationGrant(config, { ...started, interval: 0 },
                                                        undefined,
                                                        { signal: AbortSignal.timeout(STEP_MS) });
    } catch (e) {
        error = e;
    }
    assert(error, 'a second redemption returned tokens again');
    assert(error.error === 'invalid_grant',
           `second redemption: expected invalid_grant, got ${error.error ?? error.message}`);
}

async function caseSecretBasic() {
    const c = cliJson('client', 'create', '--name', 'Interop basic', '--scope', SCOPE,
                      '--auth-method', 'client_secret_basic');
    const config = await discover(c.client_id, undefined, client.ClientSecretBasic(c.client_secret));
    const meta = config.serverMetadata();
    assert(meta.issuer === issuer, `issuer ${meta.issuer}`);
    assert(meta.backchannel_token_delivery_modes_supported?.includes('poll'),
           'discovery lacks poll delivery');
    assert(meta.grant_types_supported?.includes('urn:openid:params:grant-type:ciba'),
           'discovery lacks the CIBA grant type');
    await pollCase(config, c.client_id, 'Basic poll');
}

async function casePrivateKeyJwt() {
    const { privateKey, publicKey } = await jose.generateKeyPair('ES256', { extractable: true });
    const jwk = { ...(await jose.exportJWK(publicKey)), kid: 'interop-1', alg: 'ES256', use: 'sig' };
    const jwksFile = path.join(work, 'agent.jwks');
    writeFileSync(jwksFile, JSON.stringify({ keys: [jwk] }));
    const c = cliJson('client', 'create', '--name', 'Interop key', '--scope', SCOPE,
                      '--auth-method', 'private_key_jwt', '--jwks', jwksFile,
                      '--auth-signing-alg', 'ES256');
    assert(!c.client_secret, 'a private_key_jwt client was given a secret');
    const meta = (await discover(c.client_id, undefined, client.None())).serverMetadata();
    assert(meta.token_endpoint_auth_methods_supported?.includes('private_key_jwt'),
           'discovery lacks private_key_jwt');
    const config = await discover(c.client_id, undefined,
                                  client.PrivateKeyJwt({ key: privateKey, kid: 'interop-1' }));
    await pollCase(config, c.client_id, 'Key poll');

    // An assertion signed with a key cibad does not have is rejected as invalid_client.
    const other = await jose.generateKeyPair('ES256');
    const wrong = await discover(c.client_id, undefined,
                                 client.PrivateKeyJwt({ key: other.privateKey, kid: 'interop-1' }));
    let error = null;
    try {
        await client.initiateBackchannelAuthentication(wrong, {
            scope: SCOPE,
            login_hint: createUser().phone_number,
        });
    } catch (e) {
        error = e;
    }
    // cibad returns 401 with a WWW-Authenticate challenge, which openid-client raises
    // as a WWWAuthenticateChallengeError without parsing the JSON error body.
    assert(error, 'an assertion signed with an unknown key was accepted');
    assert(error instanceof client.WWWAuthenticateChallengeError,
           `unknown key: expected a WWW-Authenticate challenge, got ${error.message}`);
    assert(error.status === 401, `unknown key: status ${error.status}`);
    const body = await error.response.json();
    assert(body.error === 'invalid_client', `unknown key: ${body.error}`);
}

async function caseSecretJwt() {
    const c = cliJson('client', 'create', '--name', 'Interop secret JWT', '--scope', SCOPE,
                      '--auth-method', 'client_secret_jwt', '--auth-signing-alg', 'HS256');
    assert(typeof c.client_secret === 'string', 'client_secret_jwt client has no secret');
    const config = await discover(c.client_id, undefined,
                                  client.ClientSecretJwt(c.client_secret));
    assert(config.serverMetadata().token_endpoint_auth_methods_supported
               ?.includes('client_secret_jwt'),
           'discovery lacks client_secret_jwt');
    await pollCase(config, c.client_id, 'Secret JWT poll');

    // An assertion signed with a wrong secret is rejected with 401.
    const wrong = await discover(c.client_id, undefined,
                                 client.ClientSecretJwt(`${c.client_secret}x`));
    let error = null;
    try {
        await client.initiateBackchannelAuthentication(wrong, {
            scope: SCOPE,
            login_hint: createUser().phone_number,
        });
    } catch (e) {
        error = e;
    }
    assert(error, 'an assertion signed with a wrong secret was accepted');
    assert(error.status === 401, `wrong secret: status ${error.status}`);
}

// The agent publishes its public key at a jwks_uri, a node server on loopback.
async function casePrivateKeyJwtUri() {
    const { privateKey, publicKey } = await jose.generateKeyPair('PS256', { extractable: true });
    const jwk = { ...(await jose.exportJWK(publicKey)), kid: 'interop-uri', alg: 'PS256',
                  use: 'sig' };
    let fetches = 0;
    const keys = http.createServer((req, res) => {
        fetches++;
        res.writeHead(200, { 'content-type': 'application/json' });
        res.end(JSON.stringify({ keys: [jwk] }));
    });
    keys.listen(0, '127.0.0.1');
    await once(keys, 'listening');
    try {
        const c = cliJson('client', 'create', '--name', 'Interop jwks_uri', '--scope', SCOPE,
                          '--auth-method', 'private_key_jwt', '--jwks-uri',
                          `http://127.0.0.1:${keys.address().port}/jwks`,
                          '--auth-signing-alg', 'PS256');
        const config = await discover(c.client_id, undefined,
                                      client.PrivateKeyJwt({ key: privateKey,
                                                             kid: 'interop-uri' }));
        await pollCase(config, c.client_id, 'Key URI poll');
        assert(fetches >= 1, 'cibad never fetched the jwks_uri');
    } finally {
        keys.close();
    }
}

async function casePing() {
    const c = cliJson('client', 'create', '--name', 'Interop ping', '--scope', SCOPE,
                      '--auth-method', 'client_secret_basic', '--delivery-mode', 'ping',
                      '--notification-endpoint', `${pings.url}/ciba`);
    const config = await discover(c.client_id, undefined, client.ClientSecretBasic(c.client_secret));
    assert(config.serverMetadata().backchannel_token_delivery_modes_supported?.includes('ping'),
           'discovery lacks ping delivery');
    const user = createUser();
    const notificationToken = 'ping-' + Buffer.from(crypto.getRandomValues(new Uint8Array(16)))
                                              .toString('hex');
    const started = await client.initiateBackchannelAuthentication(config, {
        scope: SCOPE,
        login_hint: user.phone_number,
        binding_message: 'Ping',
        client_notification_token: notificationToken,
    });
    await actOnSms(user.phone_number, 'approve');
    const ping = await pings.wait((b) => b.body.includes(started.auth_req_id));
    assert(ping.path === '/ciba', `ping path ${ping.path}`);
    assert(ping.headers.authorization === `Bearer ${notificationToken}`,
           'the ping does not carry the client_notification_token');
    assert(JSON.parse(ping.body).auth_req_id === started.auth_req_id, 'ping body');
    // The ping means the result is ready, so redeem at once, without the poll wait.
    const tokens = await client.pollBackchannelAuthenticationGrant(
        config, { ...started, interval: 0 }, undefined, { signal: AbortSignal.timeout(STEP_MS) });
    await checkTokens(config, tokens, c.client_id, user);
}

async function caseDenied() {
    const c = cliJson('client', 'create', '--name', 'Interop deny', '--scope', SCOPE,
                      '--auth-method', 'client_secret_basic');
    const config = await discover(c.client_id, undefined, client.ClientSecretBasic(c.client_secret));
    const user = createUser();
    const started = await client.initiateBackchannelAuthentication(config, {
        scope: SCOPE,
        login_hint: user.phone_number,
        binding_message: 'Deny me',
    });
    await actOnSms(user.phone_number, 'deny');
    let error = null;
    try {
        await client.pollBackchannelAuthenticationGrant(config, started, undefined,
                                                        { signal: AbortSignal.timeout(STEP_MS) });
    } catch (e) {
        error = e;
    }
    assert(error, 'tokens were issued for a denied request');
    assert(error instanceof client.ResponseBodyError, `denial: ${error.message}`);
    assert(error.error === 'access_denied', `denial surfaced as ${error.error}`);
}

// ---- main --------------------------------------------------------------------------

const cases = [
    ['client_secret_basic poll', caseSecretBasic],
    ['private_key_jwt poll', casePrivateKeyJwt],
    ['private_key_jwt poll, key at a jwks_uri', casePrivateKeyJwtUri],
    ['client_secret_jwt poll', caseSecretJwt],
    ['ping', casePing],
    ['denial is access_denied', caseDenied],
];
let passed = 0;
let failed = 0;
try {
    cli('migrate');
    cli('scope', 'set', 'payments', 'Make payments on your behalf');
    await startServer();
    for (const [name, run] of cases) {
        try {
            await run();
            passed++;
            console.log(`ok ${name}`);
        } catch (e) {
            failed++;
            console.log(`FAIL ${name}: ${e.error ? `${e.error}: ` : ''}${e.message}`);
        }
    }
} catch (e) {
    failed++;
    console.log(`FAIL setup: ${e.message}`);
}

// cibad must exit cleanly on SIGTERM. Under SANITIZE=1 a sanitizer report makes the exit
// status non-zero, so it counts as a failure here.
if (server && server.exitCode === null) {
    const exited = once(server, 'exit');
    stopServer();
    const timer = setTimeout(() => server.kill('SIGKILL'), STEP_MS);
    const [code, signal] = await exited;
    clearTimeout(timer);
    if (code === 0) {
        passed++;
        console.log('ok clean shutdown');
    } else {
        failed++;
        console.log(`FAIL clean shutdown: cibad exited with ${code ?? signal}`);
    }
}
sms.close();
pings.close();
if (failed) {
    console.error('-- cibad log (last 40 lines):');
    try {
        console.error(readFileSync(logPath, 'utf8').split('\n').slice(-41).join('\n'));
    } catch {
        console.error('(no log)');
    }
}
if (!process.env.CIBAD_TEST_KEEP)
    rmSync(work, { recursive: true, force: true });
console.log(`${passed} passed, ${failed} failed`);
process.exit(failed ? 1 : 0);
