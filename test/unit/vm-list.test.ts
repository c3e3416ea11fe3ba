// `agent --vms FILE`: what is accepted, and that every refusal names the entry and the fix.
import t from 'tap';
import { parseVmList } from '../../src/cli/vm-list.js';

t.test('a list of VMs', async (t) => {
  t.same(parseVmList('[{"vm":"a","argv":["q","-m","1G"]},{"vm":"b.2","argv":["q"]}]', 'f.json'), [
    { vm: 'a', argv: ['q', '-m', '1G'] },
    { vm: 'b.2', argv: ['q'] },
  ]);
  t.throws(() => parseVmList('{', 'f.json'), /--vms f.json: not JSON .*give a JSON array/);
  t.throws(() => parseVmList('[]', 'f.json'), /at least one VM/);
  t.throws(() => parseVmList('{"vm":"a"}', 'f.json'), /give a JSON array/);
  t.throws(() => parseVmList('[3]', 'f.json'), /entry 1: not an object/);
  t.throws(() => parseVmList('[{"argv":["q"]}]', 'f.json'), /entry 1: "vm" must be a string/);
  t.throws(() => parseVmList('[{"vm":"bad id","argv":["q"]}]', 'f.json'), /entry 1: invalid VM id "bad id"/);
  t.throws(() => parseVmList('[{"vm":"a","argv":["q"]},{"vm":"a","argv":["q"]}]', 'f.json'), /entry 2: VM "a" is listed twice/);
  t.throws(() => parseVmList('[{"vm":"a","argv":[]}]', 'f.json'), /entry 1 \(a\): "argv" must be a non-empty array of strings/);
  t.throws(() => parseVmList('[{"vm":"a","argv":["q",1]}]', 'f.json'), /"argv" must be a non-empty array of strings/);
});
