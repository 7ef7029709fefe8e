// The official `oblien` client (v2.4.0, unmodified) against a real `warren server`
// that boots real microVMs. Run by scripts/test.sh (tests/compat/run.sh).
//
// Needs WARREN_BIN (see server.mjs).

import { test, before, after } from 'node:test';
import assert from 'node:assert/strict';
import Oblien, {
  Runtime,
  AuthenticationError,
  NotFoundError,
  ValidationError,
  ConflictError,
  RateLimitError,
} from 'oblien';
import { startServer } from './server.mjs';

let server;
let creds;
let client;

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
  server = await startServer([
    // Creates of the tests' shape take a VM booted ahead of demand (the warm pool),
    // so the client sees workspaces made that way.
    '--warm-pool', '1',
    '--warm-pool-memory-mb', String(small.memory_mb),
    '--warm-pool-disk-mb', String(small.disk_size_mb),
  ]);
  creds = server.creds;
  assert.match(creds.client_id, /^wc_/);
  client = new Oblien({ clientId: creds.client_id, clientSecret: creds.client_secret, baseUrl: server.url });
});

after(async () => {
  if (client) {
    const { workspaces } = await client.workspaces.list({ limit: 100 }).catch(() => ({ workspaces: [] }));
    for (const w of workspaces) await client.workspaces.delete(w.id).catch(() => {});
    for (const w of workspaces) await waitGone(w.id, 60).catch(() => {});
  }
  if (server) await server.stop();
});

test('bad input gets the documented error classes and changes nothing', async () => {
  const before = (await client.workspaces.list()).total;
  const wrong = new Oblien({ clientId: creds.client_id, clientSecret: 'wsk_wrong', baseUrl: server.url });
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
  await assert.rejects(client.workspaces.usage.totals('ws_doesnotexist'), (e) => e.status === 501 && e.code === 'not_implemented');
});

let id;
let rt;

