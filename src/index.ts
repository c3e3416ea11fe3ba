// Public API of the migsafe package.
export * from './kernel/native.js';
// Page-delta kernel: XBZRLE deltas, batches, codecs, shared RAM mapping (docs/kernel.md).
export * from './kernel/page-delta.js';
export * from './kernel/codecs.js';
export * from './kernel/xbzrle-ts.js';
export * from './kernel/map-file.js';
