"""guestvm: start the handoff test guest (scripts/build-guest) under QEMU and
talk to it: a minimal QMP client (stdlib json + socket), serial-log waiting,
the ttyS1 control line, and guaranteed clean-up of the QEMU process.

Used by scripts/guest-snapshot; importable by other harness scripts:

    from guestvm import Guest
    with Guest("/var/tmp/handoff-guest", append_extra="workload=8:48:go") as g:
        g.wait_serial("READY", 120)
        g.qmp("stop")
"""

import ctypes
import json
import os
import re
import shutil
import signal
import socket
import subprocess
import tempfile
import time

# Never a multiple of 256 KiB: QEMU < 9.0 under TCG loses guest stores during
# migration/dirty logging with such sizes (see DESIGN.md).
DEFAULT_MEM_KB = 262152


class GuestError(Exception):
    pass


def _die_with_parent():
    """preexec_fn: QEMU gets SIGKILL if this Python process dies."""
    try:
        libc = ctypes.CDLL("libc.so.6", use_errno=True)
        libc.prctl(1, signal.SIGKILL)  # PR_SET_PDEATHSIG
    except OSError:
        pass
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


class QMP:
    def __init__(self, path, timeout=120.0, alive=None):
        self.path = path
        self.timeout = timeout
        self.alive = alive or (lambda: True)
        self.sock = None
        self.buf = b""
        self.events = []

    def connect(self):
        deadline = time.monotonic() + self.timeout
        last = None
        while time.monotonic() < deadline:
            if not self.alive():
                raise GuestError("QEMU exited before its QMP socket came up")
            try:
                s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
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
        greeting = self._read_msg()
        if "QMP" not in greeting:
            raise GuestError(f"unexpected QMP greeting: {greeting}")
        self.execute("qmp_capabilities")

    def _read_msg(self):
        deadline = time.monotonic() + self.timeout
        while b"\n" not in self.buf:
            if time.monotonic() > deadline:
                raise GuestError("timed out waiting for QMP reply")
            try:
                chunk = self.sock.recv(65536)
            except socket.timeout:
                raise GuestError("timed out waiting for QMP reply") from None
            except OSError as e:
                raise GuestError(f"QMP connection failed: {e} (QEMU died?)") from None
            if not chunk:
                raise GuestError("QMP connection closed (QEMU died?)")
            self.buf += chunk
        line, self.buf = self.buf.split(b"\n", 1)
        return json.loads(line)

    def execute(self, cmd, **args):
        msg = {"execute": cmd}
        if args:
            msg["arguments"] = args
        try:
            self.sock.sendall(json.dumps(msg).encode() + b"\n")
        except OSError as e:
            raise GuestError(f"QMP send failed: {e} (QEMU died?)") from None
        while True:
            r = self._read_msg()
            if "event" in r:
                self.events.append(r)
                continue
            if "error" in r:
                e = r["error"]
                raise GuestError(f"QMP {cmd} failed: {e.get('class')}: {e.get('desc')}")
            if "return" in r:
                return r["return"]

    def close(self):
        if self.sock:
            self.sock.close()
            self.sock = None


