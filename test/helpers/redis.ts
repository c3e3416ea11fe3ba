// A redis-server of the test's own: loopback, free port, private directory, stopped at teardown.
import { mkdtempSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import type { Test } from 'tap';
import { connectRedis, startRedisServer, type RedisServerHandle } from '../../src/store/redis-server.js';

export async function testRedis(t: Test, appendfsync: 'always' | 'everysec' = 'always'): Promise<RedisServerHandle> {
  const dir = mkdtempSync(join(tmpdir(), 'migsafe-redis-'));
  const srv = await startRedisServer({ dir, port: 0, appendfsync });
  t.teardown(async () => {
    await srv.stop();
    // A test may have killed it with SIGKILL and started another on the same dir.
    rmSync(dir, { recursive: true, force: true });
  });
  return srv;
}

export function testClient(t: Test, url: string) {
  const r = connectRedis(url);
  t.teardown(() => r.disconnect());
  return r;
}
