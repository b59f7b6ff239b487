"""guestvm: run the handoff test guest (scripts/build-guest) or a base VM
(scripts/make-base) under QEMU and talk to it.

- QMP client (stdlib json + socket) with a reader thread: replies are matched
  by id, asynchronous events are kept with the host time they arrived.
- Host-stamped serial: QEMU connects ttyS0 to a unix socket this module
  listens on; a thread stamps each line with time.monotonic() and appends
  "<stamp> <line>" to a log file. heartbeat_gap() turns the "HB n" lines into
  the guest-visible pause (QEMU's own downtime figure is wrong on slow links).
- ttyS1 is the control port: go(mem=(rate, total), disk=(rate, total), seed)
  writes the "GO ..." line that starts the guest's workloads.
- Guest.from_base(BASEDIR, disk=...) starts a VM with exactly the base's
  command line; incoming="base" resumes it from BASEDIR/vm.mig, "defer"
  makes a migration destination. netns= runs QEMU inside `ip netns exec`.
- QEMU is killed when the Guest leaves its `with` block, on SIGTERM/SIGHUP/
  SIGINT after install_signal_cleanup(), and by PR_SET_PDEATHSIG if this
  process (more exactly: the thread that started QEMU) dies.

    from guestvm import Guest
    with Guest.from_base("/var/tmp/base", disk="/tmp/vm.img") as g:
        g.wait_running(60)
        g.go(mem=(4, 64), disk=(2, 32), seed=1)
        g.wait_serial("WORKLOAD START", 30)
"""

import ctypes
import hashlib
import json
import os
import re
import shlex
import shutil
import signal
import socket
import subprocess
import tempfile
import threading
import time

# Never a multiple of 256 KiB: QEMU < 9.0 under TCG loses guest stores during
# migration/dirty logging with such sizes (see DESIGN.md).
DEFAULT_MEM_KB = 262152
DEFAULT_APPEND = "console=ttyS0 panic=-1 root=/dev/vda"
VM_JSON_FORMAT = 2
# Guest RAM lives in a shared memory file (memory-backend-file,share=on) so the
# engine can read it during pre-copy (QEMU 7.2's own pre-copy cannot be held
# open); the RAM block is then called RAM_BACKEND_ID instead of pc.ram.
RAM_BACKEND_ID = "ram0"
HB_RX = re.compile(r"^HB (\d+)$")

# Migration capabilities that must be off for a plain, parseable stream
# (DESIGN.md): set to false when this QEMU knows them.
PLAIN_STREAM_CAPS_OFF = ("xbzrle", "compress", "multifd", "postcopy-ram",
                         "x-ignore-shared", "auto-converge", "release-ram",
                         "zero-copy-send", "background-snapshot")


class GuestError(Exception):
    pass


try:  # loaded here: the child between fork and exec must not call dlopen
    _libc = ctypes.CDLL("libc.so.6", use_errno=True)
except OSError:
    _libc = None


def _die_with_parent():
    """preexec_fn: QEMU gets SIGKILL if the thread that started it dies."""
    if _libc is not None:
        _libc.prctl(1, signal.SIGKILL)  # PR_SET_PDEATHSIG
    os.setpgrp()  # Ctrl-C on the terminal goes to us, not QEMU


_live = set()


def _kill_all_live():
    for g in list(_live):
        g.kill()


def install_signal_cleanup():
    """Turn SIGTERM/SIGHUP/SIGINT into SystemExit so `finally` blocks and
    context managers run and QEMU is always killed."""
    def handler(signum, _frame):
        _kill_all_live()
        raise SystemExit(128 + signum)
    for s in (signal.SIGTERM, signal.SIGHUP, signal.SIGINT):
        signal.signal(s, handler)


def file_sha256(path):
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 22), b""):
            h.update(chunk)
    return h.hexdigest()