class Guest:
    """One QEMU running the test guest. Use as a context manager; QEMU is
    killed on exit, on signals (after install_signal_cleanup()) and, through
    PR_SET_PDEATHSIG, if this process dies."""

    def __init__(self, guest_dir, append_extra="", mem_kb=DEFAULT_MEM_KB,
                 accel=None, extra_args=(), keep_tmp=False, timeout=120.0):
        self.guest_dir = os.path.abspath(guest_dir)
        self.kernel = os.path.join(self.guest_dir, "vmlinuz")
        self.initrd = os.path.join(self.guest_dir, "initramfs.cpio.gz")
        for f in (self.kernel, self.initrd):
            if not os.path.isfile(f):
                raise GuestError(f"missing {f} (run scripts/build-guest {guest_dir})")
        if mem_kb % 256 == 0:
            raise GuestError(f"RAM size {mem_kb} KiB is a multiple of 256 KiB; "
                             "TCG loses stores with such sizes (use e.g. 262152)")
        self.mem_kb = mem_kb
        self.accel = accel or os.environ.get("ACCEL", "tcg")
        self.cpu = os.environ.get("QEMU_CPU", "max")
        self.append = "console=ttyS0 panic=-1" + (" " + append_extra if append_extra else "")
        self.extra_args = list(extra_args)
        self.keep_tmp = keep_tmp
        self.timeout = timeout
        self.tmp = None
        self.proc = None
        self.qmp_client = None
        self._serial_pos = 0
        self._serial_tail = ""
        self.serial_lines = []  # (host monotonic time seen, line)
        self._wait_pos = 0      # wait_serial's cursor in serial_lines

    # -- lifecycle -------------------------------------------------------
    def start(self):
        if shutil.which("qemu-system-x86_64") is None:
            raise GuestError("qemu-system-x86_64 not found (run scripts/setup)")
        self.tmp = tempfile.mkdtemp(prefix="handoff-guest.")
        self.serial_path = os.path.join(self.tmp, "serial.log")
        self.qmp_path = os.path.join(self.tmp, "qmp.sock")
        self.ctl_path = os.path.join(self.tmp, "ctl.sock")
        self.qemu_log = os.path.join(self.tmp, "qemu.log")
        open(self.serial_path, "wb").close()
        cmd = [
            "qemu-system-x86_64",
            "-machine", f"q35,accel={self.accel}", "-cpu", self.cpu,
            "-m", f"{self.mem_kb}K", "-smp", "1",
            "-kernel", self.kernel, "-initrd", self.initrd,
            "-append", self.append,
            "-display", "none", "-nodefaults", "-no-reboot",
            "-serial", f"file:{self.serial_path}",
            "-chardev", f"socket,id=ctl,path={self.ctl_path},server=on,wait=off",
            "-serial", "chardev:ctl",
            "-qmp", f"unix:{self.qmp_path},server=on,wait=off",
        ] + self.extra_args
        self.cmd = cmd
        logf = open(self.qemu_log, "wb")
        try:
            self.proc = subprocess.Popen(cmd, stdin=subprocess.DEVNULL, stdout=logf,
                                         stderr=subprocess.STDOUT,
                                         preexec_fn=_die_with_parent)
        finally:
            logf.close()
        _live.add(self)
        self.qmp_client = QMP(self.qmp_path, self.timeout, self.alive)
        try:
            self.qmp_client.connect()
        except GuestError:
            time.sleep(0.2)
            if not self.alive():
                raise GuestError(self._died_msg()) from None
            raise
        return self

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
        if self.tmp and not self.keep_tmp:
            shutil.rmtree(self.tmp, ignore_errors=True)
            self.tmp = None

    def quit(self):
        """Ask QEMU to quit, then make sure it is gone."""
        try:
            if self.alive() and self.qmp_client:
                self.qmp_client.execute("quit")
                self.proc.wait(timeout=10)
        except (GuestError, OSError, subprocess.TimeoutExpired):
            pass
        self.kill()

    def __enter__(self):
        try:
            return self.start()
        except BaseException:
            self.kill()
            raise

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

    def _died_msg(self):
        rc = self.proc.poll() if self.proc else None
        out = self.qemu_output().replace("\n", " | ")
        last = "; ".join(l for _, l in self.serial_lines[-3:])
        return (f"QEMU exited (status {rc})" + (f": {out}" if out else "")
                + (f" [last serial lines: {last}]" if last else ""))

    def send_ctl(self, line):
        """Send a line to the guest's second serial port (ttyS1)."""
        s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        s.settimeout(10)
        try:
            s.connect(self.ctl_path)
            s.sendall(line.encode() + b"\n")
            time.sleep(0.2)
        except OSError as e:
            raise GuestError(f"cannot write to guest control port {self.ctl_path}: {e}")
        finally:
            s.close()

    def poll_serial(self):
        """Read new serial output; returns the new complete lines."""
        new = []
        with open(self.serial_path, "rb") as f:
            f.seek(self._serial_pos)
            data = f.read()
        if not data:
            return new
        self._serial_pos += len(data)
        now = time.monotonic()
        text = self._serial_tail + data.decode("utf-8", "replace")
        parts = text.split("\n")
        self._serial_tail = parts.pop()
        for p in parts:
            line = p.rstrip("\r")
            self.serial_lines.append((now, line))
            new.append(line)
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
            self.poll_serial()
            while self._wait_pos < len(self.serial_lines):
                line = self.serial_lines[self._wait_pos][1]
                self._wait_pos += 1
                if frx and frx.match(line):
                    raise GuestError(f"guest reported: {line}")
                if rx.match(line):
                    return line
            if not self.alive():
                raise GuestError(self._died_msg())
            if time.monotonic() > deadline:
                last = "; ".join(l for _, l in self.serial_lines[-3:])
                raise GuestError(f"timed out after {timeout:g} s waiting for "
                                 f"'{pattern}' on the guest serial port"
                                 + (f" [last lines: {last}]" if last else ""))
            time.sleep(0.02)

    def pmemsave(self, path, stop=True):
        """Save guest RAM [0, mem) to path (written to path.part, then
        renamed). With stop=True the VM is stopped around the save."""
        path = os.path.abspath(path)
        part = path + ".part"
        size = self.mem_kb * 1024
        if stop:
            self.qmp("stop")
        try:
            self.qmp("pmemsave", val=0, size=size, filename=part)
        finally:
            if stop and self.alive():
                self.qmp("cont")
        st = os.stat(part)
        if st.st_size != size:
            raise GuestError(f"pmemsave wrote {st.st_size} bytes, expected {size}")
        os.replace(part, path)
        return size
