// What --redis accepts, and the errors for what it does not.
import t from 'tap';
import { explainRedisError, parseRedisTarget, redisOptions } from '../../src/store/redis-url.js';

t.same(parseRedisTarget('/run/redis.sock'), { kind: 'socket', path: '/run/redis.sock' });
t.same(parseRedisTarget('redis://127.0.0.1:6379/2'), { kind: 'tcp', host: '127.0.0.1', port: 6379, db: 2, tls: false });
t.same(parseRedisTarget('rediss://10.0.0.3:6380'), { kind: 'tcp', host: '10.0.0.3', port: 6380, db: 0, tls: true });
t.same(parseRedisTarget('redis://app:p%40ss@h'), { kind: 'tcp', host: 'h', port: 6379, db: 0, tls: false, username: 'app', password: 'p@ss' });
t.same(parseRedisTarget('redis://:pw@[::1]:7000'), { kind: 'tcp', host: '::1', port: 7000, db: 0, tls: false, password: 'pw' });
t.same(parseRedisTarget('redis+sentinel://127.0.0.1:26379,127.0.0.1:26380/mymaster'), {
  kind: 'sentinel',
  sentinels: [
    { host: '127.0.0.1', port: 26379 },
    { host: '127.0.0.1', port: 26380 },
  ],
  name: 'mymaster',
  db: 0,
});
t.same(parseRedisTarget('redis+sentinel://:s%40cret@h1:1/m%20n/3'), {
  kind: 'sentinel',
  sentinels: [{ host: 'h1', port: 1 }],
  name: 'm n',
  password: 's@cret',
  db: 3,
});
t.same(parseRedisTarget('redis+sentinel://app:pw@h1:1/m'), { kind: 'sentinel', sentinels: [{ host: 'h1', port: 1 }], name: 'm', username: 'app', password: 'pw', db: 0 });
// A bad URL's error does not quote its password.
for (const [spec, why] of [['redis://:hunter2@h/x?y=1', /query parameters are not read/], ['redis://:hunter2@h/abc', /"\/abc" is not a database number/]] as const) {
  const msg = (() => {
    try {
      parseRedisTarget(spec);
      return '';
    } catch (e) {
      return (e as Error).message;
    }
  })();
  t.match(msg, why);
  t.notMatch(msg, /hunter2/, 'the password is masked in the error');
}

// Credentials from RedisAuth join the URL's; TLS material goes only to rediss://; sentinels get sentinelPassword.
t.same(redisOptions('redis://h:1', { username: 'u', password: 'p' }), { host: 'h', port: 1, db: 0, username: 'u', password: 'p' });
t.same(redisOptions('rediss://h:1', { tls: { ca: Buffer.from('CA') } }), { host: 'h', port: 1, db: 0, tls: { ca: Buffer.from('CA') } });
t.same(redisOptions('rediss://h:1'), { host: 'h', port: 1, db: 0, tls: {} }, 'rediss:// without --redis-ca: the system CAs');
t.same(redisOptions('redis+sentinel://:pw@s:1/m', { sentinelPassword: 'sp' }), { sentinels: [{ host: 's', port: 1 }], name: 'm', db: 0, password: 'pw', sentinelPassword: 'sp' });

// Errors name the fix, never the password.
t.match(explainRedisError(new Error('WRONGPASS invalid username-password pair or user is disabled.'), 'redis://:***@h:1'), /refused the credentials .*--redis-password-file FILE, MIGSAFE_REDIS_PASSWORD/);
t.match(explainRedisError(new Error('NOAUTH Authentication required.'), 'redis://h:1'), /wants a password .*--redis-password-file FILE or MIGSAFE_REDIS_PASSWORD/);
t.match(explainRedisError(new Error('self-signed certificate in certificate chain'), 'rediss://h:1'), /--redis-ca FILE/);
t.match(explainRedisError(new Error('806C8D5A627F0000:error:0A00045C:SSL routines:ssl3_read_bytes:tlsv13 alert certificate required:../deps/openssl/openssl/ssl/record/rec_layer_s3.c:1601:SSL alert number 116'), 'rediss://h:1'), /demands a client certificate: give --redis-cert FILE and --redis-key FILE/, 'TLS 1.3: the server asks for our certificate (it says "certificate" too)');
t.notMatch(explainRedisError(new Error('tlsv13 alert certificate required'), 'rediss://h:1'), /--redis-ca/, 'and not for a CA');
t.throws(() => parseRedisTarget('localhost:6379'), /--redis localhost:6379: use redis:\/\/HOST:PORT, .*redis\+sentinel:\/\/.* or redis\+cluster:\/\//);
t.same(parseRedisTarget('redis+cluster://app:p%40ss@h:1'), { kind: 'cluster', nodes: [{ host: 'h', port: 1 }], username: 'app', password: 'p@ss' });
t.same(redisOptions('redis+cluster://h:1,h:2', { username: 'u', password: 'p' }), { username: 'u', password: 'p' }, "a cluster's nodes get the credentials");
t.throws(() => parseRedisTarget('redis+sentinel://127.0.0.1:26379'), /cannot read it; the form is redis\+sentinel:\/\/.*PRIMARY_NAME/);
t.throws(() => parseRedisTarget('redis+sentinel://127.0.0.1/m'), /"127.0.0.1" is not HOST:PORT/);
t.throws(() => parseRedisTarget('redis+sentinel://a:1,b:99999/m'), /"b:99999" is not HOST:PORT/);
t.same(parseRedisTarget('redis+cluster://127.0.0.1:7000,127.0.0.1:7001'), {
  kind: 'cluster',
  nodes: [
    { host: '127.0.0.1', port: 7000 },
    { host: '127.0.0.1', port: 7001 },
  ],
});
t.same(parseRedisTarget('redis+cluster://:p%40ss@h:1/'), { kind: 'cluster', nodes: [{ host: 'h', port: 1 }], password: 'p@ss' });
t.throws(() => parseRedisTarget('redis+cluster://h:1/x'), /cannot read it; the form is redis\+cluster:\/\//);
t.throws(() => parseRedisTarget('redis+cluster://h:0'), /"h:0" is not HOST:PORT/);
