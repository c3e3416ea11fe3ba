#!/usr/bin/env python3
"""End-to-end checks of the migsafe QEMU patches against a real guest (TCG).

    python3 qemu-patches/tools/ft-test.py [--qemu BIN] [bitmap|migration|devices|net|all]

bitmap     the FT bitmap reports every page the guest wrote (full RAM compare with the VM
           paused after each harvest) and no phantom pages (a paused re-harvest is empty,
           reported pages did change)
migration  FIC rounds stay exact while a live migration of the same VM runs, and the
           migration still delivers every dirty page (destination RAM == source RAM)
devices    save-devices / load-devices round trip into a second QEMU that resumes the guest;
           xen-load-devices-state no longer aborts QEMU
net        filter-migsafe: datagrams the guest sends reach the host only after the checkpoint
           that covers them is committed; the tx eventfd fires
precopy    a long pre-copy of a write-heavy guest loses no write under TCG (patch 0006)
fill       post-copy whose source hangs (migrate-pause) and is killed: migsafe-postcopy-fill
           (patch 0007, out of band)
           refuses a wrong state and a short image, then places the missing pages from the
           source's RAM image; the migration completes and the same destination QEMU's guest
           goes on verifying its memory (not in `all`: run it by name)

Needs the patched binary (qemu-patches/build.sh --debian) and the test guest
(test/guest/build.sh). Exit status 0 when every selected check passed.
"""

from __future__ import annotations

import argparse
import os
import shutil
import signal
import socket
import sys
import tempfile
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from migsafe_ft import (PAGE, FTClient, FTError, console_lines, find_progress, launch,  # noqa: E402
                        wait_console)

REPO = os.path.abspath(os.path.join(os.path.dirname(__file__), "..", ".."))
CHUNK = 1 << 20


def log(*a) -> None:
    print("ft-test:", *a, flush=True)


