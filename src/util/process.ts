// Whether a process id is alive (signal 0: nothing is sent).
export function processAlive(pid: number): boolean {
  try {
    process.kill(pid, 0);
    return true;
  } catch {
    return false;
  }
}

/**
 * The environment for a child that is not migsafe (QEMU, redis-server): without migsafe's
 * secrets (MIGSAFE_REDIS_PASSWORD and the like), which it has no use for.
 */
export function childEnv(env: NodeJS.ProcessEnv = process.env): NodeJS.ProcessEnv {
  return Object.fromEntries(Object.entries(env).filter(([k]) => !(k.startsWith('MIGSAFE_') && /PASSWORD|SECRET|TOKEN/.test(k))));
}
