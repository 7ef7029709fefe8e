// A `warren server` for the compat tests: started on free ports with a private data
// dir, found by the address it prints, stopped with SIGTERM.
//
// Needs WARREN_BIN (the warren binary); WARREN_AGENT and WARREN_CACHE_DIR are passed
// through to the server.

import assert from 'node:assert/strict';
import { spawn } from 'node:child_process';
import { mkdtempSync, readFileSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';

const BIN = process.env.WARREN_BIN;
assert.ok(BIN, 'set WARREN_BIN to the warren binary');

// Start a server with `args` after the common ones; resolves once its API listens,
// to { url, creds, stderr(), stop() }.
export async function startServer(args = []) {
  const dataDir = mkdtempSync(join(tmpdir(), 'warren-compat-'));
  let stderr = '';
  const child = spawn(BIN, [
    'server',
    '--data-dir', dataDir,
    '--api-addr', '127.0.0.1:0',
    '--gateway-addr', '127.0.0.1:0',
    '--default-image', 'busybox',
    ...args,
  ], { stdio: ['ignore', 'inherit', 'pipe'] });
  const url = await new Promise((resolve, reject) => {
    const timer = setTimeout(() => reject(new Error(`server did not start:\n${stderr}`)), 120_000);
    child.stderr.on('data', (chunk) => {
      stderr += chunk.toString();
      // Whole lines only: a chunk may end in the middle of the address.
      const m = stderr.match(/^warren: api listening on (http:\/\/\S+)\n/m);
      if (m) {
        clearTimeout(timer);
        resolve(m[1]);
      }
    });
    child.on('exit', (code) => reject(new Error(`server exited (${code}):\n${stderr}`)));
  });
  const creds = JSON.parse(readFileSync(join(dataDir, 'credentials.json'), 'utf8'));
  return {
    url,
    creds,
    stderr: () => stderr,
    async stop() {
      if (child.exitCode === null) {
        child.kill('SIGTERM');
        await new Promise((r) => child.once('exit', r));
      }
      rmSync(dataDir, { recursive: true, force: true });
    },
  };
}
