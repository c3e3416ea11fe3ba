"""Minimal client of QEMU's migsafe-ft socket (qemu-patches/PROTOCOL.md), plus a QMP client
and a launcher for the test guest. Used by tools/ft-test.py; the sidecar proper lives in
src/ (TypeScript + addon). Standard library only (Python >= 3.10 for os.eventfd_*)."""

from __future__ import annotations

import array
import json
import mmap
import os
import socket
import struct
import subprocess
import time
from dataclasses import dataclass, field

PAGE = 4096
HDR_FIELDS = ("magic", "version", "seq", "dirty", "total_pages", "page_size", "threshold", "tracking")
MAGIC = 0x31504D4254464D53  # "MSFTBMP1"


class FTError(RuntimeError):
    pass


@dataclass
class Block:
    name: str
    ram_addr: int
    length: int
    bitmap_base: int
    shared: bool
    fd: int | None = None
    fd_offset: int = 0
    mem: mmap.mmap | None = None


@dataclass
class FTClient:
    path: str
    sock: socket.socket = field(init=False)
    hello: dict = field(init=False, default_factory=dict)
    blocks: list[Block] = field(init=False, default_factory=list)

    def __post_init__(self) -> None:
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_SEQPACKET)
        self.sock.connect(self.path)

    # -- transport ----------------------------------------------------------------------
    def request(self, cmd: str, fds: list[int] | None = None, **args) -> tuple[dict, list[int]]:
        msg = json.dumps({"cmd": cmd, **args}).encode()
        anc = [(socket.SOL_SOCKET, socket.SCM_RIGHTS, array.array("i", fds))] if fds else []
        self.sock.sendmsg([msg], anc)
        data, rfds, _flags, _addr = socket.recv_fds(self.sock, 65536, 64)
        if not data:
            raise FTError("migsafe-ft closed the connection")
        reply = json.loads(data)
        if "error" in reply:
            for fd in rfds:
                os.close(fd)
            raise FTError(f"{cmd}: {reply['error']}")
        return reply, rfds

    def call(self, cmd: str, fds: list[int] | None = None, **args) -> dict:
        reply, rfds = self.request(cmd, fds, **args)
        for fd in rfds:
            os.close(fd)
        return reply

    # -- session ------------------------------------------------------------------------
    def connect(self) -> dict:
        h, fds = self.request("hello")
        self.hello = h
        self.fds = fds
        self.bitmap = mmap.mmap(fds[h["bitmap-fd"]], h["bitmap-size"])
        self.harvest_fd = fds[h["harvest-fd"]]
        self.done_fd = fds[h["done-fd"]]
        self.threshold_fd = fds[h["threshold-fd"]]
        self.net_tx_fd = fds[h["net-tx-fd"]] if "net-tx-fd" in h else None
        self.total_pages = h["total-pages"]
        for b in h["blocks"]:
            blk = Block(b["name"], b["ram-addr"], b["length"], b["bitmap-base"], b["shared"])
            if "fd" in b:
                blk.fd = fds[b["fd"]]
                blk.fd_offset = b["fd-offset"]
                blk.mem = mmap.mmap(blk.fd, blk.length, offset=blk.fd_offset)
            self.blocks.append(blk)
        return h

    def header(self) -> dict:
        vals = struct.unpack_from("<8Q", self.bitmap, 0)
        return dict(zip(HDR_FIELDS, vals))

    def start(self) -> dict:
        return self.call("start")

    def harvest_socket(self) -> int:
        return self.call("harvest")["dirty"]

    def harvest_eventfd(self, timeout: float = 10.0) -> int:
        """The fast path: write the harvest eventfd, wait on the done eventfd."""
        seq = self.header()["seq"]
        os.eventfd_write(self.harvest_fd, 1)
        wait_readable(self.done_fd, timeout)
        os.eventfd_read(self.done_fd)
        h = self.header()
        if h["seq"] != seq + 1:
            raise FTError(f"harvest seq {h['seq']} after {seq}")
        return h["dirty"]

    def dirty_pages(self, blk: Block) -> list[int]:
        """Pages of `blk` set in the bitmap by the last harvest."""
        hdr = self.hello["bitmap-header"]
        words = (blk.length // PAGE + 63) // 64
        raw = self.bitmap[hdr + blk.bitmap_base // 8: hdr + blk.bitmap_base // 8 + words * 8]
        out = []
        for w, (word,) in enumerate(struct.iter_unpack("<Q", raw)):
            while word:
                low = word & -word
                out.append(w * 64 + low.bit_length() - 1)
                word ^= low
        return out

    def ram(self) -> Block:
        """The guest RAM block with an fd (memory-backend-file/memfd, share=on)."""
        cands = [b for b in self.blocks if b.mem is not None]
        if not cands:
            raise FTError("no shared RAM block with an fd: start QEMU with share=on")
        return max(cands, key=lambda b: b.length)

    def close(self) -> None:
        self.sock.close()


def wait_readable(fd: int, timeout: float) -> None:
    import select
    r, _, _ = select.select([fd], [], [], timeout)
    if not r:
        raise FTError(f"fd {fd} not readable within {timeout}s")


class QMP:
    def __init__(self, path: str, timeout: float = 30.0, oob: bool = False):
        deadline = time.time() + timeout
        while True:
            try:
                self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
                self.sock.connect(path)
                break
            except OSError:
                if time.time() > deadline:
                    raise
                time.sleep(0.05)
        self.f = self.sock.makefile("rwb")
        self.events: list[dict] = []
        json.loads(self.f.readline())
        if oob:
            self.cmd("qmp_capabilities", enable=["oob"])
        else:
            self.cmd("qmp_capabilities")
        self.seq = 0

    def cmd(self, name: str, **args) -> object:
        """In-band command; with oob=True, cmd_oob sends exec-oob (answered by id)."""
        self.f.write(json.dumps({"execute": name, "arguments": args}).encode() + b"\n")
        self.f.flush()
        return self._reply(name, None)

    def cmd_oob(self, name: str, **args) -> object:
        self.seq += 1
        mid = f"oob-{self.seq}"
        self.f.write(json.dumps({"exec-oob": name, "arguments": args, "id": mid}).encode() + b"\n")
        self.f.flush()
        return self._reply(name, mid)

    def _reply(self, name: str, mid: str | None) -> object:
        while True:
            msg = json.loads(self.f.readline())
            if "event" in msg:
                self.events.append(msg)
                continue
            if mid is not None and msg.get("id") != mid:
                continue
            if "error" in msg:
                raise FTError(f"QMP {name}: {msg['error']}")
            return msg["return"]


def guest_paths(repo: str) -> tuple[str, str]:
    out = os.path.join(repo, "test", "guest", "out")
    k, i = os.path.join(out, "vmlinuz"), os.path.join(out, "initrd.img")
    if not (os.path.exists(k) and os.path.exists(i)):
        raise FTError(f"no test guest in {out}: run bash test/guest/build.sh")
    return k, i


def launch(qemu: str, repo: str, workdir: str, name: str, *, mem_mib: int = 256,
           append: str = "", ft: bool = True, extra: list[str] | None = None,
           ram_file: str | None = None, kernel: bool = True,
           oob: bool = False) -> tuple[subprocess.Popen, QMP, dict]:
    """Start QEMU (TCG) on a shared RAM file with QMP and (optionally) migsafe-ft."""
    os.makedirs(workdir, exist_ok=True)
    paths = {
        "ram": ram_file or f"/dev/shm/migsafe-ft-test-{os.getpid()}-{name}",
        "qmp": os.path.join(workdir, f"{name}.qmp"),
        "ft": os.path.join(workdir, f"{name}.ft"),
        "serial": os.path.join(workdir, f"{name}.serial"),
        "log": os.path.join(workdir, f"{name}.log"),
    }
    args = [qemu, "-accel", "tcg", "-machine", "pc,memory-backend=mem", "-nodefaults",
            "-no-user-config", "-m", f"{mem_mib}M", "-smp", "1", "-display", "none",
            "-serial", f"file:{paths['serial']}", "-no-reboot",
            "-object", f"memory-backend-file,id=mem,size={mem_mib}M,mem-path={paths['ram']},share=on",
            "-qmp", f"unix:{paths['qmp']},server=on,wait=off"]
    if kernel:
        k, i = guest_paths(repo)
        args += ["-kernel", k, "-initrd", i,
                 "-append", f"console=ttyS0 quiet panic=-1 transparent_hugepage=never {append}"]
    if ft:
        args += ["-object", f"migsafe-ft,id=ft,path={paths['ft']}"]
    args += extra or []
    log = open(paths["log"], "wb")
    proc = subprocess.Popen(args, stdout=log, stderr=subprocess.STDOUT)
    try:
        qmp = QMP(paths["qmp"], oob=oob)
    except Exception:
        proc.kill()
        raise FTError(f"QEMU did not start: {open(paths['log']).read()}")
    return proc, qmp, paths


def console_lines(serial: str) -> list[dict]:
    out = []
    try:
        text = open(serial, "rb").read().decode("utf-8", "replace")
    except FileNotFoundError:
        return out
    # The guest may be writing right now: the last line counts only once it is complete.
    for line in text.replace("\r", "").split("\n")[:-1]:
        i = line.find("MIGSAFE ")
        if i < 0:
            continue
        words = line[i:].split()
        if len(words) < 2:
            continue
        fields = dict(w.split("=", 1) for w in words[2:] if "=" in w)
        out.append({"kind": words[1], **fields})
    return out


def wait_console(serial: str, pred, timeout: float = 60.0) -> dict:
    deadline = time.time() + timeout
    while time.time() < deadline:
        for line in console_lines(serial):
            if line["kind"] == "ERROR":
                raise FTError(f"guest reported an error: {line}")
            if pred(line):
                return line
        time.sleep(0.1)
    raise FTError(f"timed out waiting on {serial}; last lines: {console_lines(serial)[-3:]}")


PROGRESS_MAGIC = b"MIGSAFE-PROGRESS"
PROGRESS_CHECK = 0x9E3779B97F4A7C15


def find_progress(ram: bytes) -> int | None:
    """The test guest's progress counter from a RAM image (test/guest/README.md: a page-aligned
    record, magic + counter + counter^0x9E37..). Exact when the VM is paused."""
    found = set()
    i = ram.find(PROGRESS_MAGIC)
    while i >= 0:
        if i % PAGE == 0:
            counter, check = struct.unpack_from("<QQ", ram, i + 16)
            if counter ^ check == PROGRESS_CHECK:
                found.add(counter)
        i = ram.find(PROGRESS_MAGIC, i + 1)
    if len(found) > 1:
        raise FTError(f"several progress records disagree: {sorted(found)}")
    return found.pop() if found else None
