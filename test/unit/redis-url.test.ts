// What --redis accepts, and the errors for what it does not.
import t from 'tap';
import { parseRedisTarget } from '../../src/store/redis-url.js';

t.same(parseRedisTarget('/run/redis.sock'), { kind: 'socket', path: '/run/redis.sock' });
t.same(parseRedisTarget('redis://127.0.0.1:6379/2'), { kind: 'url', url: 'redis://127.0.0.1:6379/2' });
t.same(parseRedisTarget('rediss://10.0.0.3:6380'), { kind: 'url', url: 'rediss://10.0.0.3:6380' });
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
t.throws(() => parseRedisTarget('localhost:6379'), /--redis localhost:6379: use redis:\/\/HOST:PORT, .*redis\+sentinel:\/\/.* or redis\+cluster:\/\//);
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