def diff_pages(a, b) -> list[int]:
    """Indexes of the 4 KiB pages where a and b differ (1 MiB chunks first: fast)."""
    out = []
    n = len(a)
    for c in range(0, n, CHUNK):
        if a[c:c + CHUNK] != b[c:c + CHUNK]:
            for p in range(c, min(c + CHUNK, n), PAGE):
                if a[p:p + PAGE] != b[p:p + PAGE]:
                    out.append(p // PAGE)
    return out


class Shadow:
    """What a sidecar keeps: a copy of guest RAM brought up to date from harvested pages."""

    def __init__(self, ft: FTClient):
        self.ft = ft
        self.ram = ft.ram()
        self.copy = bytearray(self.ram.mem[:])
        self.reported = 0
        self.unchanged = 0

    def harvest(self, how: str) -> int:
        n = self.ft.harvest_eventfd() if how == "eventfd" else self.ft.harvest_socket()
        pages = self.ft.dirty_pages(self.ram)
        mem = self.ram.mem
        for pg in pages:
            o = pg * PAGE
            new = mem[o:o + PAGE]
            if new == self.copy[o:o + PAGE]:
                self.unchanged += 1
            self.copy[o:o + PAGE] = new
        self.reported += len(pages)
        return n

    def missed(self) -> list[int]:
        return diff_pages(self.ram.mem, self.copy)


def boot(qemu: str, wd: str, name: str, append: str, **kw):
    proc, qmp, paths = launch(qemu, REPO, wd, name, append=append, **kw)
    return proc, qmp, paths


def stop_qemu(proc, paths=None) -> None:
    if proc.poll() is None:
        proc.kill()
        proc.wait()
    if paths and paths["ram"].startswith("/dev/shm/"):
        try:
            os.unlink(paths["ram"])
        except FileNotFoundError:
            pass


# ------------------------------------------------------------------------------ bitmap

def test_bitmap(qemu: str, wd: str) -> None:
    proc, qmp, p = boot(qemu, wd, "bitmap", "migsafe.workload=wset migsafe.mib=32 migsafe.rate=50000")
    try:
        wait_console(p["serial"], lambda l: l["kind"] == "ready", 90)
        ft = FTClient(p["ft"])
        h = ft.connect()
        log(f"hello: {len(h['blocks'])} blocks, {h['total-pages']} bitmap pages, tcg={h['tcg']}")
        ft.start()
        sh = Shadow(ft)
        checks = 0
        for r in range(12):
            time.sleep(0.25)
            n = sh.harvest("eventfd" if r % 2 else "socket")        # VM running (stage 1)
            if r % 3 == 2:
                qmp.cmd("stop")
                sh.harvest("eventfd")                                # VM paused (stage 2)
                missed = sh.missed()
                if missed:
                    raise FTError(f"round {r}: {len(missed)} written pages not reported, e.g. {missed[:8]}")
                again = ft.harvest_socket()
                if again:
                    raise FTError(f"round {r}: paused re-harvest reported {again} pages (phantoms)")
                qmp.cmd("cont")
                checks += 1
            log(f"round {r}: {n} dirty pages")
        frac = sh.unchanged / max(1, sh.reported)
        log(f"{checks} full compares exact; {sh.reported} pages reported, {sh.unchanged} "
            f"unchanged ({frac:.1%})")
        if sh.reported == 0:
            raise FTError("nothing reported while wset was writing")
        if frac > 0.25:
            raise FTError(f"phantom storm: {frac:.1%} of reported pages did not change")
        # threshold event: ask to be told after 64 dirty pages
        ft.call("threshold", pages=64, **{"poll-ms": 5})
        from migsafe_ft import wait_readable
        wait_readable(ft.threshold_fd, 5)
        os.eventfd_read(ft.threshold_fd)
        c = ft.call("count")["dirty"]
        log(f"threshold eventfd fired (count now {c} >= 64)")
        ft.call("threshold", pages=0)
        n0 = max_counter(p["serial"])
        line = wait_console(p["serial"], lambda l: l["kind"] == "progress" and int(l["counter"]) > n0
                            and l.get("verified") == "1", 10)
        log(f"guest still verifying its memory: {line}")
        log("bitmap: PASS")
    finally:
        stop_qemu(proc, p)


# --------------------------------------------------------------------------- migration

def test_migration(qemu: str, wd: str) -> None:
    app = "migsafe.workload=wset migsafe.mib=32 migsafe.rate=50000"
    src, sq, sp = boot(qemu, wd, "msrc", app)
    dst = None
    dp = None
    try:
        wait_console(sp["serial"], lambda l: l["kind"] == "ready", 90)
        dst, dq, dp = boot(qemu, wd, "mdst", app, ft=False, extra=["-incoming", "defer", "-S"])
        mport = free_port()
        dq.cmd("migrate-incoming", uri=f"tcp:127.0.0.1:{mport}")
        ft = FTClient(sp["ft"])
        ft.connect()
        ft.start()
        sh = Shadow(ft)
        # Slow enough, and a tiny downtime limit, so that the migration cannot converge during
        # the short pauses of FIC's stage 2: it must still be running when we check it.
        sq.cmd("migrate-set-parameters", **{"max-bandwidth": 16 << 20, "downtime-limit": 1})
        sq.cmd("migrate", uri=f"tcp:127.0.0.1:{mport}")
        rounds = 0
        t_end = time.time() + 8
        while time.time() < t_end:
            time.sleep(0.25)
            sh.harvest("eventfd")
            rounds += 1
            if rounds % 4 == 0:
                sq.cmd("stop")
                sh.harvest("eventfd")
                missed = sh.missed()
                if missed:
                    raise FTError(f"during migration: {len(missed)} pages missed, e.g. {missed[:8]}")
                sq.cmd("cont")
            st = sq.cmd("query-migrate")
            if st.get("status") not in ("active", "setup"):
                raise FTError(f"migration ended early: {st}")
        st = sq.cmd("query-migrate")
        ram = st.get("ram", {})
        log(f"{rounds} FIC rounds exact while migrating: {st['status']}, "
            f"{ram.get('transferred', 0) >> 20} MiB sent, {ram.get('dirty-sync-count')} dirty syncs")
        # finish: a final FIC checkpoint, then let the migration complete
        sq.cmd("stop")
        sh.harvest("eventfd")
        if sh.missed():
            raise FTError("final checkpoint missed pages")
        sq.cmd("migrate-set-parameters", **{"max-bandwidth": 1 << 30, "downtime-limit": 10000})
        deadline = time.time() + 60
        while sq.cmd("query-migrate")["status"] != "completed":
            if time.time() > deadline:
                raise FTError(f"migration did not complete: {sq.cmd('query-migrate')}")
            time.sleep(0.2)
        while dq.cmd("query-status")["status"] == "inmigrate":
            time.sleep(0.1)
        a = open(sp["ram"], "rb").read()
        b = open(dp["ram"], "rb").read()
        d = diff_pages(a, b)
        if d:
            raise FTError(f"migration lost {len(d)} dirty pages (e.g. {d[:8]}) with FT harvesting on")
        log("destination RAM == source RAM after migration with concurrent FT harvests")
        dq.cmd("cont")
        n0 = max_counter(dp["serial"])
        line = wait_console(dp["serial"], lambda l: l["kind"] == "progress" and int(l["counter"]) > n0 + 1
                            and l.get("verified") == "1", 30)
        log(f"destination guest runs and verifies its memory: counter {line['counter']}")
        log("migration: PASS")
    finally:
        stop_qemu(src, sp)
        if dst:
            stop_qemu(dst, dp)


def test_precopy(qemu: str, wd: str, seconds: float = 40.0) -> None:
    """Long pre-copy of a write-heavy guest, no FT: at the end, with the source stopped, the
    destination's RAM must equal the source's. Catches the TCG lost-write problem (TLB entries
    left write-fast after migration clears its dirty bits) that patch 0006 fixes."""
    app = "migsafe.workload=wset migsafe.mib=64 migsafe.rate=200000"
    src, sq, sp = boot(qemu, wd, "psrc", app, ft=False)
    dst = dp = None
    try:
        wait_console(sp["serial"], lambda l: l["kind"] == "ready", 90)
        dst, dq, dp = boot(qemu, wd, "pdst", app, ft=False, extra=["-incoming", "defer", "-S"])
        port = free_port()
        dq.cmd("migrate-incoming", uri=f"tcp:127.0.0.1:{port}")
        sq.cmd("migrate-set-parameters", **{"max-bandwidth": 64 << 20, "downtime-limit": 1})
        sq.cmd("migrate", uri=f"tcp:127.0.0.1:{port}")
        time.sleep(seconds)
        st = sq.cmd("query-migrate")
        sq.cmd("stop")
        sq.cmd("migrate-set-parameters", **{"max-bandwidth": 1 << 30, "downtime-limit": 10000})
        deadline = time.time() + 60
        while sq.cmd("query-migrate")["status"] != "completed":
            if time.time() > deadline:
                raise FTError(f"migration did not complete: {sq.cmd('query-migrate')}")
            time.sleep(0.2)
        while dq.cmd("query-status")["status"] == "inmigrate":
            time.sleep(0.1)
        d = diff_pages(open(sp["ram"], "rb").read(), open(dp["ram"], "rb").read())
        log(f"{seconds:.0f}s of pre-copy, {st.get('ram', {}).get('dirty-sync-count')} dirty syncs: "
            f"{len(d)} pages differ between source and destination")
        if d:
            raise FTError(f"migration lost writes to {len(d)} pages, e.g. {d[:8]}")
        log("precopy: PASS")
    finally:
        stop_qemu(src, sp)
        if dst:
            stop_qemu(dst, dp)


def mig_status(q) -> str:
    return q.cmd("query-migrate").get("status", "none")


def test_fill(qemu: str, wd: str) -> None:
    """V-Recover's live recovery at the destination: the source dies in post-copy, the
    destination's missing pages come from an image of the source's RAM (here: its RAM file,
    which a killed QEMU leaves behind; migsafe uses the final FIC checkpoint)."""
    app = "migsafe.workload=wset migsafe.mib=96 migsafe.rate=100000"
    src, sq, sp = boot(qemu, wd, "fsrc", app, ft=False)
    dst = dp = None
    try:
        wait_console(sp["serial"], lambda l: l["kind"] == "progress" and l.get("verified") == "1", 120)
        dst, dq, dp = boot(qemu, wd, "fdst", app, ft=False, extra=["-incoming", "defer"], oob=True)
        caps = [{"capability": "postcopy-ram", "state": True}, {"capability": "events", "state": True}]
        sq.cmd("migrate-set-capabilities", capabilities=caps)
        dq.cmd("migrate-set-capabilities", capabilities=caps)
        port = free_port()
        dq.cmd("migrate-incoming", uri=f"tcp:127.0.0.1:{port}")
        # Slow: most of RAM is still at the source when it dies.
        sq.cmd("migrate-set-parameters", **{"max-bandwidth": 8 << 20, "max-postcopy-bandwidth": 8 << 20})
        sq.cmd("migrate", uri=f"tcp:127.0.0.1:{port}")
        time.sleep(1.0)
        sq.cmd("migrate-start-postcopy")
        deadline = time.time() + 60
        while dq.cmd("query-status")["status"] != "running":
            if time.time() > deadline:
                raise FTError(f"the destination never ran: {mig_status(sq)} / {mig_status(dq)}")
            time.sleep(0.1)
        n0 = max_counter(dp["serial"])
        time.sleep(1.5)
        if mig_status(dq) != "postcopy-active":
            raise FTError(f"post-copy over before the kill: {mig_status(dq)}")
        try:
            dq.cmd_oob("migsafe-postcopy-fill", path=sp["ram"])
            raise FTError("migsafe-postcopy-fill accepted while postcopy-active")
        except FTError as e:
            if "not postcopy-paused" not in str(e):
                raise
        log("refused while postcopy-active: 'not postcopy-paused'")
        image = os.path.join(wd, "image")
        pid = dst.pid
        # A hung source first (SIGSTOP: the stream stays open, nothing comes): the destination
        # breaks it itself with migrate-pause, out of band as migsafe does; then it dies.
        os.kill(src.pid, signal.SIGSTOP)
        time.sleep(0.5)
        if mig_status(dq) != "postcopy-active":
            raise FTError(f"destination left postcopy-active while the source only hung: {mig_status(dq)}")
        dq.cmd_oob("migrate-pause")
        deadline = time.time() + 30
        while mig_status(dq) != "postcopy-paused":
            if time.time() > deadline:
                raise FTError(f"destination not postcopy-paused after migrate-pause: {mig_status(dq)}")
            time.sleep(0.1)
        log("hung source: migrate-pause (exec-oob) took the destination to postcopy-paused")
        src.kill()
        src.wait()
        shutil.copyfile(sp["ram"], image)
        short = os.path.join(wd, "short")
        with open(short, "wb") as f:
            f.write(b"\0" * (1 << 20))
        try:
            dq.cmd_oob("migsafe-postcopy-fill", path=short)
            raise FTError("migsafe-postcopy-fill accepted a 1 MiB image")
        except FTError as e:
            if "too short" not in str(e):
                raise
        log("refused a short image: 'too short'")
        t0 = time.time()
        res = dq.cmd_oob("migsafe-postcopy-fill", path=image)
        ms = (time.time() - t0) * 1000
        # The guest RAM block is "mem" (the backend's id) on upstream machine types, and
        # "/objects/mem" (its QOM path) on RHEL-style ones that use canonical RAM block ids.
        guest_ram = [b for b in res["blocks"] if b["name"] in ("mem", "/objects/mem")]
        if not guest_ram:
            raise FTError("no guest RAM block ('mem' or '/objects/mem') in the fill's reply: "
                          + ", ".join(b["name"] for b in res["blocks"]))
        mem = guest_ram[0]
        log(f"filled in {ms:.0f} ms: " + ", ".join(
            f"{b['name']} present {b['present']} filled {b['filled']} restored {b.get('restored', '-')} "
            f"zeroed {b['zeroed']}{'' if b.get('copy', True) or b is mem else ' (no copy)'}"
            for b in res["blocks"]))
        if mem["filled"] == 0:
            raise FTError("nothing was missing at the destination: the check proved nothing")
        deadline = time.time() + 30
        while mig_status(dq) != "completed":
            if time.time() > deadline:
                raise FTError(f"migration not completed after the fill: {mig_status(dq)}")
            time.sleep(0.1)
        if dst.poll() is not None or dst.pid != pid:
            raise FTError("the destination QEMU died")
        line = wait_console(dp["serial"], lambda l: l["kind"] == "progress" and int(l["counter"]) > n0 + 3
                            and l.get("verified") == "1", 60)
        errs = [l for l in console_lines(dp["serial"]) if l["kind"] == "ERROR"]
        if errs:
            raise FTError(f"the guest found memory errors after the fill: {errs[:3]}")
        log(f"migration completed without its source; the same QEMU's guest verifies its memory: counter {line['counter']}")
        # The firmware blocks (pc.bios, option ROMs, ACPI blobs) the source had not sent must be
        # the real ones, not zeros: reset the guest and it has to boot again, from the BIOS the
        # fill put back. (-no-reboot turns even QMP's system_reset into a shutdown: set-action
        # makes a reset a reset again.)
        bios = os.path.join(wd, "bios.dump")
        dq.cmd("pmemsave", val=0xfffc0000, size=0x40000, filename=bios)
        tail = open(bios, "rb").read()[-16:]
        log(f"after the fill: reset vector bytes {tail.hex()}")
        boots = len([l for l in console_lines(dp["serial"]) if l["kind"] == "boot"])
        dq.cmd("set-action", reboot="reset")
        dq.cmd("system_reset")
        try:
            line = wait_console(dp["serial"], lambda l: l["kind"] == "boot", 90) if boots == 0 else None
        except FTError:
            raise FTError("no boot within 90 s of system_reset after the fill: the firmware blocks "
                          f"were not restored (reset vector {tail.hex()}; QEMU "
                          f"{'exited ' + str(dst.poll()) if dst.poll() is not None else 'still running'})")
        if boots:
            raise FTError(f"{boots} boot lines on the destination's console before the reset")
        log(f"system_reset after the fill: the guest boots again ({line.get('kernel', '?')}, uptime {line.get('uptime', '?')})")
        log("fill: PASS")
    finally:
        stop_qemu(src, sp)
        if dst:
            stop_qemu(dst, dp)


def free_port() -> int:
    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    port = s.getsockname()[1]
    s.close()
    return port


def max_counter(serial: str) -> int:
    c = [int(l["counter"]) for l in console_lines(serial) if l["kind"] == "progress"]
    return max(c) if c else 0


# ----------------------------------------------------------------------------- devices

def test_devices(qemu: str, wd: str) -> None:
    app = "migsafe.workload=kv migsafe.entries=20000"
    src, sq, sp = boot(qemu, wd, "dsrc", app)
    others = []
    try:
        wait_console(sp["serial"], lambda l: l["kind"] == "progress" and int(l["counter"]) >= 2, 90)
        ft = FTClient(sp["ft"])
        ft.connect()
        sq.cmd("stop")
        state = os.path.join(wd, "devices.state")
        with open(state, "wb+") as f:
            r = ft.call("save-devices", fds=[f.fileno()])
        size = os.path.getsize(state)
        if size < 1024:
            raise FTError(f"device state is only {size} bytes")
        ram_copy = f"/dev/shm/migsafe-ft-test-{os.getpid()}-restore"
        shutil.copyfile(sp["ram"], ram_copy)
        counter = max_counter(sp["serial"])
        log(f"saved {size} bytes of device state ({r}); guest counter {counter}; source killed")
        stop_qemu(src, sp)

        # restore into a fresh QEMU on the RAM copy: load-devices, cont, the guest goes on
        dst, dq, dp = boot(qemu, wd, "drst", app, ram_file=ram_copy, extra=["-S"])
        others.append((dst, dp))
        ft2 = FTClient(dp["ft"])
        with open(state, "rb") as f:
            ft2.call("load-devices", fds=[f.fileno()])
        dq.cmd("cont")
        line = wait_console(dp["serial"], lambda l: l["kind"] == "progress", 30)
        first = int(line["counter"])
        if first not in (counter, counter + 1):
            raise FTError(f"restored guest resumed at counter {first}, expected {counter} or {counter + 1}")
        line = wait_console(dp["serial"], lambda l: l["kind"] == "progress" and int(l["counter"]) >= first + 2
                            and l.get("verified") == "1", 30)
        log(f"restored guest resumed at {first}, now {line['counter']}, memory verified")
        if dst.poll() is not None:
            raise FTError("restored QEMU exited")

        # the stock command, fixed: xen-load-devices-state no longer aborts on the yank assertion
        dq.cmd("stop")
        dq.cmd("xen-save-devices-state", filename=state + ".xen", live=False)
        dq.cmd("xen-load-devices-state", filename=state + ".xen")
        time.sleep(0.5)
        if dst.poll() is not None:
            raise FTError(f"QEMU exited after xen-load-devices-state: {open(dp['log']).read()[-500:]}")
        dq.cmd("cont")
        n = int(line["counter"])
        wait_console(dp["serial"], lambda l: l["kind"] == "progress" and int(l["counter"]) > n + 1, 30)
        log("xen-save/xen-load-devices-state round trip: QEMU alive, guest running")
        log("devices: PASS")
    finally:
        stop_qemu(src, sp)
        for pr, pp in others:
            stop_qemu(pr, pp)


# --------------------------------------------------------------------------------- net

def test_net(qemu: str, wd: str) -> None:
    rx = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    rx.bind(("127.0.0.1", 0))
    rx.setblocking(False)
    port = rx.getsockname()[1]
    app = (f"migsafe.workload=udp migsafe.pps=20 migsafe.ip=10.0.2.15/24 migsafe.gw=10.0.2.2 "
           f"migsafe.peer=10.0.2.2:{port}")
    extra = ["-netdev", "user,id=n0", "-device", "virtio-net-pci,netdev=n0",
             "-object", "filter-migsafe,id=oc,netdev=n0"]
    proc, qmp, p = boot(qemu, wd, "net", app, extra=extra)

    def drain() -> list[int]:
        got = []
        while True:
            try:
                data = rx.recv(2048)
            except BlockingIOError:
                return got
            for w in data.decode(errors="replace").split():
                if w.startswith("counter="):
                    got.append(int(w[8:]))

    try:
        wait_console(p["serial"], lambda l: l["kind"] == "progress" and int(l["counter"]) >= 20, 90)
        ft = FTClient(p["ft"])
        ft.connect()
        if ft.net_tx_fd is None:
            raise FTError("hello did not hand out the net tx eventfd")
        time.sleep(1)
        leaked = drain()
        if leaked:
            raise FTError(f"{len(leaked)} datagrams passed the filter with no commit: {leaked[:5]}")
        os.eventfd_read(ft.net_tx_fd)          # the guest sent while held: it fired
        log(f"held: nothing reached the host, tx eventfd fired; {ft.call('net-status')}")
        last_released = 0
        for k in range(1, 5):
            qmp.cmd("stop")                     # stage 2 of checkpoint k
            # The guest stores its counter in RAM before sending the datagram that carries it,
            # so with the VM paused no datagram sent so far has a counter above the record's.
            sent_upto = find_progress(open(p["ram"], "rb").read())
            if sent_upto is None:
                raise FTError("no progress record in guest RAM")
            b = ft.call("net-barrier", checkpoint=k)
            qmp.cmd("cont")
            time.sleep(1.0)                      # the guest keeps sending, held for k+1
            if drain():
                raise FTError(f"datagrams released before checkpoint {k} committed")
            c = ft.call("net-commit", checkpoint=k)
            time.sleep(0.3)
            got = drain()
            bad = [x for x in got if x > sent_upto]
            if bad:
                raise FTError(f"commit {k} released datagrams sent after its barrier: {bad[:5]} > {sent_upto}")
            log(f"checkpoint {k}: barrier claimed {b['claimed']}, commit released {c['released']}, "
                f"host got {len(got)} datagrams (counters {min(got) if got else '-'}..{max(got) if got else '-'}"
                f" <= {sent_upto})")
            if got and last_released and min(got) != last_released + 1:
                raise FTError(f"commit {k}: datagrams {last_released + 1}..{min(got) - 1} lost")
            if got and sorted(got) != list(range(min(got), max(got) + 1)):
                raise FTError(f"commit {k}: released datagrams not contiguous: {got}")
            if got:
                last_released = max(got)
        if last_released == 0:
            raise FTError("no datagram ever reached the host after commits")
        ft.call("net-hold", on=False)
        time.sleep(1.5)
        got = drain()
        if not got:
            raise FTError("hold off: nothing flows")
        log(f"hold off: {len(got)} datagrams flowed freely")
        log("net: PASS")
    finally:
        stop_qemu(proc, p)
        rx.close()


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--qemu", default=os.environ.get("MIGSAFE_QEMU") or os.path.join(
        os.environ.get("MIGSAFE_QEMU_PREFIX", os.path.join(REPO, ".cache", "qemu")), "bin", "qemu-system-x86_64"))
    ap.add_argument("--keep", action="store_true", help="keep the work directory")
    ap.add_argument("tests", nargs="*", default=["all"])
    a = ap.parse_args()
    tests = {"bitmap": test_bitmap, "migration": test_migration, "devices": test_devices, "net": test_net,
             "precopy": test_precopy, "fill": test_fill}
    sel = ["bitmap", "migration", "devices", "net", "precopy"] if a.tests == ["all"] else a.tests
    wd = tempfile.mkdtemp(prefix="migsafe-ft-test-")
    failed = []
    for name in sel:
        log(f"--- {name} ({a.qemu})")
        t0 = time.time()
        try:
            tests[name](a.qemu, os.path.join(wd, name))
        except Exception as e:  # report every test, then fail
            failed.append(name)
            log(f"{name}: FAIL: {e}")
        log(f"{name}: {time.time() - t0:.1f}s")
    if not a.keep and not failed:
        shutil.rmtree(wd, ignore_errors=True)
    else:
        log(f"work directory kept: {wd}")
    log("FAILED: " + ", ".join(failed) if failed else "all passed")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
