// The pages of a file that hold data (not holes), without reading any: lseek(SEEK_DATA).
import { native, PAGE_SIZE } from './native.js';

/**
 * Indexes of the `pageSize` pages of `file` (an open fd, or a path) that are not wholly holes,
 * ascending. Rejects with the file and the failing call when it cannot be walked. An fd's file
 * offset is moved by the walk.
 */
export function dataPages(file: number | string, pageSize: number = PAGE_SIZE): Promise<Uint32Array> {
  if (typeof file === 'number') {
    if (!Number.isInteger(file) || file < 0) throw new RangeError(`dataPages: fd must be an integer >= 0, got ${file}`);
  } else if (typeof file !== 'string' || file === '') {
    throw new TypeError('dataPages: file must be an fd or a non-empty path');
  }
  if (!Number.isInteger(pageSize) || pageSize < 512 || pageSize > 2 ** 30 || (pageSize & (pageSize - 1)) !== 0) {
    throw new RangeError(`dataPages: pageSize must be a power of two in 512..2^30, got ${pageSize}`);
  }
  return native().dataPagesAsync(file, pageSize);
}
