// What `--redis` names: one server (redis://, rediss://, a unix socket path), a primary found
// through Redis Sentinel (redis+sentinel://host:port,host:port/NAME), which ioredis follows
// across a failover: the connection asks the sentinels for the new primary and goes on there,
// or a Redis Cluster (redis+cluster://host:port,host:port: any of its nodes; ioredis finds the
// rest and follows MOVED/ASK). A VM's keys share one hash tag, so they live in one slot.
export type RedisTarget =
  | { kind: 'socket'; path: string }
  | { kind: 'url'; url: string }
  | { kind: 'sentinel'; sentinels: { host: string; port: number }[]; name: string; password?: string; db: number }
  | { kind: 'cluster'; nodes: { host: string; port: number }[]; password?: string };

const SENTINEL_FORM = 'redis+sentinel://[:PASSWORD@]HOST:PORT[,HOST:PORT...]/PRIMARY_NAME[/DB]';
const CLUSTER_FORM = 'redis+cluster://[:PASSWORD@]HOST:PORT[,HOST:PORT...]';

function hostPorts(list: string, bad: (why: string) => Error): { host: string; port: number }[] {
  return list.split(',').map((hp) => {
    const h = /^([^:,]+):(\d+)$/.exec(hp);
    if (!h || Number(h[2]) < 1 || Number(h[2]) > 65535) throw bad(`"${hp}" is not HOST:PORT`);
    return { host: h[1]!, port: Number(h[2]) };
  });
}

export function parseRedisTarget(spec: string): RedisTarget {
  if (spec.startsWith('/') || spec.startsWith('./')) return { kind: 'socket', path: spec };
  if (/^rediss?:\/\//.test(spec)) return { kind: 'url', url: spec };
  if (spec.startsWith('redis+cluster://')) {
    const bad = (why: string) => new Error(`--redis ${spec}: ${why}; the form is ${CLUSTER_FORM}`);
    const m = /^redis\+cluster:\/\/(?:(?:[^:@/]*):([^@/]*)@)?([^/]+)\/?$/.exec(spec);
    if (!m) throw bad('cannot read it');
    return { kind: 'cluster', nodes: hostPorts(m[2]!, bad), ...(m[1] ? { password: decodeURIComponent(m[1]) } : {}) };
  }
  if (!spec.startsWith('redis+sentinel://')) {
    throw new Error(`--redis ${spec}: use redis://HOST:PORT, rediss://HOST:PORT, a unix socket path, ${SENTINEL_FORM} or ${CLUSTER_FORM}`);
  }
  const bad = (why: string) => new Error(`--redis ${spec}: ${why}; the form is ${SENTINEL_FORM}`);
  const m = /^redis\+sentinel:\/\/(?:(?:[^:@/]*):([^@/]*)@)?([^/]+)\/([^/?]+)(?:\/(\d+))?$/.exec(spec);
  if (!m) throw bad('cannot read it');
  const sentinels = hostPorts(m[2]!, bad);
  return {
    kind: 'sentinel',
    sentinels,
    name: decodeURIComponent(m[3]!),
    ...(m[1] ? { password: decodeURIComponent(m[1]) } : {}),
    db: m[4] ? Number(m[4]) : 0,
  };
}
