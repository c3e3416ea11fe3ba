// The demo of `migsafe demo-migrate` (src/cli/commands/demo-migrate.ts runs this file): a live
// migration that survives a killed source, on this machine with real processes. Three hosts are
// built as network namespaces (source, destination, store with Redis and a UDP peer); a Linux
// guest runs on the source under `migsafe agent` (FIC), is migrated to the destination
// (post-copy by default: RIC there), and while its pages are still split between the hosts the
// source's QEMU and agent are killed with SIGKILL. The destination agent detects it
// (heartbeats), holds the store lease and recovers the VM: in post-copy on the patched QEMU
// (qemu-patches/, when built) LIVE — the same destination QEMU gets its missing pages from the
// store and runs on, nothing rolls back; otherwise by restarting it from the store. The guest's
// own memory check and its UDP stream show it went on. Needs root (ip netns).
//
// It lives outside src/ because it builds its hosts and guest with the test helpers.
import { readFileSync } from 'node:fs';
import { join } from 'node:path';
import { parseArgs } from 'node:util';
import { setTimeout as sleep } from 'node:timers/promises';
import { gateNetdev } from '../src/ha/gate.js';
import { waitFor } from '../src/util/wait.js';
import * as hostsMod from '../test/helpers/hosts.js';
import * as guestMod from '../test/helpers/guest.js';
import * as patchedMod from '../test/helpers/patched-qemu.js';

export interface DemoMigrateArgs {
  mode: 'precopy' | 'postcopy';
  keep: boolean;
}

function say(s: string): void {
  process.stdout.write(`\n== ${s}\n`);
}

export async function demoMigrate(a: DemoMigrateArgs): Promise<void> {
  let qemu: string | undefined;
  if (a.mode === 'postcopy') {
    try {
      qemu = patchedMod.patchedQemu();
    } catch {
      process.stdout.write('(the patched QEMU is not built — bash qemu-patches/build.sh --debian — so no live recovery: stock QEMU, restart from the store)\n');
    }
  }
  guestMod.ensureGuestBuilt();
  if (a.keep) process.env.MIGSAFE_KEEP_CLUSTER = '1';
  say('Building three hosts (network namespaces + veth + bridge): source, destination, store (Redis, UDP peer)');
  const c = await hostsMod.createCluster();
  try {
    const serial = join(c.dir, 'serial.log');
    const argv = hostsMod.appendSerial(
      guestMod.guestQemuArgs({
        qemu,
        workload: 'udp',
        memMiB: 128,
        serialLog: serial,
        extraAppend: 'migsafe.pps=20',
        netdev: { netdev: gateNetdev(), ip: '192.168.77.2/24', gw: '192.168.77.1', peer: `${c.hosts.sto.ip}:${hostsMod.PEER_PORT}` },
      }),
    );
    process.stdout.write(`source ${c.hosts.src.ip}, destination ${c.hosts.dst.ip}, store ${c.redisUrl}\n`);
    c.startAgent('dst');
    c.startAgent('src', ['--interval', '600', '--vm', 'demo', '--', ...argv]);
    say('Booting the guest on the source; FIC checkpoints it into Redis, its packets leave only after each commit');
    await guestMod.waitForConsole(serial, (p) => p.verifiedCount >= 2, 180_000);
    await waitFor('a checkpoint', 60_000, () => ((c.status('src')?.vms[0]?.head ?? 0) > 0 ? true : undefined));
    process.stdout.write(`guest running, FIC version ${c.status('src')!.vms[0]!.head} committed\n`);
    say(`migsafe migrate --vm demo --to ${c.agents.dst!.addr} --mode ${a.mode}`);
    const mig = c.cli('src', ['migrate', '--vm', 'demo', '--to', c.agents.dst!.addr, '--redis', c.redisUrl, '--mode', a.mode, '--bandwidth', '6', '--postcopy-bandwidth', '6']);
    let postcopyPid = 0;
    if (a.mode === 'postcopy') {
      await waitFor('post-copy', 60_000, () => (c.status('dst')?.vms[0]?.role === 'postcopy-dst' ? true : undefined));
      postcopyPid = c.status('dst')!.vms[0]!.pid;
      await sleep(2000);
      process.stdout.write(`the VM runs at the destination, part of its memory still at the source; RIC rounds committed: ${c.status("dst")!.vms[0]!.rounds.filter((r) => r.kind === "ric").length}\n`);
    } else {
      await waitFor('pre-copy', 60_000, () => (c.status('src')?.vms[0]?.events.some((e) => e.includes('status active')) ? true : undefined));
      await sleep(1500);
    }
    say('kill -9 the source: its QEMU and its agent');
    const t0 = Date.now();
    for (const pid of hostsMod.qemuPidsIn(c.hosts.src)) process.kill(pid, 'SIGKILL');
    c.agents.src!.child.kill('SIGKILL');
    await mig;
    const st = await waitFor('the destination to recover', 120_000, () => {
      const s = c.status('dst')?.vms[0];
      return s?.role === 'owner' && s.recoveries.length ? s : undefined;
    });
    const rec = st.recoveries[st.recoveries.length - 1]!;
    if (/live/.test(rec.why) && st.pid === postcopyPid) {
      process.stdout.write(
        `recovered LIVE at the destination ${((rec.at - t0) / 1000).toFixed(1)} s after the kill: the same QEMU (pid ${st.pid}) runs on, ` +
          `its missing pages filled from version ${rec.fromVersion} in ${rec.ms.toFixed(0)} ms (${rec.why})\n`,
      );
    } else {
      process.stdout.write(`recovered at the destination from version ${rec.fromVersion}, ${((rec.at - t0) / 1000).toFixed(1)} s after the kill, QEMU pid ${st.pid} (${rec.why})\n`);
    }
    const mark = readFileSync(serial, 'latin1').length;
    say('The recovered guest checks its own memory and goes on');
    await guestMod.waitForConsole(serial, (_p, text) => guestMod.parseConsole(text.slice(mark)).verifiedCount >= 3, 120_000);
    const tail = guestMod.parseConsole(readFileSync(serial, 'latin1').slice(mark));
    for (const p of tail.progress.slice(0, 3)) process.stdout.write(`  ${p.raw}\n`);
    process.stdout.write(`memory errors: ${tail.errors.length}; QEMUs running: source ${hostsMod.qemuPidsIn(c.hosts.src).length}, destination ${hostsMod.qemuPidsIn(c.hosts.dst).length}\n`);
    const got = hostsMod.peerDatagrams(c.peerLog);
    process.stdout.write(`the UDP peer received ${got.length} datagrams, counters up to ${Math.max(0, ...got.map((d) => d.counter))}\n`);
    process.exitCode = tail.errors.length === 0 ? 0 : 1;
  } finally {
    await c.teardown();
    if (a.keep) process.stdout.write(`logs kept in ${c.dir}\n`);
  }
}

const { values } = parseArgs({
  options: { mode: { type: 'string', default: 'postcopy' }, keep: { type: 'boolean', default: false } },
});
if (values.mode !== 'precopy' && values.mode !== 'postcopy') {
  process.stderr.write(`demo-migrate: --mode must be precopy or postcopy, not "${values.mode}"\n`);
  process.exit(2);
}
await demoMigrate({ mode: values.mode, keep: values.keep === true });
