// pingExplained: a connection that fails says why (the socket's error, not ioredis' bare
// "Connection is closed."), with the fix; against real sockets on loopback.
import t from 'tap';
import { createServer, type Socket } from 'node:net';
import { connectRedis, freePort, pingExplained } from '../../src/store/redis-server.js';

t.test('a closed port: the refusal itself, not "Connection is closed."', async (t) => {
  const port = await freePort();
  const url = `redis://127.0.0.1:${port}`;
  const r = connectRedis(url);
  t.teardown(() => r.disconnect());
  await t.rejects(pingExplained(r, url), { message: new RegExp(`^cannot reach Redis at ${url}: connect ECONNREFUSED 127\\.0\\.0\\.1:${port}$`) });
});

t.test('rediss:// to a server that resets the handshake (one demanding a client certificate does): the client-certificate fix', async (t) => {
  const socks: Socket[] = [];
  const srv = createServer((s) => {
    socks.push(s);
    s.once('data', () => s.resetAndDestroy());
  });
  await new Promise<void>((res) => srv.listen(0, '127.0.0.1', res));
  t.teardown(() => new Promise<void>((res) => srv.close(() => res())));
  const url = `rediss://127.0.0.1:${(srv.address() as { port: number }).port}`;
  const r = connectRedis(url);
  t.teardown(() => r.disconnect());
  await t.rejects(pingExplained(r, url), { message: /^TLS to Redis at rediss:\/\/127\.0\.0\.1:\d+ failed \((read|write) ECONNRESET\): if the server demands a client certificate, give --redis-cert FILE and --redis-key FILE$/ });
  t.ok(socks.length >= 1, 'the client did reach the server');
});
