// Guest RAM shared with QEMU (memory-backend-file, share=on) as a Buffer.
import { native } from './native.js';

export interface MapFileOptions {
  /** Map read-write (default false). A read-only mapping crashes the process if written. */
  writable?: boolean;
}

/**
 * mmap(MAP_SHARED) the first `size` bytes of a file. The Buffer aliases the mapping; it is
 * unmapped when the Buffer is garbage-collected, so keep a reference while QEMU's RAM is used.
 */
export function mapFile(path: string, size: number, opts: MapFileOptions = {}): Buffer {
  return native().mapFile(path, size, opts.writable ?? false);
}

/** mmap(MAP_SHARED) `length` bytes of an fd at `offset` (the ft socket's bitmap); aliases as above. */
export function mapFd(fd: number, length: number, offset = 0, opts: MapFileOptions = {}): Buffer {
  if (!Number.isInteger(fd) || fd < 0) throw new TypeError(`mapFd: not a file descriptor (${fd})`);
  if (!Number.isInteger(length) || length <= 0) throw new RangeError(`mapFd: length must be a whole number > 0 (got ${length})`);
  return native().mapFd(fd, length, offset, opts.writable ?? false);
}
