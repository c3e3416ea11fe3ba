// Directories only this user may enter: migsafe's state (its Redis and AOF) and run directories
// (guest RAM, QMP sockets). A name such as /dev/shm/migsafe-UID sits in a world-writable
// directory, so another user could make it first — with a symlink, or mode 0777 — and read guest
// RAM or plant sockets. So an existing directory is used only if it is a real directory, owned
// by this user, with mode 0700; a missing one is made so.
import { lstatSync, mkdirSync } from 'node:fs';

export class UnsafeDirectoryError extends Error {}

/**
 * Makes `dir` (and missing parents) mode 0700, or checks the existing one; `what` names it in
 * the error ("--run-dir", "the state directory").
 */
export function ensurePrivateDir(dir: string, what: string): string {
  mkdirSync(dir, { recursive: true, mode: 0o700 });
  const st = lstatSync(dir);
  const uid = process.getuid?.() ?? 0;
  const fix = `remove it (\`rm -r ${dir}\`) so that migsafe makes it, or give another with ${what}`;
  if (st.isSymbolicLink()) throw new UnsafeDirectoryError(`${dir} (${what}) is a symbolic link: migsafe uses only a real directory of its own; ${fix}`);
  if (!st.isDirectory()) throw new UnsafeDirectoryError(`${dir} (${what}) is not a directory: ${fix}`);
  if (st.uid !== uid) {
    throw new UnsafeDirectoryError(`${dir} (${what}) belongs to uid ${st.uid}, not to this user (uid ${uid}): another user may have made it to read guest RAM; ${fix}`);
  }
  if ((st.mode & 0o777) !== 0o700) {
    throw new UnsafeDirectoryError(
      `${dir} (${what}) has mode ${(st.mode & 0o777).toString(8).padStart(3, '0')}, so other users may enter it: \`chmod 700 ${dir}\`, or ${fix}`,
    );
  }
  return dir;
}
