// The Redis layout of one VM's checkpoints. All keys of a VM share the hash tag {id},
// so a cluster keeps them on one shard and a Lua commit can touch them all.
//
//   migsafe:{id}:vm            hash    format, argv (JSON), ramBytes, pageSize, createdAt, cwd;
//                                      libvirtUri, libvirtDomain, libvirtXml for a libvirt domain
//   migsafe:{id}:seq           string  last version number handed out (INCR)
//   migsafe:{id}:committed     zset    committed versions (score = member = version)
//   migsafe:{id}:pending       set     versions being written; never read, cleaned up
//   migsafe:{id}:base          string  version folded into the base image (compaction), absent if none
//   migsafe:{id}:v:{n}         hash    version metadata (see VersionMeta; baseChunks when n is the base)
//   migsafe:{id}:v:{n}:chunks  list    frames of page records
//   migsafe:{id}:v:{n}:device  string  frame of the device state
//   migsafe:{id}:v:{n}:index   string  page index of v:{n}:chunks (page-index.ts; absent: older migsafe)
//   migsafe:{id}:base:chunks   list    frames of the base image (pages of version `base`)
//   migsafe:{id}:base:chunks:new:{n}  list  a base image of version n being written (compaction)
//   migsafe:{id}:base:index    string  page index of the base image (base:index:new:{n} while written)
//   migsafe:{id}:owner         string  the lease: "<host>|<token>", with a TTL (PX) (see lease-store.ts)
//   migsafe:{id}:epoch         string  the lease's fencing token counter (INCR on every new owner)
//   migsafe:{id}:agent         string  ADDR:PORT of the agent that runs the VM
//
// On a Redis Cluster a version's (and a base image's) frames are not in v:{n}:chunks but spread
// over one list per primary, migsafe:{id/v<n>/<t>}:chunks (base: {id/b<n>.<nonce>/<t>}), named
// in the version's metadata (stripes, baseStripes): see stripes.ts. Page indexes stay in the
// VM's slot, where the commit script checks them.

// Every frame names its VM, version and place (frame.ts), so a frame copied from elsewhere is
// refused. 1: frames unbound (refused); 2: bound frames, the base's frame count in its metadata.
export const STORE_FORMAT = 2;

const VM_ID = /^[A-Za-z0-9][A-Za-z0-9._-]{0,63}$/;

export function checkVmId(id: string): string {
  if (!VM_ID.test(id)) {
    throw new Error(`invalid VM id "${id}": use 1-64 letters, digits, '.', '_' or '-', starting with a letter or digit`);
  }
  return id;
}

export function vmKeys(id: string) {
  const p = `migsafe:{${checkVmId(id)}}:`;
  return {
    vm: `${p}vm`,
    seq: `${p}seq`,
    committed: `${p}committed`,
    pending: `${p}pending`,
    base: `${p}base`,
    baseChunks: `${p}base:chunks`,
    newBaseChunks: (n: number) => `${p}base:chunks:new:${n}`,
    baseIndex: `${p}base:index`,
    newBaseIndex: (n: number) => `${p}base:index:new:${n}`,
    version: (n: number) => `${p}v:${n}`,
    chunks: (n: number) => `${p}v:${n}:chunks`,
    device: (n: number) => `${p}v:${n}:device`,
    index: (n: number) => `${p}v:${n}:index`,
    /** Every key of version n. */
    versionAll: (n: number) => [`${p}v:${n}`, `${p}v:${n}:chunks`, `${p}v:${n}:device`, `${p}v:${n}:index`],
    owner: `${p}owner`,
    epoch: `${p}epoch`,
    agent: `${p}agent`,
    prefix: p,
  };
}

export type VmKeys = ReturnType<typeof vmKeys>;
