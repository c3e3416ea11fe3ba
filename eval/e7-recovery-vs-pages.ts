// E7 — V-Recover Fig. 17: recovery time vs checkpoint size. Drawn from E4's runs (no run of its
// own): for each migsafe recovery, the pages of the versions it read (every committed version,
// from `migsafe inspect`) against its recovery time.
import { machine, NotMeasured, ratio, table, type Experiment } from './common.js';
import { E4 } from './e4-recovery-vs-size.js';
import { PAPER_E7 } from './papers.js';

type VP = { version: number; pages: number; bytesStored: number };

export const E7: Experiment = {
  id: 'E7',
  title: 'Recovery time vs pages checkpointed',
  paper: 'V-Recover Fig. 17 (RIC: ~200 ms at 20 000 checkpointed pages)',
  command: 'npm run eval -- --only E4,E7 --sizes 256,1024,2048,4096',
  mergeKey: (r) => String(r.memMiB),
  async run(o, log) {
    // E7 is computed from E4's recoveries; run E4 here only when it is not part of this invocation.
    if (o.only.length && !o.only.includes('E4')) {
      log('E7: running E4 for its recoveries');
      return (await E4.run(o, log)).map((r) => ({ ...r, experiment: 'E7' }));
    }
    return [];
  },
  render(raw, all) {
    const src = (raw.length ? raw : all.get('E4') ?? []).filter((r) => r.method === 'migsafe eager' && Array.isArray(r.versionPages));
    const pts = src.map((r) => {
      const vp = r.versionPages as VP[];
      const pages = vp.reduce((a, v) => a + v.pages, 0);
      return { memMiB: r.memMiB as number, run: r.run as number, pages, versions: vp.length, recoveryMs: r.recoveryMs as number, loadMs: r.loadMs as number, usPerPage: ((r.recoveryMs as number) * 1000) / pages };
    });
    if (!pts.length) throw new NotMeasured('E4 did not run (E7 draws on its recoveries)');
    const paperUs = (PAPER_E7.recoveryMs * 1000) / PAPER_E7.pages;
    const rows = pts.map((p) => [p.memMiB, p.run, p.versions, p.pages, p.recoveryMs.toFixed(0), p.loadMs.toFixed(0), `${PAPER_E7.recoveryMs} ms at ${PAPER_E7.pages} pages = ${paperUs.toFixed(1)} µs/page`, p.usPerPage.toFixed(1), ratio(p.usPerPage, paperUs)]);
    return {
      setting:
        `${machine()}; the recoveries of E4 (wset over 3/4 of RAM, FIC versions by \`migsafe attach\`, a first full version then incremental ones); pages = the sum of the pages of the committed versions the recovery read. ` +
        `The paper's Fig. 17 is RIC (the checkpoint at the source of a post-copy migration) of a write-intensive VM, where the checkpoint size is varied at a fixed VM; here the checkpoint size varies with guest size, and a migsafe recovery also starts a new QEMU. ` +
        `The paper states one point (~200 ms at 20 000 pages): the comparison is per page.`,
      table: table(['RAM MiB', 'run', 'versions', 'pages read', 'ours recovery ms', 'of it read+verify ms', 'paper', 'ours µs/page', 'ours ÷ paper (per page)'], rows),
      figure: {
        title: { text: 'E7: recovery time vs pages checkpointed', subtitle: 'ours: TCG, 2 cores (E4 runs); paper: V-Recover RIC, one stated point' },
        data: { values: [...pts.map((p) => ({ series: 'ours: migsafe recovery', pages: p.pages, ms: p.recoveryMs })), { series: 'paper: V-Recover RIC (Fig. 17)', pages: PAPER_E7.pages, ms: PAPER_E7.recoveryMs }] },
        mark: { type: 'point', filled: true, size: 60 },
        encoding: {
          x: { field: 'pages', type: 'quantitative', title: 'pages checkpointed (4 KiB pages)' },
          y: { field: 'ms', type: 'quantitative', title: 'recovery time (ms)' },
          color: { field: 'series', type: 'nominal', title: 'series' },
          shape: { field: 'series', type: 'nominal' },
        },
      },
      notes: [],
    };
  },
};
