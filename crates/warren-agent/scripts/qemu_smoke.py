#!/usr/bin/env python3
"""Boot the agent as PID 1 under QEMU microvm and drive it end to end.

A developer check, not part of `cargo test` (it needs QEMU, ideally /dev/kvm, a
Debian cloud kernel unpacked on disk and a static busybox). It builds its own tiny
initramfs (no device nodes, like the real one), a busybox image disk and an ext4 data
disk, plays the host side of the control channel, and checks: Hello -> Boot -> Ready,
the workspace command and CmdExited, the runtime API through a forwarded port, the
workspace user, hostname and network, zombie reaping, persistence of the data disk
across boots, Ping/Pong, and both power-off paths (host Shutdown, guest `poweroff`).

    AGENT=target/.../warren-agent KERNEL=/path/vmlinux \
    MODULES=/path/lib/modules/6.1.0-56-cloud-amd64 python3 qemu_smoke.py
"""

import json
import os
import shutil
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request

AGENT = os.environ["AGENT"]
KERNEL = os.environ["KERNEL"]
MODULES = os.environ["MODULES"]
BUSYBOX = os.environ.get("BUSYBOX", "/usr/bin/busybox")
# A PVM /dev/kvm (kvm_pvm) boots only PVM-enabled guest kernels: use TCG there.
ACCEL = os.environ.get("ACCEL") or (
    "kvm" if os.access("/dev/kvm", os.W_OK) and not os.path.exists("/sys/module/kvm_pvm")
    else "tcg")
TIMEOUT = 30 if ACCEL == "kvm" else 180
# microvm (virtio-mmio) gets no timer interrupts under TCG here: use `pc` (virtio-pci)
# there, as MACHINE=pc allows with KVM too.
MACHINE = os.environ.get("MACHINE") or ("microvm" if ACCEL == "kvm" else "pc")
BUS = "device" if MACHINE == "microvm" else "pci"
MODULE_LIST = [
    "drivers/virtio/virtio_ring.ko",
    "drivers/virtio/virtio.ko",
    "drivers/virtio/virtio_mmio.ko",
    "drivers/virtio/virtio_pci_legacy_dev.ko",
    "drivers/virtio/virtio_pci_modern_dev.ko",
    "drivers/virtio/virtio_pci.ko",
    "drivers/block/virtio_blk.ko",
    "net/core/failover.ko",
    "drivers/net/net_failover.ko",
    "drivers/net/virtio_net.ko",
    "drivers/char/virtio_console.ko",
    "fs/overlayfs/overlay.ko",
]
TOKEN = "smoke-token"
MAC = "52:54:00:12:34:56"


def run(*cmd, **kw):
    subprocess.run(cmd, check=True, **kw)


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def build(work):
    ir = os.path.join(work, "ir")
    for d in ["dev", "proc", "sys", "run", "tmp", "mnt", "etc/warren"]:
        os.makedirs(os.path.join(ir, d), exist_ok=True)
    shutil.copy(AGENT, os.path.join(ir, "init"))
    rel = os.path.basename(MODULES.rstrip("/"))
    lines = []
    for m in MODULE_LIST:
        inner = f"lib/modules/{rel}/kernel/{m}"
        os.makedirs(os.path.dirname(os.path.join(ir, inner)), exist_ok=True)
        shutil.copy(os.path.join(MODULES, "kernel", m), os.path.join(ir, inner))
        lines.append("/" + inner)
    with open(os.path.join(ir, "etc/warren/modules"), "w") as f:
        f.write("# smoke test\n" + "\n".join(lines) + "\n")
    cpio = os.path.join(work, "initramfs.cpio")
    files = subprocess.run(
        ["find", ".", "-mindepth", "1"], cwd=ir, check=True, capture_output=True
    ).stdout
    with open(cpio, "wb") as out:
        subprocess.run(
            ["cpio", "--quiet", "-o", "-H", "newc", "-R", "0:0"],
            cwd=ir, input=files, stdout=out, check=True,
        )

    img = os.path.join(work, "img")
    os.makedirs(os.path.join(img, "bin"))
    os.makedirs(os.path.join(img, "etc"))
    os.makedirs(os.path.join(img, "home/app"))
    shutil.copy(BUSYBOX, os.path.join(img, "bin/busybox"))
    applets = subprocess.run(
        [BUSYBOX, "--list"], check=True, capture_output=True, text=True
    ).stdout.split()
    for a in applets:
        if a != "busybox":
            os.symlink("busybox", os.path.join(img, "bin", a))
    with open(os.path.join(img, "etc/passwd"), "w") as f:
        f.write("root:x:0:0:root:/root:/bin/sh\napp:x:1000:1000:app:/home/app:/bin/sh\n")
    with open(os.path.join(img, "etc/group"), "w") as f:
        f.write("root:x:0:\napp:x:1000:\nwheel:x:10:app\n")
    image = os.path.join(work, "image.ext4")
    run("mkfs.ext4", "-q", "-F", "-d", img, image, "64M")
    data = os.path.join(work, "data.ext4")
    run("mkfs.ext4", "-q", "-F", data, "256M")
    return cpio, image, data


