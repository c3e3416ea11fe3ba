// The structured logger (src/util/logger.ts): levels, the JSON shape the layers rely on (vm,
// host, version), and that secrets never reach the output. Lines are caught with a pino
// destination stream of our own.
import t from 'tap';
import { createLogger, maskSecrets, parseLogLevel, type LogLevel } from '../../src/util/logger.js';

function capture(level: LogLevel = 'info', pretty = false) {
  const raw: string[] = [];
  const log = createLogger({ level, pretty, destination: { write: (s: string) => void raw.push(s) } });
  return { log, raw, json: () => raw.join('').split('\n').filter(Boolean).map((l) => JSON.parse(l) as Record<string, unknown>) };
}

t.test('level filtering: below the level nothing is written; the level can change', async (t) => {
  const c = capture('warn');
  c.log.debug('d');
  c.log.info('i');
  c.log.warn('w');
  c.log.error('e');
  t.same(c.json().map((l) => [l.level, l.msg]), [['warn', 'w'], ['error', 'e']]);
  c.log.level = 'debug';
  c.log.debug('d2');
  t.equal(c.json().at(-1)!.msg, 'd2', 'a lowered level lets debug through');
  const s = capture('silent');
  s.log.fatal('f');
  t.equal(s.raw.length, 0, 'silent writes nothing, not even fatal');
});

t.test('JSON shape: a VM child carries vm (and host), a round line carries version', async (t) => {
  const c = capture();
  const vmLog = c.log.child({ host: 'h1' }).child({ vm: 'c1' });
  vmLog.info({ version: 7, pages: 3 }, 'version 7 committed');
  const [l] = c.json();
  t.match(l, { level: 'info', host: 'h1', vm: 'c1', version: 7, pages: 3, msg: 'version 7 committed' });
  t.type(l!.time, 'string', 'an ISO time');
  t.ok(!Number.isNaN(Date.parse(String(l!.time))), 'that parses');
  t.notOk('pid' in l! || 'hostname' in l!, 'no pid/hostname noise');
});

t.test('redaction: passwords in URLs and secret fields do not reach the output', async (t) => {
  const c = capture();
  c.log.info(
    { redis: 'redis://:hunter2@127.0.0.1:6379/0', store: 'redis+sentinel://admin:s3cr3t@127.0.0.1:26379/m', password: 'pw1', token: 'tk1', nested: { key: 'k1' } },
    'store redis://:hunter2@127.0.0.1:6379 and redis+sentinel://:s3cr3t@127.0.0.1:26379/m, ?password=qq9',
  );
  const text = c.raw.join('');
  for (const secret of ['hunter2', 's3cr3t', 'pw1', 'tk1', 'k1', 'qq9']) t.notMatch(text, secret, `${secret} is gone`);
  const [l] = c.json();
  t.equal(l!.redis, 'redis://:***@127.0.0.1:6379/0', 'a URL field keeps its host, loses its password');
  t.equal(l!.store, 'redis+sentinel://admin:***@127.0.0.1:26379/m', 'the user name stays');
  t.equal(l!.password, '[redacted]');
  t.same(l!.nested, { key: '[redacted]' }, 'one level down too');
  t.match(String(l!.msg), 'redis://:***@127.0.0.1:6379 and redis+sentinel://:***@127.0.0.1:26379/m, ?password=***');
  // An error message carrying the URL (cannot reach Redis at …) is masked the same way.
  c.log.fatal(new Error('cannot reach Redis at redis://:hunter2@127.0.0.1:1').message);
  t.notMatch(c.raw.join(''), 'hunter2');
});

t.test('maskSecrets leaves URLs without credentials alone', async (t) => {
  t.equal(maskSecrets('redis://127.0.0.1:6379/0'), 'redis://127.0.0.1:6379/0');
  t.equal(maskSecrets('/run/redis.sock'), '/run/redis.sock');
  t.equal(maskSecrets('redis://user@h:1'), 'redis://***@h:1', 'a bare user part may be a password: masked');
});

t.test('pretty lines: host and vm before the message, no JSON', async (t) => {
  const c = capture('info', true);
  c.log.child({ host: 'h1', vm: 'c1' }).warn({ version: 3 }, 'round failed');
  const line = c.raw.join('');
  t.match(line, /^\[\d\d:\d\d:\d\d\.\d{3}\] WARN: h1: c1: round failed\n$/);
});

t.test('parseLogLevel: the levels, and a clear error naming the source', async (t) => {
  t.equal(parseLogLevel('DEBUG'), 'debug');
  t.throws(() => parseLogLevel('loud', 'MIGSAFE_LOG_LEVEL'), /MIGSAFE_LOG_LEVEL "loud": use one of trace, debug, info, warn, error, fatal, silent/);
});
