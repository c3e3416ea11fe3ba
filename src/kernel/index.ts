// The kernel's one face: checked wrappers over the addon (docs/kernel.md). Everything outside
// src/kernel — the rest of the product and the package's users — comes through here or one of
// the wrapper files; only src/kernel/*.ts loads the raw addon (native.ts).
export {
  PAGE_SIZE,
  RECORD_HEADER_BYTES,
  RecordKind,
  type ApplyResult,
  type Codec,
  type CpuLevel,
  type EncodeBatchOptions,
} from './native.js';
export * from './page-delta.js';
export * from './codecs.js';
export * from './xbzrle-ts.js';
export * from './map-file.js';