class Guest:
    def __init__(self, work, cpio, image, data, port, tag):
        self.ctl_path = os.path.join(work, f"ctl-{tag}.sock")
        self.console = os.path.join(work, f"console-{tag}.log")
        self.port = port
        args = [
            "qemu-system-x86_64", "-M",
            "microvm,x-option-roms=off,isa-serial=on,rtc=on,pic=off" if MACHINE == "microvm" else "pc",
            "-accel", ACCEL, "-cpu", "host" if ACCEL == "kvm" else "max",
            "-smp", "2", "-m", "512", "-nodefaults", "-no-user-config", "-display", "none",
            "-no-reboot", "-kernel", KERNEL, "-append", "console=ttyS0 panic=-1",
            "-initrd", cpio,
            "-chardev", f"file,id=console,path={self.console}", "-serial", "chardev:console",
            "-drive", f"id=disk0,file={image},format=raw,if=none,readonly=on",
            "-device", f"virtio-blk-{BUS},drive=disk0,serial=warren-image",
            "-drive", f"id=disk1,file={data},format=raw,if=none",
            "-device", f"virtio-blk-{BUS},drive=disk1,serial=warren-data",
            "-netdev", f"user,id=net0,hostfwd=tcp:127.0.0.1:{port}-:9990",
            "-device", f"virtio-net-{BUS},netdev=net0,mac={MAC}",
            "-device", f"virtio-serial-{BUS},max_ports=2",
            "-chardev", f"socket,id=agent,path={self.ctl_path},server=on,wait=off",
            "-device", "virtserialport,chardev=agent,name=org.warren.agent",
        ]
        self.qemu = subprocess.Popen(args)
        deadline = time.time() + 10
        while True:
            try:
                self.ctl = socket.socket(socket.AF_UNIX)
                self.ctl.connect(self.ctl_path)
                break
            except OSError:
                if time.time() > deadline:
                    raise
                time.sleep(0.05)
        self.buf = b""

    def send(self, msg):
        self.ctl.sendall(json.dumps(msg).encode() + b"\n")

    def recv(self, timeout=TIMEOUT):
        self.ctl.settimeout(timeout)
        while b"\n" not in self.buf:
            chunk = self.ctl.recv(65536)
            if not chunk:
                raise EOFError("control channel closed")
            self.buf += chunk
        line, self.buf = self.buf.split(b"\n", 1)
        return json.loads(line)

    def expect(self, kind, timeout=TIMEOUT):
        while True:
            m = self.recv(timeout)
            if m["type"] == kind:
                return m
            print("  (control)", m)

    def api(self, method, path, body=None, raw=None):
        data = raw if raw is not None else (json.dumps(body).encode() if body is not None else None)
        req = urllib.request.Request(
            f"http://127.0.0.1:{self.port}{path}", data=data, method=method,
            headers={"Authorization": f"Bearer {TOKEN}", "Content-Type": "application/json"},
        )
        try:
            with urllib.request.urlopen(req, timeout=TIMEOUT) as r:
                return r.status, json.loads(r.read())
        except urllib.error.HTTPError as e:
            return e.code, json.loads(e.read())

    def sh(self, script):
        s, t = self.api("POST", "/exec", {"cmd": ["sh", "-c", script]})
        assert s == 200, (s, t)
        return t

    def wait_exit(self, timeout=TIMEOUT):
        return self.qemu.wait(timeout=timeout)

    def dump_console(self):
        with open(self.console, errors="replace") as f:
            print(f.read()[-6000:])


def boot_config(cmd=None, user=None):
    return {
        "type": "boot",
        "config": {
            "workspace_id": "ws_smoke",
            "hostname": "smoke-ws",
            "network": {"mac": MAC, "address": "10.0.2.15", "prefix_len": 24,
                        "gateway": "10.0.2.2", "dns": ["10.0.2.3"], "mtu": 1500},
            "env": {"FOO": "bar"},
            "cmd": cmd,
            "workdir": "/work",
            "user": user,
            "api_token": TOKEN,
            "api_port": 9990,
            "clock_unix_ns": time.time_ns(),
            "entropy_hex": os.urandom(32).hex(),
            "data_disk": "ext4",
        },
    }


def check(cond, what):
    print(("ok   " if cond else "FAIL ") + what)
    if not cond:
        raise SystemExit(1)


