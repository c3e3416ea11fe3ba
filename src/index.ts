// Public API of the migsafe package.
export * from './kernel/native.js';
