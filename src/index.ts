// Public API of the migsafe package: the page-delta kernel (docs/kernel.md).
export * from './kernel/index.js';
