// `migsafe agent` under a service manager: SIGHUP re-reads the configuration (the --config file,
// with the environment and the command line over it, as at start) and applies what a running
// agent can change; SIGTERM (or SIGINT) stops it cleanly (Agent.shutdown: the round under way
// finishes, a final checkpoint, QEMU quit, the lease released) and exits 0.
import type { Agent, LiveSettings } from '../migration/agent.js';

type Args = Record<string, unknown>;
type Log = (msg: string) => void;

/** The options a running agent takes on at once, and what each becomes. */
const LIVE: Record<string, (v: unknown) => LiveSettings> = {
  interval: (v) => ({ intervalMs: v as number }),
  'max-pages': (v) => ({ maxPages: v as number }),
  'max-time': (v) => ({ maxTimeMs: v as number }),
  'fic-bandwidth': (v) => ({ ficBandwidth: (v as number) * 2 ** 20 }),
  'compact-every': (v) => ({ compactEvery: v as number }),
  'ric-interval': (v) => ({ ricIntervalMs: v as number }),
  'ric-event': (v) => ({ ricEvent: v as boolean }),
  'ric-dirty-pages': (v) => ({ ricDirtyPages: v as number }),
  // Heartbeats are set up per migration: these hold from the next one.
  'hb-interval': (v) => ({ hbIntervalMs: v as number }),
  'hb-timeout': (v) => ({ hbTimeoutMs: v as number }),
};

const NEXT_MIGRATION = new Set(['hb-interval', 'hb-timeout']);

/** Option keys as --help names them (yargs also keeps camelCase copies, '_', '$0', '--'). */
function optionKeys(a: Args): string[] {
  return Object.keys(a).filter((k) => /^[a-z][a-z0-9-]*$/.test(k));
}

const show = (v: unknown) => (v === undefined ? 'unset' : JSON.stringify(v));

/**
 * Re-parses the agent's command line (config file included) and applies the difference.
 * `current` is updated with what was applied; what needs a restart is logged and left as it runs.
 * `cliLive`: options the CLI itself applies (e.g. a log level: its setter), by option name.
 */
export async function reloadAgent(
  current: Args,
  agent: Agent,
  reparse: () => Promise<Args>,
  log: Log,
  cliLive: Record<string, (v: unknown) => void> = {},
): Promise<void> {
  const file = current.config as string | undefined;
  if (file === undefined) {
    log('SIGHUP: this agent was started without --config: nothing to re-read, nothing changed');
    return;
  }
  let next: Args;
  try {
    next = await reparse();
  } catch (e) {
    log(`SIGHUP: ${(e as Error).message}; nothing changed, the agent runs on as it was`);
    return;
  }
  const applied: string[] = [];
  const later: string[] = [];
  const restart: string[] = [];
  let settings: LiveSettings = {};
  for (const k of [...new Set([...optionKeys(current), ...optionKeys(next)])].sort()) {
    if (JSON.stringify(current[k]) === JSON.stringify(next[k])) continue;
    const change = `${k} ${show(current[k])} → ${show(next[k])}`;
    const live = LIVE[k];
    const cli = cliLive[k];
    if ((!live && !cli) || next[k] === undefined) {
      restart.push(change);
      continue;
    }
    if (live) settings = { ...settings, ...live(next[k]) };
    else cli!(next[k]);
    (NEXT_MIGRATION.has(k) ? later : applied).push(change);
    current[k] = next[k];
  }
  agent.retune(settings);
  const parts = [
    applied.length ? `applied: ${applied.join(', ')}` : '',
    later.length ? `applied from the next migration: ${later.join(', ')}` : '',
    restart.length ? `needs a restart (the agent runs on with the old value): ${restart.join(', ')}` : '',
  ].filter(Boolean);
  log(`SIGHUP: re-read ${file}: ${parts.length ? parts.join('; ') : 'no change'}`);
}

/**
 * Installs SIGHUP (reload) and resolves at the first SIGTERM or SIGINT; a second one exits at
 * once with status 1 (the clean stop is taking too long for the operator).
 */
export function agentSignals(onHup: () => Promise<void>, log: Log): Promise<NodeJS.Signals> {
  let reloading: Promise<void> = Promise.resolve();
  process.on('SIGHUP', () => {
    reloading = reloading.then(onHup).catch((e: Error) => log(`SIGHUP: ${e.message}`));
  });
  return new Promise((resolve) => {
    let stopping = false;
    const onStop = (sig: NodeJS.Signals) => {
      if (stopping) {
        log(`${sig} again: exiting now, without the clean stop`);
        process.exit(1);
      }
      stopping = true;
      resolve(sig);
    };
    process.on('SIGTERM', onStop);
    process.on('SIGINT', onStop);
  });
}