test('create waits until ready; list, get and update see it', async () => {
  const key = `compat-${Date.now()}`;
  const ws = await client.workspaces.create({
    ...small,
    name: 'compat',
    idempotency_key: key,
    config: {
      env: ['GREETING=hello'],
      cmd: 'echo started-by-cmd $GREETING',
      // Started by the agent at boot (see the workloads test).
      workloads: [{ name: 'ticker', cmd: ['sh', '-c', 'while true; do echo tick; sleep 1; done'], restart_policy: 'always' }],
    },
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

test('exec extras through the gateway: input, subscribe to a running task, list, kill', async () => {
  const script = 'echo ready; while read l; do echo "got $l"; done; echo eof; exit 4';
  const owner = rt.exec.stream(['sh', '-c', script]);
  let taskId;
  // Read the owner's stream until `want` shows up.
  const until = async (it, want, acc) => {
    while (!acc.text.includes(want)) {
      const { value, done } = await it.next();
      assert.ok(!done, `stream ended before ${want}: ${acc.text}`);
      if (value.event === 'task_id') taskId = value.task_id;
      if (value.event === 'stdout') acc.text += Buffer.from(value.data, 'base64').toString();
      if (value.event === 'exit') acc.exit = value;
    }
  };
  const mine = { text: '' };
  await until(owner, 'ready\n', mine);
  assert.ok(taskId);
  const running = (await rt.exec.list()).find((t) => t.id === taskId);
  assert.equal(running.status, 'running');

  // A second client attaches to the running task: replay, then live.
  const late = rt.exec.subscribe(taskId);
  const theirs = { text: '' };
  await until(late, 'ready\n', theirs);
  const r = await rt.exec.input(taskId, 'hello\n');
  assert.equal(r.success, true);
  await until(owner, 'got hello\n', mine);
  await until(late, 'got hello\n', theirs);
  await rt.exec.input(taskId, '');
  await until(owner, 'eof\n', mine);
  await until(late, 'eof\n', theirs);
  for await (const ev of owner) if (ev.event === 'exit') mine.exit = ev;
  for await (const ev of late) if (ev.event === 'exit') theirs.exit = ev;
  assert.equal(mine.text, 'ready\ngot hello\neof\n');
  assert.equal(theirs.text, mine.text);
  assert.equal(mine.exit.exit_code, 4);
  assert.equal(theirs.exit.exit_code, 4);
  await assert.rejects(rt.exec.input(taskId, 'late\n'), (e) => e instanceof ConflictError);

  // Kill a running task.
  const sleeper = rt.exec.stream(['sleep', '60']);
  const first = (await sleeper.next()).value;
  assert.equal(first.event, 'task_id');
  await rt.exec.kill(first.task_id);
  let exit;
  for await (const ev of sleeper) if (ev.event === 'exit') exit = ev;
  assert.equal(exit.exit_code, 137);
});

test('a terminal session survives a reconnect and replays its scrollback', async () => {
  globalThis.WebSocket ??= (await import('ws')).WebSocket;
  const term = await rt.terminal.create({ shell: '/bin/sh', cols: 100, rows: 30 });
  assert.equal(term.cols, 100);
  const tid = term.id;

  // Connect, type, collect the output; the client reconnects by itself otherwise.
  const session = () => {
    const ws = rt.ws({ reconnect: false });
    const state = { out: '', exit: null, ws };
    ws.onTerminalOutput((id, data) => {
      if (id === String(tid)) state.out += Buffer.from(data).toString();
    });
    ws.onTerminalExit((id, code) => {
      if (String(id) === String(tid)) state.exit = code;
    });
    state.opened = new Promise((resolve) => ws.onOpen(resolve));
    ws.connect();
    return state;
  };
  const waitFor = async (cond, what) => {
    for (let i = 0; i < 100 && !cond(); i++) await sleep(100);
    assert.ok(cond(), `timed out waiting for ${what}`);
  };

  const a = session();
  await a.opened;
  a.ws.writeTerminalInput(tid, 'echo mark-$((40+2))\n');
  await waitFor(() => a.out.includes('mark-42'), 'the first output');
  a.ws.close();

  const b = session();
  await b.opened;
  // The scrollback comes first: what was printed before this connection existed.
  await waitFor(() => b.out.includes('mark-42'), 'the replayed scrollback');
  b.ws.resizeTerminal(tid, 120, 40);
  b.ws.writeTerminalInput(tid, 'stty size\n');
  await waitFor(() => b.out.includes('40 120'), 'the new size');

  const sb = await rt.terminal.scrollback(tid);
  assert.ok(Buffer.from(sb.scrollback, 'base64').toString().includes('mark-42'));
  assert.equal(sb.alive, true);
  assert.ok((await rt.terminal.list()).some((t) => String(t.id) === String(tid)));

  b.ws.writeTerminalInput(tid, 'exit 3\n');
  await waitFor(() => b.exit !== null, 'the exit message');
  assert.equal(b.exit, 3);
  b.ws.close();
  await rt.terminal.close(tid);
  assert.ok(!(await rt.terminal.list()).some((t) => String(t.id) === String(tid)));
});

test('workloads: declared at create, a crashing one restarts until max_restarts, logs stream', async () => {
  const wl = client.workspaces.workloads;
  // The one from config.workloads runs since boot.
  const ticker = await wl.get(id, 'ticker');
  assert.equal(ticker.status, 'running');
  assert.equal(ticker.restart_policy, 'always');

  const w = await wl.create(id, {
    name: 'crashy',
    cmd: ['sh', '-c', 'echo run; echo oops >&2; exit 3'],
    restart_policy: 'on-failure',
    max_restarts: 2,
    restart_delay: 0.2,
  });
  assert.equal(w.name, 'crashy');
  const lines = [];
  for await (const ev of wl.logsStream(id, w.id)) {
    lines.push(ev);
    if (ev.stream === 'system' && ev.data.includes('max_restarts')) break;
  }
  assert.equal(lines.filter((l) => l.stream === 'stdout' && l.data === 'run').length, 3);
  assert.equal(lines.filter((l) => l.stream === 'stderr' && l.data === 'oops').length, 3);
  const st = await wl.status(id, w.id);
  assert.equal(st.status, 'failed');
  assert.equal(st.restarts, 2);
  assert.equal(st.exit_code, 3);
  const logs = await wl.logs(id, w.id);
  assert.ok(logs.logs.some((l) => l.data === 'oops'));

  // Bad input: clear errors, nothing changes.
  await assert.rejects(wl.create(id, { name: 'crashy', cmd: ['true'] }), (e) => e instanceof ConflictError);
  await assert.rejects(
    wl.create(id, { name: 'x', cmd: ['true'], restart_policy: 'sometimes' }),
    (e) => e instanceof ValidationError && /restart_policy/.test(e.message),
  );
  await assert.rejects(wl.get(id, 'nope'), (e) => e instanceof NotFoundError);
  await assert.rejects(
    client.workspaces.create({ ...small, config: { workloads: [{ name: 'no-cmd' }] } }),
    (e) => e instanceof ValidationError && e.details.field === 'config.workloads[0].cmd',
  );
  assert.deepEqual((await wl.list(id)).map((x) => x.name).sort(), ['crashy', 'ticker']);

  const stopped = await wl.stop(id, 'ticker');
  assert.equal(stopped.status, 'stopped');
  await wl.start(id, 'ticker');
  await wl.delete(id, w.id);
  assert.deepEqual((await wl.list(id)).map((x) => x.name), ['ticker']);
});

test('a watcher sees a file created by exec', async () => {
  globalThis.WebSocket ??= (await import('ws')).WebSocket;
  await rt.exec.run(['mkdir', '-p', '/root/watched']);
  const events = [];
  const ws = rt.ws({ reconnect: false });
  ws.onWatcherEvent((ev) => events.push(ev));
  await new Promise((resolve) => {
    ws.onOpen(resolve);
    ws.connect();
  });
  const w = await rt.watcher.create({ path: '/root/watched' });
  assert.equal(w.root, '/root/watched');
  const waitFor = async (cond, what) => {
    for (let i = 0; i < 100 && !cond(); i++) await sleep(100);
    assert.ok(cond(), `timed out waiting for ${what}: ${JSON.stringify(events)}`);
  };
  await waitFor(() => events.some((e) => e.type === 'ready' && e.watcher_id === w.id), 'ready');
  await rt.exec.run(['sh', '-c', 'echo hi > /root/watched/new.txt']);
  await waitFor(
    () => events.some((e) => e.type === 'change' && e.path === '/root/watched/new.txt' && e.op === 'create'),
    'the create event',
  );
  assert.ok((await rt.watcher.list()).some((x) => x.id === w.id));
  await rt.watcher.delete(w.id);
  ws.close();
});

test('search finds content and file names, respecting .gitignore', async () => {
  await rt.files.write({ fullPath: '/root/proj/.gitignore', content: 'dist/\n', createDirs: true });
  await rt.files.write({ fullPath: '/root/proj/src/app.js', content: 'const a = 1;\nfunction handleRequest() {}\n', createDirs: true });
  await rt.files.write({ fullPath: '/root/proj/dist/app.min.js', content: 'function handleRequest(){}\n', createDirs: true });
  const found = await rt.search.content({ query: 'handleRequest', path: '/root/proj' });
  assert.equal(found.success, true);
  assert.deepEqual(Object.keys(found.results), ['/root/proj/src/app.js']);
  assert.equal(found.results['/root/proj/src/app.js'][0].line, 2);
  assert.equal(found.total_matches, 1);
  const files = await rt.search.files({ query: 'app', path: '/root/proj' });
  assert.deepEqual(files.files, ['/root/proj/src/app.js']);
  const status = await rt.search.status();
  assert.equal(status.installed, true);
  await assert.rejects(rt.search.content({ query: '(', regex: true, path: '/root/proj' }), (e) => e.status === 422);
});

test('proxy reaches an HTTP server inside the VM, without our token', async () => {
  await rt.files.write({ fullPath: '/root/www/index.html', content: 'hello-from-vm\n', createDirs: true });
  await rt.files.write({ fullPath: '/root/www/cgi-bin/env', content: '#!/bin/sh\necho "Content-Type: text/plain"\necho\nenv\n', mode: '0755', createDirs: true });
  // busybox httpd, supervised as a workload.
  await client.workspaces.workloads.create(id, {
    name: 'web',
    cmd: ['httpd', '-f', '-p', '127.0.0.1:8080', '-h', '/root/www'],
    restart_policy: 'on-failure',
  });
  let res;
  for (let i = 0; i < 50; i++) {
    res = await rt.proxy(8080).fetch('/index.html');
    if (res.status === 200) break;
    await res.text();
    await sleep(100);
  }
  assert.equal(res.status, 200);
  assert.equal(await res.text(), 'hello-from-vm\n');
  // The app sees neither the gateway token nor the agent's.
  const env = await (await rt.proxy(8080).fetch('/cgi-bin/env?a=1')).text();
  assert.match(env, /QUERY_STRING=a=1/);
  assert.doesNotMatch(env, /HTTP_AUTHORIZATION|Bearer/);
  await client.workspaces.workloads.delete(id, 'web');
});

test('stats: one-shot, and a 1 s stream whose CPU rises under a busy loop', async () => {
  const one = await client.workspaces.metrics.stats(id);
  assert.equal(one.success, true);
  assert.ok(one.memory_total_bytes > 100 * 1024 * 1024, JSON.stringify(one));
  assert.ok(one.memory_used_bytes > 0);
  assert.equal(typeof one.disk.read_bytes, 'number');
  assert.equal(typeof one.network.rx, 'number');

  const events = [];
  let busy;
  for await (const ev of client.workspaces.metrics.statsStream(id)) {
    events.push({ ...ev, at: Date.now() });
    // Quiet for two events, then a busy loop for the rest.
    if (events.length === 2) busy = rt.exec.run(['sh', '-c', 'end=$(($(date +%s)+4)); while [ $(date +%s) -lt $end ]; do :; done'], { timeoutSeconds: 10 });
    if (events.length === 5) break;
  }
  for (let i = 1; i < events.length; i++) {
    const gap = events[i].at - events[i - 1].at;
    assert.ok(gap > 500 && gap < 2500, `events ${gap} ms apart`);
  }
  const quiet = events[0].cpu_usage;
  const loaded = Math.max(...events.slice(3).map((e) => e.cpu_usage));
  assert.ok(loaded > quiet + 30 && loaded > 50, `cpu ${events.map((e) => e.cpu_usage)}`);
  await busy;
});

test('transfer: a tar.gz download uploads back into another directory', async () => {
  const { gunzipSync } = await import('node:zlib');
  const progress = [];
  const res = await rt.transfer.download({ paths: ['/root/notes'], onProgress: (p) => progress.push(p.loadedBytes) });
  const gz = Buffer.from(await res.arrayBuffer());
  assert.ok(progress.length > 0 && progress.at(-1) === gz.length);
  const tar = gunzipSync(gz);
  assert.ok(tar.includes(Buffer.from('root/notes/keep.txt')));
  assert.ok(tar.includes(Buffer.from('kept across stop')));
  const up = await rt.transfer.upload({ body: gz, dest: '/root/restored' });
  assert.equal(up.success, true);
  assert.equal(up.files_extracted, 1);
  const f = await rt.files.read({ filePath: '/root/restored/root/notes/keep.txt' });
  assert.equal(f.content, 'kept across stop\n');
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

test('resources: get, a shrink is refused and changes nothing, a grow waits for the next start', async () => {
  const r = await client.workspaces.resources.get(id);
  assert.deepEqual(r.resources, { cpus: 1, memory_mb: 256, disk_size_mb: 128 });
  await assert.rejects(
    client.workspaces.resources.update(id, { disk_size_mb: 64 }),
    (e) => e instanceof ValidationError && e.details?.field === 'disk_size_mb',
  );
  assert.equal((await client.workspaces.resources.get(id)).resources.disk_size_mb, 128);
  const u = await client.workspaces.resources.patch(id, { disk_size_mb: 160 });
  assert.equal(u.resources.disk_size_mb, 160);
  assert.equal(u.restart_required, true);
  assert.equal((await client.workspaces.get(id)).resources.disk_size_mb, 160);
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
  // The cmd runs in the background after a start (here perhaps across the pause
  // above): its exit code is recorded when it ends.
  let info;
  for (let i = 0; i < 40; i++) {
    info = await client.workspaces.get(id);
    if (info.last_exit_code !== null) break;
    await sleep(250);
  }
  assert.equal(info.last_exit_code, 0, `no exit code recorded; server log:\n${server.stderr().slice(-20000)}`);
  const files = await client.workspaces.logs.listFiles(id);
  assert.ok(files.some((f) => f.name === 'boot.log'));
});

test('config.cmd with a restart policy is supervised until max_restarts, then remove_on_exit acts', async () => {
  const script = 'echo attempt; sleep 1; exit 3';
  const ws = await client.workspaces.create({
    ...small,
    mode: 'temporary',
    config: { cmd: script, restart_policy: 'on-failure', max_restarts: 1, remove_on_exit: true },
  });
  assert.equal(ws.ready, true);
  assert.equal(ws.lifecycle.restart_policy, 'on-failure');
  const wl = client.workspaces.workloads;
  const c = await wl.get(ws.id, 'cmd');
  assert.equal(c.restart_policy, 'on-failure');
  assert.equal(c.max_restarts, 1);
  assert.deepEqual(c.cmd, ['/bin/sh', '-c', script]);
  const lines = [];
  for await (const ev of wl.logsStream(ws.id, 'cmd')) {
    lines.push(ev);
    if (ev.stream === 'system' && ev.data.includes('max_restarts')) break;
  }
  assert.equal(lines.filter((l) => l.stream === 'stdout' && l.data === 'attempt').length, 2, JSON.stringify(lines));
  // The final exit is the workspace command's exit: remove_on_exit removes it.
  await waitGone(ws.id, 60);
  // A workload may not take the name the supervised cmd uses.
  await assert.rejects(
    client.workspaces.create({
      ...small,
      config: { cmd: 'true', restart_policy: 'always', workloads: [{ name: 'cmd', cmd: ['true'] }] },
    }),
    (e) => e instanceof ValidationError && e.details.field === 'config.workloads',
  );
});

test('log streams: the boot log ends with the boot, a command is followed until it exits', async () => {
  const ws = await client.workspaces.create({
    ...small,
    config: { cmd: 'echo first-line; sleep 2; echo last-line' },
  });
  const collect = async (gen) => {
    const out = [];
    for await (const ev of gen) {
      assert.equal(typeof ev.message, 'string');
      assert.equal(typeof ev.timestamp, 'string');
      out.push(ev.message);
    }
    return out;
  };
  const within = (p, ms, what) =>
    Promise.race([p, sleep(ms).then(() => assert.fail(`${what} did not end within ${ms} ms`))]);
  const boot = await within(collect(client.workspaces.logs.streamBoot(ws.id, { tail_lines: 5 })), 10000, 'boot stream');
  assert.ok(boot.length > 0 && boot.length <= 5, JSON.stringify(boot));
  const cmd = await within(collect(client.workspaces.logs.streamCmd(ws.id)), 30000, 'cmd stream');
  assert.ok(cmd.includes('first-line') && cmd.includes('last-line'), JSON.stringify(cmd));
  assert.equal((await client.workspaces.get(ws.id)).last_exit_code, 0);
  await assert.rejects(
    collect(client.workspaces.logs.streamBoot(ws.id, { tail_lines: -1 })),
    (e) => e instanceof ValidationError,
  );
  await client.workspaces.delete(ws.id);
  await waitGone(ws.id, 60);
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

test('a client over its rate limit gets RateLimitError, and the request does nothing', async () => {
  // A server of its own, with a small allowance.
  const limited = await startServer(['--warm-pool', '0', '--rate-limit-rps', '1', '--rate-limit-burst', '2']);
  try {
    const c = new Oblien({
      clientId: limited.creds.client_id,
      clientSecret: limited.creds.client_secret,
      baseUrl: limited.url,
    });
    await c.workspaces.list();
    await c.workspaces.list();
    await assert.rejects(
      c.workspaces.create(small),
      (e) => e instanceof RateLimitError && e.status === 429 && e.code === 'rate_limited'
        && e.details?.retry_after >= 1,
    );
    await sleep(2100);
    const { workspaces } = await c.workspaces.list();
    assert.equal(workspaces.length, 0);
  } finally {
    await limited.stop();
  }
});
