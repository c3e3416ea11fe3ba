// Which VM a key belongs to: only keys of migsafe's own layout, with a valid id, count (gc deletes by it).
import t from 'tap';
import { vmIdOfKey } from '../../src/store/fleet.js';
import { vmKeys } from '../../src/store/keys.js';

t.test('vmIdOfKey reads the hash tag of our keys only', async (t) => {
  const k = vmKeys('vm-1.a_b');
  for (const key of [k.vm, k.chunks(7), k.newBaseChunks(3), k.owner]) t.equal(vmIdOfKey(key), 'vm-1.a_b', key);
  t.equal(vmIdOfKey('migsafe:vm1:vm'), undefined, 'no hash tag');
  t.equal(vmIdOfKey('other:{vm1}:vm'), undefined, 'another prefix');
  t.equal(vmIdOfKey('migsafe:{-bad}:vm'), undefined, 'an id no VM may have');
  t.equal(vmIdOfKey('migsafe:{a}'), undefined, 'nothing after the tag');
});
