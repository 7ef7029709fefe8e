// The official `oblien` client (v2.4.0, unmodified) against a real `warren server`
// that boots real microVMs. Run by scripts/test.sh (tests/compat/run.sh).
//
// Needs WARREN_BIN (the warren binary); WARREN_AGENT and WARREN_CACHE_DIR are passed
// through to the server.

import { test, before, after } from 'node:test';
import assert from 'node:assert/strict';
import { spawn } from 'node:child_process';
import { mkdtempSync, readFileSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import Oblien, {
  Runtime,
  AuthenticationError,
  NotFoundError,
  ValidationError,
  ConflictError,
} from 'oblien';

const BIN = process.env.WARREN_BIN;
assert.ok(BIN, 'set WARREN_BIN to the warren binary');

let server;
let dataDir;
let apiUrl;
let creds;
let client;
let stderr = '';

function startServer() {
  return new Promise((resolve, reject) => {
    server = spawn(BIN, [
      'server',
      '--data-dir', dataDir,
      '--api-addr', '127.0.0.1:0',
      '--gateway-addr', '127.0.0.1:0',
      '--default-image', 'busybox',
    ], { stdio: ['ignore', 'inherit', 'pipe'] });
    const timer = setTimeout(() => reject(new Error(`server did not start:\n${stderr}`)), 120_000);
    server.stderr.on('data', (chunk) => {
      stderr += chunk.toString();
      // Whole lines only: a chunk may end in the middle of the address.
      const m = stderr.match(/^warren: api listening on (http:\/\/\S+)\n/m);
      if (m && !apiUrl) {
        apiUrl = m[1];
        clearTimeout(timer);
        resolve();
      }
    });
    server.on('exit', (code) => reject(new Error(`server exited (${code}):\n${stderr}`)));
  });
}

const small = { image: 'busybox', memory_mb: 256, disk_size_mb: 128 };
const sleep = (ms) => new Promise((r) => setTimeout(r, ms));

async function waitGone(id, seconds) {
  for (let i = 0; i < seconds * 4; i++) {
    try {
      await client.workspaces.get(id);
    } catch (e) {
      if (e instanceof NotFoundError) return;
      throw e;
    }
    await sleep(250);
  }
  assert.fail(`workspace ${id} still exists after ${seconds}s`);
}

async function runtimeFor(id) {
  const access = await client.workspaces.apiAccess.status(id);
  const t = access.enabled
    ? await client.workspaces.apiAccess.getToken(id)
    : await client.workspaces.apiAccess.enable(id);
  assert.equal(typeof t.token, 'string');
  assert.match(t.gateway_url, /^http:\/\//);
  return new Runtime({ token: t.token, baseUrl: t.gateway_url });
}

before(async () => {
  dataDir = mkdtempSync(join(tmpdir(), 'warren-compat-'));
  await startServer();
  creds = JSON.parse(readFileSync(join(dataDir, 'credentials.json'), 'utf8'));
  assert.match(creds.client_id, /^wc_/);
  client = new Oblien({ clientId: creds.client_id, clientSecret: creds.client_secret, baseUrl: apiUrl });
});

after(async () => {
  if (client) {
    const { workspaces } = await client.workspaces.list({ limit: 100 }).catch(() => ({ workspaces: [] }));
    for (const w of workspaces) await client.workspaces.delete(w.id).catch(() => {});
    for (const w of workspaces) await waitGone(w.id, 60).catch(() => {});
  }
  if (server && server.exitCode === null) {
    server.kill('SIGTERM');
    await new Promise((r) => server.once('exit', r));
  }
  if (dataDir) rmSync(dataDir, { recursive: true, force: true });
});

test('bad input gets the documented error classes and changes nothing', async () => {
  const before = (await client.workspaces.list()).total;
  const wrong = new Oblien({ clientId: creds.client_id, clientSecret: 'wsk_wrong', baseUrl: apiUrl });
  await assert.rejects(wrong.workspaces.list(), (e) => e instanceof AuthenticationError && e.status === 401);
  await assert.rejects(client.workspaces.get('ws_doesnotexist'), (e) => e instanceof NotFoundError && e.code === 'not_found');
  await assert.rejects(
    client.workspaces.create({ ...small, cpus: 0 }),
    // The client folds resources into config, so that is where the field is.
    (e) => e instanceof ValidationError && e.status === 422 && e.details.field === 'config.cpus',
  );
  await assert.rejects(
    client.workspaces.create({ ...small, config: { ttl_action: 'explode' } }),
    (e) => e instanceof ValidationError && e.details.field === 'config.ttl_action',
  );
  await assert.rejects(
    client.workspaces.create({ ...small, memory_mb: 'lots' }),
    (e) => e instanceof ValidationError,
  );
  assert.equal((await client.workspaces.list()).total, before);
  // A later feature answers 501 with its name, never a fake success.
  await assert.rejects(client.workspaces.ssh.status('ws_doesnotexist'), (e) => e.status === 501 && e.code === 'not_implemented');
});

let id;
let rt;

test('create waits until ready; list, get and update see it', async () => {
  const key = `compat-${Date.now()}`;
  const ws = await client.workspaces.create({
    ...small,
    name: 'compat',
    idempotency_key: key,
    config: { env: ['GREETING=hello'], cmd: 'echo started-by-cmd $GREETING' },
  });
  assert.match(ws.id, /^ws_/);
  assert.equal(ws.ready, true);
  assert.equal(ws.status, 'running');
  assert.equal(ws.provisioning.state, 'ready');
  assert.equal(ws.resources.memory_mb, 256);
  id = ws.id;

  // The same idempotency key answers with the same workspace.
  const again = await client.workspaces.create({ ...small, name: 'compat', idempotency_key: key });
  assert.equal(again.id, id);

  const list = await client.workspaces.list();
  assert.equal(list.success, true);
  assert.equal(list.workspaces.filter((w) => w.id === id).length, 1);
  assert.equal(list.total, 1);

  const got = await client.workspaces.get(id);
  assert.equal(got.name, 'compat');
  assert.equal(got.image, 'busybox');

  const updated = await client.workspaces.update(id, { name: 'compat-renamed' });
  assert.equal(updated.name, 'compat-renamed');
  assert.equal((await client.workspaces.get(id)).name, 'compat-renamed');
});

test('runtime through the gateway: exec.run, exec.stream, files', async () => {
  rt = await runtimeFor(id);
  assert.equal(await rt.health(), true);

  const r = await rt.exec.run(['sh', '-c', 'echo $GREETING; echo oops >&2']);
  assert.equal(r.exit_code, 0);
  assert.equal(r.stdout, 'hello\n');
  assert.equal(r.stderr, 'oops\n');

  let out = '';
  let err = '';
  let exit;
  let taskId;
  let firstOut;
  let exitAt;
  for await (const ev of rt.exec.stream(['sh', '-c', 'echo one; sleep 2; echo two; echo bad >&2; exit 3'])) {
    if (ev.event === 'task_id') taskId = ev.task_id;
    if (ev.event === 'stdout') {
      firstOut ??= Date.now();
      out += Buffer.from(ev.data, 'base64').toString();
    }
    if (ev.event === 'stderr') err += Buffer.from(ev.data, 'base64').toString();
    if (ev.event === 'exit') {
      exit = ev;
      exitAt = Date.now();
    }
  }
  assert.ok(taskId);
  // The gateway passes events as they happen, not when the command is done.
  assert.ok(exitAt - firstOut >= 1500, `first output only ${exitAt - firstOut} ms before the exit`);
  assert.equal(out, 'one\ntwo\n');
  assert.equal(err, 'bad\n');
  assert.equal(exit.exit_code, 3);

  const w = await rt.files.write({ fullPath: '/root/notes/keep.txt', content: 'kept across stop\n', createDirs: true });
  assert.equal(w.success, true);
  const f = await rt.files.read({ filePath: '/root/notes/keep.txt' });
  assert.equal(f.content, 'kept across stop\n');
  const ls = await rt.files.list({ dirPath: '/root/notes' });
  assert.deepEqual(ls.entries.map((e) => e.name), ['keep.txt']);

  // A token that is not ours is refused by the gateway.
  const bogus = new Runtime({ token: 'not-a-token', baseUrl: (await client.workspaces.apiAccess.getToken(id)).gateway_url });
  await assert.rejects(bogus.exec.run(['true']), (e) => e instanceof AuthenticationError);
});

test('the runtime WebSocket connects through the gateway', async () => {
  // The client uses the global WebSocket: Node 22 has one, Node 20 needs the `ws`
  // package (a dependency of oblien) put there.
  globalThis.WebSocket ??= (await import('ws')).WebSocket;
  const sock = rt.ws({ reconnect: false });
  await new Promise((resolve, reject) => {
    sock.onOpen(resolve);
    sock.onError(() => reject(new Error('WebSocket error')));
    sock.connect();
  });
  assert.equal(sock.connected, true);
  sock.close();
  assert.equal(sock.connected, false);

  // A token that is not ours never gets a connection.
  const { gateway_url } = await client.workspaces.apiAccess.getToken(id);
  const bad = new Runtime({ token: 'not-a-token', baseUrl: gateway_url }).ws({ reconnect: false });
  const outcome = await new Promise((resolve) => {
    bad.onOpen(() => resolve('open'));
    bad.onError(() => resolve('error'));
    bad.connect();
  });
  bad.close();
  assert.equal(outcome, 'error');
});

test('the raw token works directly against the agent', async () => {
  const raw = await client.workspaces.apiAccess.rawToken(id);
  assert.equal(raw.port, 9990);
  const direct = new Runtime({ token: raw.token, baseUrl: `http://${raw.ip}:${raw.port}` });
  const r = await direct.exec.run(['echo', 'direct']);
  assert.equal(r.stdout, 'direct\n');
});

test('stop then start keeps the files', async () => {
  const s = await client.workspaces.stop(id);
  assert.equal(s.success, true);
  const stopped = await client.workspaces.get(id);
  assert.equal(stopped.status, 'stopped');
  assert.equal(stopped.ready, false);
  await assert.rejects(rt.exec.run(['true']), (e) => e instanceof ConflictError);

  const st = await client.workspaces.start(id);
  assert.equal(st.success, true);
  assert.equal((await client.workspaces.get(id)).status, 'running');
  // The same gateway token still works: the gateway follows the workspace.
  const f = await rt.files.read({ filePath: '/root/notes/keep.txt' });
  assert.equal(f.content, 'kept across stop\n');
});

test('pause freezes, resume thaws', async () => {
  const p = await client.workspaces.pause(id);
  assert.equal(p.success, true);
  assert.equal((await client.workspaces.get(id)).status, 'paused');
  const rs = await client.workspaces.resume(id);
  assert.equal(rs.success, true);
  assert.equal((await client.workspaces.get(id)).status, 'running');
  const r = await rt.exec.run(['echo', 'thawed']);
  assert.equal(r.stdout, 'thawed\n');
});

test('lifecycle, metadata and logs', async () => {
  const lc = await client.workspaces.lifecycle.get(id);
  assert.equal(lc.mode, 'permanent');
  await client.workspaces.metadata.update(id, { metadata: { team: 'a' } });
  await client.workspaces.metadata.patch(id, { metadata: { tier: 'dev' } });
  const md = await client.workspaces.metadata.get(id);
  assert.deepEqual(md.metadata, { team: 'a', tier: 'dev' });
  const logs = await client.workspaces.logs.get(id, { source: 'boot' });
  assert.ok(logs.lines.length > 0);
  // The workspace's cmd ran at its first boot and again at the start after the stop.
  const cmd = await client.workspaces.logs.get(id, { source: 'cmd' });
  assert.ok(cmd.lines.includes('started-by-cmd hello'), JSON.stringify(cmd.lines));
  const info = await client.workspaces.get(id);
  assert.equal(info.last_exit_code, 0);
  const files = await client.workspaces.logs.listFiles(id);
  assert.ok(files.some((f) => f.name === 'boot.log'));
});

test('TTL expiry removes a temporary workspace', async () => {
  const ws = await client.workspaces.create({ ...small, mode: 'temporary', config: { ttl: 4, ttl_action: 'remove' } });
  assert.equal(ws.ready, true);
  assert.equal(ws.lifecycle.ttl_action, 'remove');
  assert.ok(ws.lifecycle.ttl_expires_at);
  await waitGone(ws.id, 60);
});

test('delete is accepted and completes in the background', async () => {
  const d = await client.workspaces.delete(id);
  assert.equal(d.success, true);
  assert.equal(d.accepted, true);
  await waitGone(id, 60);
  assert.equal((await client.workspaces.list()).total, 0);
});