def copy_sparse(src, dst):
    """Copy a disk image keeping holes (cp --sparse=always), via dst.part."""
    part = dst + ".part"
    r = subprocess.run(["cp", "--sparse=always", "--reflink=auto", src, part],
                       stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    if r.returncode != 0:
        raise GuestError(f"cannot copy {src} to {part}: "
                         + r.stderr.decode(errors="replace").strip())
    os.replace(part, dst)


# ------------------------------------------------------------------ QMP

class QMP:
    """QMP over a unix socket. A reader thread files replies by id and
    events (each with "host_time", time.monotonic() on arrival) in .events."""

    def __init__(self, path, timeout=120.0, alive=None):
        self.path = path
        self.timeout = timeout
        self.alive = alive or (lambda: True)
        self.sock = None
        self.events = []
        self._cond = threading.Condition()
        self._replies = {}
        self._next_id = 0
        self._closed = False
        self._reader = None
        self._send_lock = threading.Lock()

    def connect(self):
        deadline = time.monotonic() + self.timeout
        last = None
        while time.monotonic() < deadline:
            if not self.alive():
                raise GuestError("QEMU exited before its QMP socket came up")
            s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
            try:
                s.settimeout(self.timeout)
                s.connect(self.path)
                self.sock = s
                break
            except OSError as e:
                last = e
                s.close()
                time.sleep(0.05)
        if self.sock is None:
            raise GuestError(f"cannot connect to QMP socket {self.path}: {last}")
        f = self.sock.makefile("rb")
        try:
            greeting = json.loads(f.readline() or b"{}")
        except (OSError, ValueError) as e:
            raise GuestError(f"bad QMP greeting: {e}") from None
        if "QMP" not in greeting:
            raise GuestError(f"unexpected QMP greeting: {greeting}")
        self.sock.settimeout(None)
        self._reader = threading.Thread(target=self._read_loop, args=(f,),
                                        name="qmp-reader", daemon=True)
        self._reader.start()
        self.execute("qmp_capabilities")

    def _read_loop(self, f):
        try:
            for raw in f:
                try:
                    msg = json.loads(raw)
                except ValueError:
                    continue
                with self._cond:
                    if "event" in msg:
                        msg["host_time"] = time.monotonic()
                        self.events.append(msg)
                    elif "id" in msg:
                        self._replies[msg["id"]] = msg
                    self._cond.notify_all()
        except (OSError, ValueError):
            pass
        with self._cond:
            self._closed = True
            self._cond.notify_all()

    def execute(self, cmd, timeout=None, **args):
        with self._cond:
            self._next_id += 1
            mid = self._next_id
        msg = {"execute": cmd, "id": mid}
        if args:
            msg["arguments"] = args
        if self.sock is None:
            raise GuestError("QMP not connected")
        try:
            with self._send_lock:
                self.sock.sendall(json.dumps(msg).encode() + b"\n")
        except OSError as e:
            raise GuestError(f"QMP send failed: {e} (QEMU died?)") from None
        deadline = time.monotonic() + (timeout or self.timeout)
        with self._cond:
            while mid not in self._replies:
                if self._closed:
                    raise GuestError(f"QMP connection closed during {cmd} (QEMU died?)")
                left = deadline - time.monotonic()
                if left <= 0:
                    raise GuestError(f"timed out waiting for the QMP reply to {cmd}")
                self._cond.wait(min(left, 0.5))
            r = self._replies.pop(mid)
        if "error" in r:
            e = r["error"]
            raise GuestError(f"QMP {cmd} failed: {e.get('class')}: {e.get('desc')}")
        return r.get("return")

    def wait_event(self, name, timeout, since=None):
        """First event `name` that arrived at or after host time `since`
        (default: any time); raises GuestError on timeout or closed QMP."""
        deadline = time.monotonic() + timeout
        with self._cond:
            while True:
                for ev in self.events:
                    if ev["event"] == name and (since is None or ev["host_time"] >= since):
                        return ev
                if self._closed:
                    raise GuestError(f"QMP closed while waiting for event {name}")
                left = deadline - time.monotonic()
                if left <= 0:
                    raise GuestError(f"timed out after {timeout:g} s waiting for QMP event {name}")
                self._cond.wait(min(left, 0.5))

    def close(self):
        if self.sock:
            try:
                self.sock.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass
            self.sock.close()
            self.sock = None
        if self._reader:
            self._reader.join(timeout=2)
            self._reader = None


# --------------------------------------------------------------- serial

class _SerialReader(threading.Thread):
    """Accepts QEMU's connection on a listening unix socket and turns the
    byte stream into (time.monotonic(), line) records."""

    def __init__(self, listener, log_path, sink):
        super().__init__(name="serial-reader", daemon=True)
        self.listener = listener
        self.log_path = log_path
        self.sink = sink
        self.stop = threading.Event()
        self.conn = None

    def run(self):
        self.listener.settimeout(0.2)
        while not self.stop.is_set() and self.conn is None:
            try:
                self.conn, _ = self.listener.accept()
            except socket.timeout:
                continue
            except OSError:
                return
        if self.conn is None:
            return
        self.conn.settimeout(0.2)
        tail = b""
        with open(self.log_path, "a", encoding="utf-8", errors="replace") as log:
            while not self.stop.is_set():
                try:
                    data = self.conn.recv(65536)
                except socket.timeout:
                    continue
                except OSError:
                    break
                if not data:
                    break
                now = time.monotonic()
                parts = (tail + data).split(b"\n")
                tail = parts.pop()
                for p in parts:
                    line = p.decode("utf-8", "replace").rstrip("\r")
                    self.sink(now, line)
                    log.write(f"{now:.6f} {line}\n")
                log.flush()

    def close(self):
        self.stop.set()
        self.join(timeout=2)
        for s in (self.conn, self.listener):
            if s is not None:
                try:
                    s.close()
                except OSError:
                    pass


def _listen_unix(path):
    s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    s.bind(path)
    s.listen(1)
    return s


# --------------------------------------------------------- VM specs

def guest_dir_spec(guest_dir, mem_kb=DEFAULT_MEM_KB, accel=None, append_extra=""):
    """The VM description of a scripts/build-guest output directory."""
    guest_dir = os.path.abspath(guest_dir)
    spec = {
        "machine": "q35", "accel": accel or default_accel(), "cpu": default_cpu(),
        "mem_kb": mem_kb, "smp": 1, "ram": "shared",
        "kernel": os.path.join(guest_dir, "vmlinuz"),
        "initrd": os.path.join(guest_dir, "initramfs.cpio.gz"),
        "append": DEFAULT_APPEND + (" " + append_extra if append_extra else ""),
        "disk": {"file": os.path.join(guest_dir, "rootfs.img"), "format": "raw",
                 "interface": "virtio-blk-pci"},
    }
    for f in (spec["kernel"], spec["initrd"], spec["disk"]["file"]):
        if not os.path.isfile(f):
            raise GuestError(f"missing {f} (run scripts/build-guest {guest_dir})")
    return spec


def default_accel():
    return os.environ.get("HANDOFF_ACCEL") or os.environ.get("ACCEL") or "tcg"


def default_cpu():
    return os.environ.get("QEMU_CPU", "max")


def load_base(basedir):
    """vm.json of a base directory, with file names made absolute
    (kernel, initrd, disk.file, state.file)."""
    basedir = os.path.abspath(basedir)
    path = os.path.join(basedir, "vm.json")
    try:
        with open(path) as f:
            spec = json.load(f)
    except FileNotFoundError:
        raise GuestError(f"{path} not found (run scripts/make-base {basedir})") from None
    except ValueError as e:
        raise GuestError(f"{path}: bad JSON: {e}") from None
    if spec.get("format") != VM_JSON_FORMAT:
        raise GuestError(f"{path}: unknown format {spec.get('format')} (rebuild with scripts/make-base --force)")
    for k in ("kernel", "initrd"):
        spec[k] = os.path.join(basedir, spec[k])
    spec["disk"]["file"] = os.path.join(basedir, spec["disk"]["file"])
    spec["state"]["file"] = os.path.join(basedir, spec["state"]["file"])
    # the saved state only where a VM resumes from it (from_base): a destination
    # of receive --cache holds none (cache fetch-base --boot-only)
    for f in (spec["kernel"], spec["initrd"], spec["disk"]["file"]):
        if not os.path.isfile(f):
            raise GuestError(f"base {basedir} is incomplete: missing {f}")
    spec["basedir"] = basedir
    return spec


def qemu_command(spec, disk, serial_sock, ctl_sock, qmp_sock, disk_cache="writeback",
                 snapshot=False, incoming=None, paused=False, extra_args=(), ram_path=None):
    """QEMU's argument list for a VM spec. Everything that makes up the
    migrated machine comes from the spec, so a source and a destination
    started from the same spec are compatible; the rest is per instance."""
    if spec["mem_kb"] % 256 == 0:
        raise GuestError(f"RAM size {spec['mem_kb']} KiB is a multiple of 256 KiB; "
                         "TCG loses stores with such sizes (use e.g. 262152)")
    if disk_cache not in ("writeback", "none", "writethrough", "directsync", "unsafe"):
        raise GuestError(f"bad disk cache mode {disk_cache}")
    d = spec["disk"]
    drive = (f"if=none,id=disk0,file={disk.replace(',', ',,')},format={d['format']},"
             f"cache={disk_cache}"
             + (",snapshot=on" if snapshot else ""))
    machine = f"{spec['machine']},accel={spec['accel']}"
    ram = []
    if spec.get("ram") == "shared":
        if not ram_path:
            raise GuestError("a VM with shared RAM needs ram_path (a file in /dev/shm)")
        machine += f",memory-backend={RAM_BACKEND_ID}"
        ram = ["-object", f"memory-backend-file,id={RAM_BACKEND_ID},size={spec['mem_kb']}K,"
                          f"mem-path={ram_path},share=on"]
    cmd = [
        "qemu-system-x86_64",
        "-machine", machine, "-cpu", spec["cpu"], *ram,
        "-m", f"{spec['mem_kb']}K", "-smp", str(spec["smp"]),
        "-kernel", spec["kernel"], "-initrd", spec["initrd"],
        "-append", spec["append"],
        "-drive", drive,
        "-device", f"{d['interface']},drive=disk0,id=vd0",
        "-display", "none", "-nodefaults", "-no-reboot",
        "-chardev", f"socket,id=ser0,path={serial_sock}",
        "-serial", "chardev:ser0",
        "-chardev", f"socket,id=ctl,path={ctl_sock}",
        "-serial", "chardev:ctl",
        "-qmp", f"unix:{qmp_sock},server=on,wait=off",
    ]
    if paused:
        cmd.append("-S")
    if incoming == "base":
        cmd += ["-incoming", "exec:cat " + shlex.quote(spec["state"]["file"])]
    elif incoming:
        cmd += ["-incoming", incoming]
    return cmd + list(extra_args)


# ---------------------------------------------------------------- Guest

class Guest:
    """One QEMU running the test guest. Use as a context manager; QEMU is
    killed on exit, on signals (after install_signal_cleanup()) and, through
    PR_SET_PDEATHSIG, if this process dies.

    Guest(guest_dir, ...) boots a scripts/build-guest directory (its
    rootfs.img with snapshot=on unless disk= is given); Guest.from_base()
    starts a base VM; Guest(spec=...) any VM description."""

    def __init__(self, guest_dir=None, append_extra="", mem_kb=DEFAULT_MEM_KB,
                 accel=None, extra_args=(), keep_tmp=False, timeout=120.0, *,
                 spec=None, disk=None, disk_cache="writeback", snapshot=None,
                 netns=None, incoming=None, paused=False, serial_log=None, name="guest"):
        if spec is None:
            if guest_dir is None:
                raise GuestError("Guest needs guest_dir or spec")
            if mem_kb % 256 == 0:
                raise GuestError(f"RAM size {mem_kb} KiB is a multiple of 256 KiB; "
                                 "TCG loses stores with such sizes (use e.g. 262152)")
            spec = guest_dir_spec(guest_dir, mem_kb, accel, append_extra)
            if snapshot is None:
                snapshot = disk is None  # never write the built template
        else:
            spec = dict(spec)
            if accel:
                spec["accel"] = accel
        self.spec = spec
        self.guest_dir = os.path.dirname(spec["kernel"])
        self.mem_kb = spec["mem_kb"]
        self.accel = spec["accel"]
        self.disk = os.path.abspath(disk or spec["disk"]["file"])
        self.disk_cache = disk_cache
        self.snapshot = bool(snapshot)
        self.netns = netns
        self.incoming = incoming
        self.paused = paused
        self.extra_args = list(extra_args)
        self.keep_tmp = keep_tmp
        self.timeout = timeout
        self.name = name
        self.serial_log = serial_log
        self.tmp = None
        self.proc = None
        self.qmp_client = None
        self._serial = None
        self._ctl_listener = None
        self._ctl = None
        self.serial_lines = []  # (host monotonic time seen, line)
        self._wait_pos = 0      # wait_serial's cursor in serial_lines
        self._poll_pos = 0      # poll_serial's cursor
        self.t_start = self.t_running = None
        self.qmp_events = []

    @classmethod
    def from_base(cls, basedir, disk, incoming="base", netns=None, disk_cache="writeback",
                  paused=False, **kw):
        """A VM with the base's exact machine. incoming: "base" resumes from
        BASEDIR/vm.mig, "defer" waits for migrate-incoming, None cold-boots,
        anything else is a QEMU -incoming URI. disk must not be the base's
        own disk.img (copy it first: copy_sparse())."""
        spec = load_base(basedir)
        if disk is None:
            raise GuestError("from_base needs disk= (a copy of the base disk, see copy_sparse)")
        if os.path.realpath(disk) == os.path.realpath(spec["disk"]["file"]) and incoming is not None:
            raise GuestError(f"refusing to run a VM on the base's own {spec['disk']['file']}")
        if incoming == "base" and not os.path.isfile(spec["state"]["file"]):
            raise GuestError(f"base {basedir} is incomplete: missing {spec['state']['file']}")
        return cls(spec=spec, disk=disk, incoming=incoming, netns=netns,
                   disk_cache=disk_cache, paused=paused, **kw)

    # -- lifecycle -------------------------------------------------------
    def start(self):
        """Start QEMU and connect QMP and both serial ports; on any failure
        everything started so far is cleaned up before the error is raised."""
        try:
            return self._start()
        except BaseException:
            self.kill()
            raise

    def _start(self):
        if shutil.which("qemu-system-x86_64") is None:
            raise GuestError("qemu-system-x86_64 not found (run scripts/setup)")
        if not os.path.isfile(self.disk):
            raise GuestError(f"disk image {self.disk} not found")
        if self.netns:
            if shutil.which("ip") is None:
                raise GuestError("ip not found (install iproute2)")
            if not os.path.exists(f"/var/run/netns/{self.netns}"):
                raise GuestError(f"network namespace {self.netns} does not exist (ip netns add)")
        self.tmp = tempfile.mkdtemp(prefix="handoff-guest.")
        self.serial_path = self.serial_log or os.path.join(self.tmp, "serial.log")
        self.qmp_path = os.path.join(self.tmp, "qmp.sock")
        self.ctl_path = os.path.join(self.tmp, "ctl.sock")
        serial_sock = os.path.join(self.tmp, "ttyS0.sock")
        self.qemu_log = os.path.join(self.tmp, "qemu.log")
        open(self.serial_path, "a").close()
        self._serial = _SerialReader(_listen_unix(serial_sock), self.serial_path,
                                     self._on_serial_line)
        self._serial.start()
        self._ctl_listener = _listen_unix(self.ctl_path)
        self.ram_path = os.path.join("/dev/shm", os.path.basename(self.tmp) + ".ram")
        cmd = qemu_command(self.spec, self.disk, serial_sock, self.ctl_path, self.qmp_path,
                           disk_cache=self.disk_cache, snapshot=self.snapshot,
                           incoming=self.incoming, paused=self.paused,
                           extra_args=self.extra_args, ram_path=self.ram_path)
        if self.netns:
            cmd = ["ip", "netns", "exec", self.netns] + cmd
        self.cmd = cmd
        logf = open(self.qemu_log, "wb")
        try:
            self.t_start = time.monotonic()
            self.proc = subprocess.Popen(cmd, stdin=subprocess.DEVNULL, stdout=logf,
                                         stderr=subprocess.STDOUT,
                                         preexec_fn=_die_with_parent)
        finally:
            logf.close()
        _live.add(self)
        self.qmp_client = QMP(self.qmp_path, self.timeout, self.alive)
        self.qmp_events = self.qmp_client.events  # kept after kill()
        try:
            self.qmp_client.connect()
        except GuestError:
            time.sleep(0.2)
            if not self.alive():
                raise GuestError(self._died_msg()) from None
            raise
        self._accept_ctl()
        return self

    def _accept_ctl(self):
        # QEMU connects its client chardevs while it starts, before QMP
        # answers, so the connection is already queued.
        self._ctl_listener.settimeout(10)
        try:
            self._ctl, _ = self._ctl_listener.accept()
        except OSError as e:
            raise GuestError(f"QEMU did not connect the control port {self.ctl_path}: {e}") from None
        self._ctl.settimeout(10)

    def _on_serial_line(self, t, line):
        self.serial_lines.append((t, line))

    def alive(self):
        return self.proc is not None and self.proc.poll() is None

    def qemu_output(self):
        try:
            with open(self.qemu_log, "r", errors="replace") as f:
                return f.read().strip()[-2000:]
        except OSError:
            return ""

    def kill(self):
        if self.qmp_client:
            self.qmp_client.close()
            self.qmp_client = None
        if self.proc is not None and self.proc.poll() is None:
            try:
                self.proc.kill()
            except ProcessLookupError:
                pass
            try:
                self.proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                pass
        _live.discard(self)
        for s in (self._ctl, self._ctl_listener):
            if s is not None:
                try:
                    s.close()
                except OSError:
                    pass
        self._ctl = self._ctl_listener = None
        if self._serial is not None:
            self._serial.close()
            self._serial = None
        if getattr(self, "ram_path", None) and os.path.exists(self.ram_path):
            os.unlink(self.ram_path)
        if self.tmp and not self.keep_tmp:
            shutil.rmtree(self.tmp, ignore_errors=True)
            self.tmp = None

    def quit(self):
        """Ask QEMU to quit, then make sure it is gone. Returns QEMU's exit
        status (None if it had to be killed)."""
        rc = None
        try:
            if self.alive() and self.qmp_client:
                try:
                    self.qmp_client.execute("quit", timeout=10)
                except GuestError:
                    pass  # QEMU may close the socket before it replies
                rc = self.proc.wait(timeout=10)
        except (OSError, subprocess.TimeoutExpired):
            rc = None
        self.kill()
        return rc

    def __enter__(self):
        return self.start()

    def __exit__(self, *exc):
        self.kill()
        return False

    # -- control ---------------------------------------------------------
    def qmp(self, cmd, **args):
        if not self.alive():
            raise GuestError(self._died_msg())
        try:
            return self.qmp_client.execute(cmd, **args)
        except GuestError:
            if not self.alive():
                raise GuestError(self._died_msg()) from None
            raise

    @property
    def events(self):
        """QMP events so far, each with "host_time" (time.monotonic());
        still available after the VM is gone."""
        return list(self.qmp_events)

    def wait_event(self, name, timeout, since=None):
        """First QMP event `name` stamped at or after `since` (host time)."""
        if self.qmp_client is None:
            raise GuestError(f"QMP of {self.name} is closed")
        return self.qmp_client.wait_event(name, timeout, since)

    def status(self):
        return self.qmp("query-status")["status"]

    def wait_status(self, want, timeout):
        """Poll query-status until it is one of `want` (str or tuple)."""
        want = (want,) if isinstance(want, str) else tuple(want)
        deadline = time.monotonic() + timeout
        while True:
            st = self.status()
            if st in want:
                return st
            if time.monotonic() > deadline:
                raise GuestError(f"VM status is still '{st}' after {timeout:g} s (want {'/'.join(want)})")
            time.sleep(0.02)

    def wait_running(self, timeout):
        """Wait until the VM runs; returns seconds since QEMU was started.
        With incoming="base" (and not paused) the state is loaded first and
        then continued here: vm.mig was saved from a stopped VM, so QEMU
        keeps it paused after loading."""
        if self.incoming == "base" and not self.paused:
            if self.wait_incoming_done(timeout) is not None and self.status() == "paused":
                self.qmp("cont")
        self.wait_status("running", timeout)
        self.t_running = time.monotonic()
        return self.t_running - self.t_start

    def wait_incoming_done(self, timeout):
        """For paused=True with incoming: wait until the state is loaded
        (status 'paused'); returns seconds since QEMU was started."""
        deadline = time.monotonic() + timeout
        while True:
            st = self.status()
            if st in ("paused", "running"):
                return time.monotonic() - self.t_start
            if st not in ("inmigrate", "prelaunch"):
                raise GuestError(f"incoming migration ended in state '{st}'")
            if time.monotonic() > deadline:
                raise GuestError(f"incoming migration not done after {timeout:g} s")
            time.sleep(0.02)

    def set_plain_migration(self, max_bandwidth=1 << 40):
        """Capabilities and parameters for a plain stream (no multifd,
        compression, xbzrle or postcopy) at full speed."""
        known = {c["capability"] for c in self.qmp("query-migrate-capabilities")}
        caps = [{"capability": c, "state": False} for c in PLAIN_STREAM_CAPS_OFF if c in known]
        self.qmp("migrate-set-capabilities", capabilities=caps)
        self.qmp("migrate-set-parameters", **{"max-bandwidth": max_bandwidth})

    def wait_migration(self, timeout):
        """Poll query-migrate on this (source) QEMU until completed; returns
        its final reply. Raises on failed/cancelled or timeout."""
        deadline = time.monotonic() + timeout
        while True:
            r = self.qmp("query-migrate")
            st = r.get("status")
            if st == "completed":
                return r
            if st in ("failed", "cancelled"):
                raise GuestError(f"migration {st}: {r.get('error-desc', 'no reason given')}")
            if time.monotonic() > deadline:
                raise GuestError(f"migration not completed after {timeout:g} s (status {st})")
            time.sleep(0.05)

    def save_state(self, path, timeout=300):
        """Save the VM (stopped first if running) with QEMU's own migration
        into path (plain stream, via path.part). The VM stays stopped."""
        path = os.path.abspath(path)
        part = path + ".part"
        if os.path.exists(part):
            os.unlink(part)
        if self.status() == "running":
            self.qmp("stop")
        self.set_plain_migration()
        self.qmp("migrate", uri="exec:cat > " + shlex.quote(part))
        r = self.wait_migration(timeout)
        os.replace(part, path)
        return r

    def _died_msg(self):
        rc = self.proc.poll() if self.proc else None
        out = self.qemu_output().replace("\n", " | ")
        last = "; ".join(l for _, l in self.serial_lines[-3:])
        return (f"QEMU ({self.name}) exited (status {rc})" + (f": {out}" if out else "")
                + (f" [last serial lines: {last}]" if last else ""))

    def send_ctl(self, line):
        """Send a line to the guest's second serial port (ttyS1)."""
        if self._ctl is None:
            raise GuestError("control port not connected (guest not started?)")
        try:
            self._ctl.sendall(line.encode() + b"\n")
        except OSError as e:
            raise GuestError(f"cannot write to guest control port {self.ctl_path}: {e}") from None

    def go(self, mem=None, disk=None, seed=1, hot=None, cap_mb=None):
        """Start the guest workloads: mem/disk = (rate MB/s, total MB) or
        None; hot = (percent, KiB) or None: each workload keeps a hot region
        of KiB of text that percent of its steps rewrite in place; cap_mb:
        the memory workload's footprint (None: the guest's 96 MB). Returns
        the GO line sent."""
        def rt(v, what):
            if v is None:
                return "0:0"
            rate, total = v
            if rate < 0 or total < 0 or int(total) != total:
                raise GuestError(f"bad {what} workload {v} (rate >= 0 MB/s, whole MB total)")
            r = f"{rate:.3f}".rstrip("0").rstrip(".") or "0"
            return f"{r}:{int(total)}"
        line = f"GO mem={rt(mem, 'mem')} disk={rt(disk, 'disk')} seed={int(seed)}"
        if hot is not None:
            pct, kb = hot
            if not (0 <= pct <= 100 and 0 <= kb <= 65536) or int(pct) != pct or int(kb) != kb or kb % 64:
                raise GuestError(f"bad hot region {hot} (whole percent 0..100, KiB 0 or a multiple of 64 up to 65536)")
            line += f" hot={int(pct)}:{int(kb)}"
        if cap_mb is not None:
            if int(cap_mb) != cap_mb or not 1 <= cap_mb <= 9999:
                raise GuestError(f"bad memory footprint cap {cap_mb} (whole MB, 1..9999)")
            line += f" cap={int(cap_mb)}"
        self.send_ctl(line)
        return line

    def workload_status(self, timeout=10):
        """Ask the guest (STATUS on ttyS1) how far its workloads are:
        {"mem": {"kb": .., "cs": .., ...}, "disk": {...}} from the last
        progress or result line of each (empty dicts before the first).
        Does not move wait_serial's cursor."""
        pos = len(self.serial_lines)
        self.send_ctl("STATUS")
        deadline = time.monotonic() + timeout
        while True:
            end = len(self.serial_lines)
            for _, line in self.serial_lines[pos:end]:
                if line.startswith("STATUS "):
                    return {k: {f: int(x) for f, x in re.findall(r"(\w+)=(\d+)", v)}
                            for k, v in re.findall(r"(mem|disk)\[([^\]]*)\]", line)}
            pos = end
            if not self.alive():
                raise GuestError(self._died_msg())
            if time.monotonic() > deadline:
                raise GuestError(f"no STATUS reply from the {self.name} guest in {timeout:g} s")
            time.sleep(0.05)

    def poll_serial(self):
        """The serial lines that arrived since the previous call."""
        new = [l for _, l in self.serial_lines[self._poll_pos:]]
        self._poll_pos += len(new)
        return new

    def wait_serial(self, pattern, timeout, fail_pattern=None):
        """Wait for a serial line matching regex `pattern` (anchored at the
        start) after the line the previous wait_serial matched; returns the
        line. Raises GuestError on timeout, on a line matching fail_pattern,
        or if QEMU exits."""
        rx = re.compile(pattern)
        frx = re.compile(fail_pattern) if fail_pattern else None
        deadline = time.monotonic() + timeout
        while True:
            while self._wait_pos < len(self.serial_lines):
                line = self.serial_lines[self._wait_pos][1]
                self._wait_pos += 1
                if frx and frx.match(line):
                    raise GuestError(f"guest reported: {line}")
                if rx.match(line):
                    return line
            if not self.alive():
                time.sleep(0.1)  # let the reader deliver the last lines
                if self._wait_pos >= len(self.serial_lines):
                    raise GuestError(self._died_msg())
                continue
            if time.monotonic() > deadline:
                last = "; ".join(l for _, l in self.serial_lines[-3:])
                raise GuestError(f"timed out after {timeout:g} s waiting for "
                                 f"'{pattern}' on the {self.name} serial port"
                                 + (f" [last lines: {last}]" if last else ""))
            time.sleep(0.02)

    def heartbeats(self, t0=None, t1=None):
        """[(host time, n)] of the HB lines stamped within [t0, t1]."""
        return _heartbeats([self], t0, t1)

    def last_heartbeat(self):
        hb = self.heartbeats()
        return hb[-1] if hb else None

    def heartbeat_gap(self, t0=None, t1=None, others=(), detail=False):
        """Largest gap (s) between consecutive HB lines stamped within
        [t0, t1], over this guest's serial and those of `others` (e.g. the
        migration destination): the guest-visible pause. See heartbeat_gap()."""
        return heartbeat_gap([self] + list(others), t0, t1, detail)

    def pmemsave(self, path, stop=True):
        """Save guest RAM [0, mem) to path (written to path.part, then
        renamed). With stop=True the VM is stopped around the save (and
        resumed only if it was running)."""
        path = os.path.abspath(path)
        part = path + ".part"
        size = self.mem_kb * 1024
        was_running = stop and self.status() == "running"
        if was_running:
            self.qmp("stop")
        try:
            self.qmp("pmemsave", val=0, size=size, filename=part)
        finally:
            if was_running and self.alive():
                self.qmp("cont")
        st = os.stat(part)
        if st.st_size != size:
            raise GuestError(f"pmemsave wrote {st.st_size} bytes, expected {size}")
        os.replace(part, path)
        return size

    def ram_digest(self, stop=True):
        """SHA-256 (hex) of guest RAM [0, mem) via pmemsave. Compare a
        stopped source with a paused (-S) destination to check a migration."""
        path = os.path.join(self.tmp, "ram.pmem")
        try:
            self.pmemsave(path, stop=stop)
            return file_sha256(path)
        finally:
            if os.path.exists(path):
                os.unlink(path)


def _heartbeats(guests, t0, t1):
    out = []
    for g in guests:
        for t, line in list(g.serial_lines):
            if (t0 is not None and t < t0) or (t1 is not None and t > t1):
                continue
            m = HB_RX.match(line)
            if m:
                out.append((t, int(m.group(1))))
    out.sort(key=lambda x: x[0])
    return out


def heartbeat_gap(guests, t0=None, t1=None, detail=False):
    """Largest gap in seconds between consecutive heartbeat lines (host
    stamps) of the given guests within [t0, t1]; None with fewer than two.
    With detail=True: dict gap, t_before, t_after, hb_before, hb_after."""
    hb = _heartbeats(guests, t0, t1)
    if len(hb) < 2:
        return None
    best = max(range(1, len(hb)), key=lambda i: hb[i][0] - hb[i - 1][0])
    gap = hb[best][0] - hb[best - 1][0]
    if not detail:
        return gap
    return {"gap": gap, "t_before": hb[best - 1][0], "t_after": hb[best][0],
            "hb_before": hb[best - 1][1], "hb_after": hb[best][1], "count": len(hb)}


def read_serial_log(path):
    """[(stamp, line)] from a Guest serial log (for other processes)."""
    out = []
    with open(path, errors="replace") as f:
        for raw in f:
            stamp, _, line = raw.rstrip("\n").partition(" ")
            try:
                out.append((float(stamp), line))
            except ValueError:
                continue
    return out
