// `--tls-dir` / `--tls-cert --tls-key --tls-ca` / `--tls-allow`: mutual TLS on the agents'
// control channel (src/ha/tls.ts), for `agent` and for `migrate`, which talks to an agent too.
import type { Argv } from 'yargs';
import { loadTls, type TlsConfig } from '../ha/tls.js';

export interface TlsArgs {
  'tls-dir'?: string;
  'tls-cert'?: string;
  'tls-key'?: string;
  'tls-ca'?: string;
  'tls-allow'?: string;
}

export function withTls<T>(y: Argv<T>) {
  return y
    .option('tls-dir', { type: 'string', describe: 'mutual TLS on the control channel: a directory with cert.pem, key.pem and ca.pem' })
    .option('tls-cert', { type: 'string', describe: "this side's certificate (PEM), signed by the --tls-ca" })
    .option('tls-key', { type: 'string', describe: "this side's private key (PEM; refused when every user may read it)" })
    .option('tls-ca', { type: 'string', describe: 'the CA (PEM) every peer certificate must be signed by' })
    .option('tls-allow', {
      type: 'string',
      describe: 'NAME,...: talk only to peers whose certificate has one of these names as CN or subjectAltName (default: any the CA signed)',
    })
    .check((a) => {
      tlsFromArgs(a as unknown as TlsArgs);
      return true;
    });
}

/** The TLS configuration the options name (files read and checked), or undefined without TLS. */
export function tlsFromArgs(a: TlsArgs): TlsConfig | undefined {
  const allow = a['tls-allow'] === undefined ? undefined : String(a['tls-allow']).split(',');
  if (allow && allow.every((s) => !s.trim())) throw new Error('--tls-allow needs at least one NAME');
  return loadTls({ dir: a['tls-dir'], cert: a['tls-cert'], key: a['tls-key'], ca: a['tls-ca'], allow });
}

export interface VmAllowArgs {
  'tls-allow-vm'?: string[];
}

/** `--tls-allow-vm VM=NAME,...` (agent): the only peers trusted with a VM. */
export function withVmAllow<T>(y: Argv<T>) {
  return y.option('tls-allow-vm', {
    type: 'string',
    array: true,
    describe: 'VM=NAME,...: only peers with one of these certificate names may ask about VM (migrate, prepare) or receive it in a migration; repeatable (default: anyone --tls-allow lets in)',
  });
}

/** The --tls-allow-vm lists by VM; errors name the option and the bad entry. */
export function vmAllowFromArgs(a: VmAllowArgs, tls: TlsConfig | undefined): Record<string, string[]> | undefined {
  const entries = a['tls-allow-vm'];
  if (!entries?.length) return undefined;
  if (!tls) throw new Error('--tls-allow-vm needs TLS (peers are known by their certificates): give --tls-dir DIR or --tls-cert, --tls-key and --tls-ca');
  const out: Record<string, string[]> = {};
  for (const e of entries) {
    const m = /^([^=\s]+)=(.+)$/.exec(String(e));
    const names = m ? m[2]!.split(',').map((s) => s.trim()).filter(Boolean) : [];
    if (!m || names.length === 0) throw new Error(`--tls-allow-vm ${String(e)}: give VM=NAME[,NAME...], e.g. --tls-allow-vm web1=operator,host-b`);
    if (out[m[1]!]) throw new Error(`--tls-allow-vm: VM ${m[1]} is given twice; list all its names in one VM=NAME,NAME`);
    out[m[1]!] = names;
  }
  return out;
}