def main():
    work = tempfile.mkdtemp(prefix="agent-smoke-")
    cpio, image, data = build(work)
    print(f"work dir {work}, accel {ACCEL}")

    g = Guest(work, cpio, image, data, free_port(), "1")
    try:
        hello = g.expect("hello")
        check(hello["protocol_version"] == 1, f"hello {hello}")
        g.send({"type": "ping", "id": 7})
        check(g.expect("pong")["id"] == 7, "pong before boot")
        g.send(boot_config(cmd=["sh", "-c", "echo cmd says hi; id -u; pwd; echo $FOO"], user="app"))
        ready = g.expect("ready")
        t = ready["timings"]
        check(t["api_ready_ms"] >= t["network_ms"] >= t["root_mounted_ms"] > 0, f"timings {t}")
        ex = g.expect("cmd_exited")
        check(ex["exit_code"] == 0, f"cmd exited {ex}")

        s, h = g.api("GET", "/health")
        check((s, h) == (200, {"success": True, "status": "ok"}), "health via forwarded port")
        r = g.sh("cat /var/log/warren/cmd.log")
        check(r["stdout"] == "cmd says hi\n1000\n/work\nbar\n", f"cmd log {r['stdout']!r}")
        r = g.sh("id -u; id -G; echo $HOME $HOSTNAME; hostname; cat /etc/hostname; cat /etc/resolv.conf")
        check(r["stdout"].split("\n")[:5] == ["1000", "1000 10", "/home/app smoke-ws", "smoke-ws", "smoke-ws"],
              f"user, groups, hostname: {r['stdout']!r}")
        check("nameserver 10.0.2.3" in r["stdout"], "resolv.conf")
        r = g.sh("cat /proc/mounts")
        check(" / overlay " in r["stdout"] and "/dev/pts devpts" in r["stdout"], "overlay root, devpts")
        r = g.sh("ls /init /mnt 2>&1; ls /")
        check("/init" in r["stdout"] and "No such file" in r["stdout"], f"initramfs gone: {r['stdout']!r}")
        r = g.sh("ip addr 2>/dev/null || ifconfig; ip route 2>/dev/null || route -n")
        check("10.0.2.15" in r["stdout"], "address configured")
        # Orphans are reaped by PID 1.
        g.sh("for i in 1 2 3 4 5; do (sleep 0.2 &) ; done")
        time.sleep(1.5)
        r = g.sh("ps -o pid,stat,comm | grep ' Z ' || true")
        check(r["stdout"].strip() == "", f"no zombies: {r['stdout']!r}")
        r = g.sh("date +%Y")
        check(r["stdout"].strip() == time.strftime("%Y"), "clock set")
        s, w = g.api("POST", "/files/write", {"path": "/work/persist.txt", "content": "kept\n"})
        check(s == 200, "write a file")
        r = g.sh("stat -c %U /work/persist.txt; ls /dev/fd/ >/dev/null && echo fd-ok")
        check(r["stdout"] == "app\nfd-ok\n", f"new files belong to the workspace user: {r['stdout']!r}")
        g.send({"type": "ping", "id": 8})
        check(g.expect("pong")["id"] == 8, "pong after boot")
        g.send({"type": "shutdown"})
        g.expect("shutting_down")
        check(g.wait_exit() == 0, "host shutdown ends the VM")
    except BaseException:
        g.dump_console()
        g.qemu.kill()
        raise
    g.dump_console()

    g = Guest(work, cpio, image, data, free_port(), "2")
    try:
        g.expect("hello")
        g.send(boot_config())
        g.expect("ready")
        r = g.sh("cat /work/persist.txt")
        check(r["stdout"] == "kept\n", "data disk persisted across boots")
        g.api("POST", "/exec", {"cmd": ["poweroff"]})
        g.expect("shutting_down")
        check(g.wait_exit() == 0, "guest poweroff ends the VM")
    except BaseException:
        g.dump_console()
        g.qemu.kill()
        raise
    g.dump_console()

    # A boot that cannot complete reports BootFailed and keeps the VM up.
    g = Guest(work, cpio, image, data, free_port(), "3")
    try:
        g.expect("hello")
        g.send(boot_config(user="nobody-here"))
        failed = g.expect("boot_failed")
        check("nobody-here" in failed["error"], f"boot failed: {failed['error']}")
        g.send({"type": "ping", "id": 9})
        check(g.expect("pong")["id"] == 9, "still answering after BootFailed")
        g.send({"type": "shutdown"})
        g.expect("shutting_down")
        check(g.wait_exit() == 0, "shutdown after BootFailed")
    except BaseException:
        g.dump_console()
        g.qemu.kill()
        raise
    print("all good")


if __name__ == "__main__":
    main()
