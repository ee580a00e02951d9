#!/usr/bin/env python3
"""Boot test of the Genba SD-card image under qemu-system-aarch64 (-M virt, software emulation),
then one first boot of a pristine card under the Raspberry Pi 3 model (-M raspi3b).

qemu boots the kernel, initrd and cmdline.txt of the slot the card's genba-slot.txt names
(os_prefix=slot-a/ or slot-b/), as the Pi firmware does, and stops when the guest restarts
(-no-reboot): the next boot reads the card again.

On a copy of the image, grown by 512 MiB like a bigger SD card:
 1. a settings file goes on the boot partition (admin password, an MQTT user, a device key, and a
    Slack webhook pointing at a fake Slack on this host, reached from the guest as 10.0.2.2);
 2. first boot, with the image's own kernel command line (cmdline.txt; qemu's serial port in place
    of the Pi's, HDMI's tty0 still /dev/console): waits for the `genba-ready:` line on the serial
    console, then over forwarded ports publishes over MQTT (Debian's mosquitto_pub), calls
    /notify and /api/telemetry, and waits for both messages at the fake Slack;
 3. a retained message and a persistent session with a queued QoS 1 message are made, then a
    write burst of /notify requests, and the VM is killed (a hard power-off) in the middle;
    after the reboot both are still there;
 4. second boot: ready again, serves, delivers the burst; a tampered update bundle on the boot
    partition is refused with RAUC's reason;
 5. A/B update: a v2 bundle (the image's root with another release, signed with the build's key)
    uploaded on the console as admin; a power cut during its install leaves the Pi booting
    slot A, which installs the bundle (still there) again and restarts; slot A is still
    byte-identical to the image's; slot B boots, is committed once Genba is ready, and still has
    the retained message; then a bundle whose genba exits at once, uploaded the same way, goes
    into slot A: its trial fails (genba.update_deadline=45 on the command line) and the Pi is
    back on slot B (v2) by itself; the install time and the downtime are printed;
 6. the card is read on the host: the settings file is gone, the data partition grew,
    genba-slot.txt boots B with A marked bad, genba-update-result.txt tells each outcome, the
    data file system is clean after
    its journal replay, secrets.toml has mode 600, and the SQLite database passes
    integrity_check and holds every acknowledged message exactly once and the readings.

The fake Slack answers like Slack's incoming webhooks (200 "ok"); Slack cannot be reached here.
"""
import argparse
import base64
import http.cookiejar
import http.server
import json
import os
import re
import shutil
import socket
import sqlite3
import subprocess
import sys
import tempfile
import threading
import time
import urllib.error
import urllib.parse
import urllib.request

ADMIN_PASSWORD = "admin-boot-test-1"
MQTT_USER, MQTT_PASSWORD = "thermo", "thermo-boot-test"
DEVICE, DEVICE_KEY = "fridge-1", "fridge-1-boot-test-key-0123456789"
GROW_MIB = 512
# genba.update_deadline= on every boot's kernel command line: a slot on trial that is not ready
# within this many seconds is given up (180 on a Pi).
UPDATE_DEADLINE = 45
# Partitions of the card: boot FAT, root slot A, root slot B, data.
BOOT, SLOT_A, SLOT_B, DATA = 0, 1, 2, 3
KEYS = os.environ.get("GENBA_KEYS_DIR") or os.path.expanduser("~/.config/genba/update-keys")


def log(msg):
    print(f"[{time.strftime('%H:%M:%S')}] {msg}", flush=True)


def fail(msg):
    log(f"FAIL: {msg}")
    sys.exit(1)


def check(cond, msg):
    if not cond:
        fail(msg)
    log(f"ok: {msg}")


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def run(*cmd, ok_codes=(0,), **kw):
    p = subprocess.run(cmd, capture_output=True, text=True, **kw)
    if p.returncode not in ok_codes:
        fail(f"{' '.join(cmd)} exited {p.returncode}: {p.stdout}{p.stderr}")
    return p


class FakeSlack:
    """Records incoming-webhook posts; answers 200 "ok" as Slack does."""

    def __init__(self):
        self.texts = []
        self.lock = threading.Lock()
        outer = self

        class Handler(http.server.BaseHTTPRequestHandler):
            def do_POST(self):
                body = self.rfile.read(int(self.headers.get("content-length", 0)))
                try:
                    text = json.loads(body).get("text", "")
                except ValueError:
                    self.send_response(400)
                    self.end_headers()
                    self.wfile.write(b"invalid_payload")
                    return
                with outer.lock:
                    outer.texts.append(text)
                self.send_response(200)
                self.send_header("content-type", "text/html")
                self.end_headers()
                self.wfile.write(b"ok")

            def log_message(self, *a):
                pass

        self.server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.port = self.server.server_address[1]
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def all_text(self):
        with self.lock:
            return "\n".join(self.texts)


class Card:
    """The image copy and its partitions (start, size in bytes) from sfdisk."""

    def __init__(self, path, original=None):
        self.path = path
        self.original = original

    def partitions(self):
        table = json.loads(run("sfdisk", "-J", self.path).stdout)["partitiontable"]
        return [(p["start"] * 512, p["size"] * 512) for p in table["partitions"]]

    def fat(self):
        return f"{self.path}@@{self.partitions()[0][0]}"

    def fat_files(self, folder=""):
        out = run("mdir", "-b", "-i", self.fat(), f"::{folder}", env=mtools_env()).stdout
        return [os.path.basename(l.strip()) for l in out.splitlines()]

    def fat_read(self, name):
        return run("mtype", "-i", self.fat(), f"::{name}", env=mtools_env()).stdout

    def fat_get(self, name, dest):
        run("mcopy", "-o", "-n", "-i", self.fat(), f"::{name}", dest, env=mtools_env())

    def fat_put(self, src, name):
        run("mcopy", "-o", "-i", self.fat(), src, f"::{name}", env=mtools_env())

    def slot_prefix(self):
        """What the Pi firmware boots: config.txt includes genba-slot.txt, whose os_prefix names
        the slot's folder."""
        check_once("config.txt includes genba-slot.txt", "include genba-slot.txt" in
                   self.fat_read("config.txt").splitlines())
        m = re.search(r"^os_prefix=(slot-[ab]/)$", self.fat_read("genba-slot.txt"), re.M)
        if not m:
            fail(f"no os_prefix in genba-slot.txt: {self.fat_read('genba-slot.txt')!r}")
        return m.group(1)

    def extract(self, index, dest):
        start, size = self.partitions()[index]
        with open(self.path, "rb") as src, open(dest, "wb") as out:
            src.seek(start)
            left = size
            while left:
                chunk = src.read(min(left, 1 << 22))
                if not chunk:
                    break
                out.write(chunk)
                left -= len(chunk)


_checked = set()


def check_once(msg, cond):
    if msg not in _checked:
        check(cond, msg)
        _checked.add(msg)
    elif not cond:
        fail(msg)


def mtools_env():
    return dict(os.environ, MTOOLS_SKIP_CHECK="1")


def qemu_cmdline(pi_cmdline):
    """The image's own cmdline.txt for qemu's virt machine: its serial console is the PL011
    ttyAMA0 where the Pi 3/4's header UART is ttyS1. The order of the console= entries stays, so
    /dev/console is the last one (tty0, HDMI on a Pi) as on the Pi, and this serial log sees only
    what is written to every console, as a serial cable on a Pi would."""
    args = re.sub(r"\bconsole=ttyS1\b", "console=ttyAMA0", pi_cmdline.strip()).split()
    extra = ["net.ifnames=0", f"genba.update_deadline={UPDATE_DEADLINE}"]
    return " ".join(args + [a for a in extra if a not in args])


class Vm:
    """One boot of the card: the slot genba-slot.txt names, as the Pi firmware reads it."""

    def __init__(self, work, card, http_port, mqtt_port, name):
        self.log_path = os.path.join(work, f"serial-{name}.log")
        self.prefix = card.slot_prefix()
        kernel, initrd = os.path.join(work, "vmlinuz"), os.path.join(work, "initrd.img")
        card.fat_get(self.prefix + "vmlinuz", kernel)
        card.fat_get(self.prefix + "initrd.img", initrd)
        self.pi_cmdline = card.fat_read(self.prefix + "cmdline.txt")
        self.cmdline = qemu_cmdline(self.pi_cmdline)
        log(f"{name}: {self.prefix} with kernel command line {self.cmdline}")
        self.started = time.monotonic()
        self.proc = subprocess.Popen(
            [
                "qemu-system-aarch64", "-M", "virt", "-cpu", "cortex-a72", "-smp", "2",
                "-m", "1024", "-nographic", "-no-reboot", "-kernel", kernel, "-initrd", initrd,
                "-append", self.cmdline,
                "-drive", f"if=none,id=hd,file={card.path},format=raw,cache=writeback",
                "-device", "virtio-blk-pci,drive=hd",
                "-netdev", f"user,id=n0,hostfwd=tcp:127.0.0.1:{http_port}-:80,"
                f"hostfwd=tcp:127.0.0.1:{mqtt_port}-:1883",
                "-device", "virtio-net-pci,netdev=n0,romfile=",
                "-device", "virtio-rng-pci",
            ],
            stdin=subprocess.DEVNULL,
            stdout=open(self.log_path, "wb"),
            stderr=subprocess.STDOUT,
        )

    def console(self):
        with open(self.log_path, "rb") as f:
            return f.read().decode("utf-8", "replace")

    def wait_ready(self, timeout):
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            m = re.search(r"genba-ready: [^\r\n]*", self.console())
            if m:
                return m.group(0), time.monotonic() - self.started
            if self.proc.poll() is not None:
                break
            time.sleep(1)
        print(self.console()[-6000:])
        fail(f"no genba-ready line within {timeout} s (console above, log {self.log_path})")

    def wait_console(self, pattern, timeout):
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            m = re.search(pattern, self.console())
            if m:
                return m.group(0)
            if self.proc.poll() is not None:
                break
            time.sleep(1)
        print(self.console()[-4000:])
        fail(f"no {pattern!r} on the console within {timeout} s (log {self.log_path})")

    def wait_restart(self, timeout):
        """The guest restarted (qemu -no-reboot exits then)."""
        try:
            self.proc.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            print(self.console()[-4000:])
            fail(f"the Pi did not restart within {timeout} s (log {self.log_path})")

    def power_off(self):
        """A hard power cut: SIGKILL, no shutdown of the guest."""
        self.proc.kill()
        self.proc.wait()


def pi3_model_boot(work, image, figures, timeout):
    """A pristine card under qemu's Raspberry Pi 3 model (-M raspi3b): the Pi's device tree, its
    SD host controller (the card appears late, as on a Pi) and a USB network adapter. The image's
    own cmdline.txt, unchanged: the serial console is ttyS1, the Pi header's mini UART (qemu's
    second serial port). The settings file must be applied, and the genba-ready line must be on
    that serial console."""
    log("Pi 3 model boot (-M raspi3b)")
    card = Card(os.path.join(work, "pi3.img"), original=image)
    run("cp", "--sparse=always", image, card.path)
    # the model's SD card must be a power of two
    size = 1 << (os.path.getsize(card.path) - 1).bit_length()
    os.truncate(card.path, size)
    settings = os.path.join(work, "pi3-settings.toml")
    with open(settings, "w") as f:
        f.write(f'[admin]\npassword = "{ADMIN_PASSWORD}"\n\n'
                f'[[devices]]\nid = "{DEVICE}"\napi_key = "{DEVICE_KEY}"\n')
    card.fat_put(settings, "genba-settings.toml")
    files = {}
    for name in ("vmlinuz", "initrd.img", "cmdline.txt", "bcm2837-rpi-3-b.dtb"):
        files[name] = os.path.join(work, "pi3-" + name)
        card.fat_get("slot-a/" + name, files[name])
    with open(files["cmdline.txt"]) as f:
        cmdline = f.read().strip()
    http_port = free_port()
    serial = os.path.join(work, "serial-pi3.log")
    started = time.monotonic()
    proc = subprocess.Popen(
        ["qemu-system-aarch64", "-M", "raspi3b", "-kernel", files["vmlinuz"],
         "-initrd", files["initrd.img"], "-dtb", files["bcm2837-rpi-3-b.dtb"],
         "-append", cmdline, "-drive", f"file={card.path},if=sd,format=raw",
         "-serial", "null", "-serial", f"file:{serial}", "-display", "none", "-no-reboot",
         "-usb", "-device", "usb-net,netdev=n0",
         "-netdev", f"user,id=n0,hostfwd=tcp:127.0.0.1:{http_port}-:80"],
        stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)

    def console():
        with open(serial, "rb") as f:
            return f.read().decode("utf-8", "replace")
    try:
        wait_for("genba-ready on the Pi 3 model's serial console (ttyS1)", timeout,
                 lambda: os.path.exists(serial) and "genba-ready: " in console())
        figures["Pi 3 model first boot to ready (s)"] = round(time.monotonic() - started, 1)
        ready = re.search(r"genba-ready: [^\r\n]*", console()).group(0)
        log(ready)
        check("slot A (" in ready and "genba-broker=active" in ready
              and "genba-bridge=active" in ready,
              "Pi 3 model: slot A, broker and bridge active, said on ttyS1")
        wait_for("Pi 3 model: the settings file of a pristine card applied (firstboot's line)", 60,
                 lambda: "genba-firstboot: applied /boot/firmware/genba-settings.toml"
                 in console())
        log("ok: Pi 3 model: the settings file of a pristine card was applied, not skipped")
        base = f"http://127.0.0.1:{http_port}"
        # The emulated Cortex-A53 is slow (the admin password's first argon2 check takes
        # seconds under TCG on a busy host): the first request may time out, so it is asked
        # again until the deadline, each time with a long timeout.
        answered = {}

        def notified():
            try:
                answered["status"], _ = notify(base, "pi3/hello", "over the Pi 3 model's USB network",
                                               timeout=60)
                return True
            except (TimeoutError, urllib.error.URLError, ConnectionError) as e:
                log(f"Pi 3 model: /notify not answered yet ({e!r}); asking again")
                return False
        wait_for("Pi 3 model: /notify answered over the USB network adapter", 300, notified)
        check(answered["status"] == 200, "Pi 3 model: /notify answers over the USB network adapter")
        reading = {"device_id": DEVICE, "ts_device": 1771156800000,
                   "readings": [{"sensor_hw_id": "28FF4C3A91160457", "raw_celsius": 3.5,
                                 "offset_c": 0.0, "celsius": 3.5}]}
        status, body = request("POST", f"{base}/api/telemetry", json.dumps(reading).encode(),
                               {"content-type": "application/json", "x-api-key": DEVICE_KEY},
                               timeout=60)
        check(status == 200 and json.loads(body).get("inserted") == 1,
              f"Pi 3 model: the settings file's device key posts a reading ({body!r})")
    finally:
        proc.kill()
        proc.wait()
    os.remove(card.path)


def request(method, url, body=None, headers=None, timeout=20):
    req = urllib.request.Request(url, data=body, method=method, headers=headers or {})
    try:
        with urllib.request.urlopen(req, timeout=timeout) as r:
            return r.status, r.read()
    except urllib.error.HTTPError as e:
        return e.code, e.read()


def basic(user, password):
    return "Basic " + base64.b64encode(f"{user}:{password}".encode()).decode()


def notify(base, topic, message, auth=True, timeout=20):
    headers = {"content-type": "application/json"}
    if auth:
        headers["authorization"] = basic("admin", ADMIN_PASSWORD)
    body = json.dumps({"topic": topic, "message": message}).encode()
    return request("POST", f"{base}/notify", body, headers, timeout)


def wait_for(what, timeout, cond):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if cond():
            return True
        time.sleep(1)
    fail(f"{what} within {timeout} s")


def burst(base, seconds_before_cut, vm):
    """4 writers post numbered messages; returns what was acknowledged before the power cut."""
    acked, lock, stop = [], threading.Lock(), threading.Event()

    def writer(t):
        n = 0
        while not stop.is_set():
            msg = f"burst-{t}-{n}"
            try:
                status, _ = notify(base, f"burst/{t}", msg)
            except (OSError, urllib.error.URLError):
                return
            if status == 200:
                with lock:
                    acked.append(msg)
            n += 1

    threads = [threading.Thread(target=writer, args=(t,)) for t in range(4)]
    for t in threads:
        t.start()
    time.sleep(seconds_before_cut)
    vm.power_off()
    stop.set()
    for t in threads:
        t.join(timeout=30)
    return acked


def make_bundles(work, image):
    """The update bundles the test installs, made as scripts/build-image makes its own
    (image/bundle.sh, the build's key): v2 is the image's root with another release line;
    tampered is v2 with bytes changed in the middle of its file system."""
    root = os.path.join(work, "root-v2.ext4")
    Card(image).extract(SLOT_A, root)
    header = run("dumpe2fs", "-h", root).stdout
    os.truncate(root, int(re.search(r"Block count:\s+(\d+)", header).group(1))
                * int(re.search(r"Block size:\s+(\d+)", header).group(1)))
    release = os.path.join(work, "release")
    with open(release, "w") as f:
        f.write("0.1.0 boot-test-v2\n")
    run("debugfs", "-w", "-R", "rm /usr/share/genba/release", root)
    run("debugfs", "-w", "-R", f"write {release} /usr/share/genba/release", root)
    boot = os.path.join(work, "boot-v2")
    os.mkdir(boot)
    original = Card(image)  # not the card: the first boot is writing to it
    for name in original.fat_files("slot-a"):
        if name != "cmdline.txt":
            original.fat_get(f"slot-a/{name}", os.path.join(boot, name))
    v2 = os.path.join(work, "v2.raucb")
    started = time.monotonic()
    fast = dict(os.environ, BUNDLE_ZSTD_LEVEL="3")
    run("image/bundle.sh", root, boot, "0.1.0", "boot-test-v2", KEYS, v2, env=fast)
    log(f"v2 bundle: {os.path.getsize(v2)} bytes in {time.monotonic() - started:.0f} s")
    # broken: a genba that exits at once, so Genba never becomes ready on it.
    with open(release, "w") as f:
        f.write("0.1.0 boot-test-broken\n")
    genba = os.path.join(work, "genba-broken")
    with open(genba, "w") as f:
        f.write("#!/bin/sh\necho 'genba built broken on purpose by the boot test' >&2\nexit 1\n")
    for cmd in ("rm /usr/share/genba/release", f"write {release} /usr/share/genba/release",
                "rm /usr/bin/genba", f"write {genba} /usr/bin/genba",
                "sif /usr/bin/genba mode 0100755"):
        run("debugfs", "-w", "-R", cmd, root)
    broken = os.path.join(work, "broken.raucb")
    run("image/bundle.sh", root, boot, "0.1.0", "boot-test-broken", KEYS, broken, env=fast)
    os.remove(root)
    tampered = os.path.join(work, "tampered.raucb")
    shutil.copyfile(v2, tampered)
    with open(tampered, "r+b") as f:
        f.seek(os.path.getsize(tampered) // 2)
        block = f.read(4096)
        f.seek(-len(block), 1)
        f.write(bytes(b ^ 0x5A for b in block))
    return {"v2": v2, "tampered": tampered, "broken": broken}


def upload_on_console(base, bundle):
    """Logs in as admin and uploads the bundle on the console's Firmware page, as its form does
    (multipart: the CSRF token, then the file)."""
    jar = http.cookiejar.CookieJar()
    opener = urllib.request.build_opener(urllib.request.HTTPCookieProcessor(jar))
    form = urllib.parse.urlencode({"user": "admin", "password": ADMIN_PASSWORD,
                                   "next": "/firmware"}).encode()
    with opener.open(f"{base}/login", data=form, timeout=30) as r:
        page = r.read().decode()
    m = re.search(r'name="csrf" value="([^"]+)"', page)
    check(m is not None and 'id="pi-upload"' in page,
          "the console's Firmware page offers the admin the update upload")
    boundary = "genba-boot-test-5e1b"
    with open(bundle, "rb") as f:
        data = f.read()
    body = (f'--{boundary}\r\nContent-Disposition: form-data; name="csrf"\r\n\r\n{m.group(1)}\r\n'
            f'--{boundary}\r\nContent-Disposition: form-data; name="bundle"; '
            f'filename="{os.path.basename(bundle)}"\r\nContent-Type: application/octet-stream\r\n\r\n'
            ).encode() + data + f"\r\n--{boundary}--\r\n".encode()
    req = urllib.request.Request(f"{base}/firmware/pi-update", data=body, method="POST", headers={
        "content-type": f"multipart/form-data; boundary={boundary}"})
    with opener.open(req, timeout=300) as r:
        page = r.read().decode()
    check("Update bundle received" in page, f"the console took the {len(data)}-byte bundle")


def update_ab(work, card, vm, bundles, http_port, mqtt_port, mqtt, figures, timeout):
    """On the running slot A: the v2 bundle uploaded on the console, a power cut during its
    install; the next boot (slot A) installs it again and restarts into slot B, which is kept;
    then a broken bundle uploaded: slot A's trial fails and the Pi goes back to B by itself.
    Figures: install time and downtime."""
    base = f"http://127.0.0.1:{http_port}"
    log("A/B update: the v2 bundle uploaded on the console, and a power cut during its install")
    upload_on_console(base, bundles["v2"])
    log(vm.wait_console(r"genba-update: installing genba-update\.raucb[^\r\n]*", 600))
    time.sleep(5)
    vm.power_off()
    check("genba-update.raucb" not in card.fat_files(), "the refused card bundle is gone from the card")
    check(card.slot_prefix() == "slot-a/", "a power cut during the install leaves the Pi booting slot A")

    vm = Vm(work, card, http_port, mqtt_port, "boot3")
    ready, _ = vm.wait_ready(timeout)
    check("slot A (" in ready, f"after the power cut the Pi runs slot A again ({ready})")
    vm.wait_console(r"genba-update: installing[^\r\n]*", 600)
    log("ok: the uploaded bundle, still there after the power cut, is installed again")
    started = time.monotonic()
    log(vm.wait_console(r"genba-update: installed [^\r\n]*", 1200))
    figures["update: install of the bundle (s)"] = round(time.monotonic() - started, 1)
    down = time.monotonic()
    vm.wait_restart(300)
    check(card.slot_prefix() == "slot-b/", "after the install the Pi firmware is pointed at slot B")
    image_root, card_root = os.path.join(work, "root-orig.ext4"), os.path.join(work, "root.ext4")
    Card(card.original).extract(SLOT_A, image_root)
    card.extract(SLOT_A, card_root)
    same = run("cmp", "-s", image_root, card_root, ok_codes=(0, 1)).returncode == 0
    check(same, "slot A is byte-identical to the image's (mounted read-only; the update wrote B)")
    os.remove(image_root)
    os.remove(card_root)

    vm = Vm(work, card, http_port, mqtt_port, "boot4")
    ready, _ = vm.wait_ready(timeout)
    figures["update: downtime, restart to ready on slot B (s)"] = round(time.monotonic() - down, 1)
    log(ready)
    check("slot B (0.1.0 boot-test-v2)" in ready, "slot B runs the v2 root")
    check("genba-update: trying slot B once" in vm.console(), "slot B is on trial")
    log(vm.wait_console(r"genba-update: updated: slot B[^\r\n]*", 400))
    p = subprocess.run(["mosquitto_sub"] + mqtt + ["-t", "state/door", "-C", "1", "-W", "30"],
                       capture_output=True, text=True, timeout=60)
    check(p.stdout.strip() == "retained before the power cut",
          f"the retained message is there after the update ({p.stdout.strip()!r})")
    status, _ = notify(base, "kitchen/door", "after the update")
    check(status == 200, "/notify works on slot B")

    log("a broken bundle uploaded on the console: its genba exits at once")
    upload_on_console(base, bundles["broken"])
    log(vm.wait_console(r"genba-update: installed [^\r\n]*", 1200))
    vm.wait_restart(300)
    check(card.slot_prefix() == "slot-a/", "the broken bundle went into slot A, which boots next")
    vm = Vm(work, card, http_port, mqtt_port, "boot5")
    check("genba-update: trying slot A once" in vm.wait_console(r"genba-update: trying[^\r\n]*", timeout),
          "slot A is on trial")
    log(vm.wait_console(r"genba-update: failed: [^\r\n]*", timeout + UPDATE_DEADLINE))
    vm.wait_restart(300)
    check(card.slot_prefix() == "slot-b/", "after the failed trial the Pi firmware boots slot B again")
    vm = Vm(work, card, http_port, mqtt_port, "boot6")
    ready, _ = vm.wait_ready(timeout)
    check("slot B (0.1.0 boot-test-v2)" in ready, f"the Pi is back on v2 by itself ({ready})")
    status, _ = notify(base, "kitchen/door", "after the rollback")
    check(status == 200, "/notify works after the rollback")
    vm.power_off()


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("image")
    ap.add_argument("--timeout", type=int, default=900, help="seconds to wait for ready per boot")
    ap.add_argument("--keep", action="store_true", help="keep the work directory")
    args = ap.parse_args()

    work = tempfile.mkdtemp(prefix="genba-boot-test.")
    log(f"work dir {work}")
    card = Card(os.path.join(work, "card.img"), original=args.image)
    run("cp", "--sparse=always", args.image, card.path)
    original_size = os.path.getsize(card.path)
    os.truncate(card.path, original_size + GROW_MIB * 1024 * 1024)
    parts0 = card.partitions()

    slack = FakeSlack()
    settings = os.path.join(work, "genba-settings.toml")
    with open(settings, "w") as f:
        f.write(
            f'[admin]\npassword = "{ADMIN_PASSWORD}"\n\n'
            f'[[mqtt_users]]\nname = "{MQTT_USER}"\npassword = "{MQTT_PASSWORD}"\n\n'
            f'[[devices]]\nid = "{DEVICE}"\napi_key = "{DEVICE_KEY}"\n\n'
            f'[slack]\nwebhook_url = "http://10.0.2.2:{slack.port}/services/T0/B0/boot-test"\n'
        )
    card.fat_put(settings, "genba-settings.toml")
    check(card.slot_prefix() == "slot-a/", "a new card boots slot A")
    pi_cmdline = card.fat_read("slot-a/cmdline.txt")
    consoles = re.findall(r"\bconsole=([^\s,]+)", pi_cmdline)
    check(consoles[-1:] == ["tty0"] and "ttyS1" in consoles,
          f"slot A's cmdline.txt has the serial console ttyS1 and tty0 (HDMI) last: "
          f"{pi_cmdline.strip()!r}")
    check("root=PARTUUID=6e3b1a52-02" in pi_cmdline and "rauc.slot=A" in pi_cmdline,
          "slot A's cmdline.txt boots partition 2 as RAUC's slot A")
    # The bundles are made while the first boot runs (mksquashfs beside qemu).
    bundles = {}

    def make():
        try:
            bundles.update(make_bundles(work, args.image))
        except SystemExit:
            bundles["failed"] = True

    bundle_maker = threading.Thread(target=make)
    bundle_maker.start()

    http_port, mqtt_port = free_port(), free_port()
    base = f"http://127.0.0.1:{http_port}"
    figures = {}

    # --- first boot -------------------------------------------------------------------------
    log("first boot")
    vm = Vm(work, card, http_port, mqtt_port, "boot1")
    ready, seconds = vm.wait_ready(args.timeout)
    figures["first boot to ready (s)"] = round(seconds, 1)
    log(ready)
    log("ok: the genba-ready line is on the serial console (ttyAMA0), which is not /dev/console")
    check("slot A (" in ready, "the ready line says slot A")
    for unit in ("genba-broker", "genba-bridge", "genba-slack"):
        check(f"{unit}=active" in ready, f"{unit} is active")
    check("genba-exment=active" not in ready, "genba-exment is skipped (Exment not configured)")
    failed = re.findall(r"genba-failed: [^\r\n]*", vm.console())
    check(not failed, f"no failed units ({failed})")
    check("genba-firstboot: applied /boot/firmware/genba-settings.toml" in vm.console(),
          "firstboot applied the settings file (its line on the serial console)")

    status, body = request("GET", f"{base}/health")
    check(status == 200, f"GET /health answers 200 ({body[:80]!r})")
    status, _ = notify(base, "kitchen/door", "anonymous", auth=False)
    check(status == 401, "/notify without the admin password is refused (401)")
    status, body = notify(base, "kitchen/door", "http message from the boot test")
    check(status == 200, f"/notify with the admin password is accepted ({body[:80]!r})")
    pub = ["mosquitto_pub", "-h", "127.0.0.1", "-p", str(mqtt_port), "-q", "1",
           "-t", "kitchen/fridge", "-m", "mqtt message from the boot test"]
    p = subprocess.run(pub + ["-u", MQTT_USER, "-P", "wrong-password"], capture_output=True)
    check(p.returncode != 0, "MQTT with a wrong password is refused")
    p = subprocess.run(pub + ["-u", MQTT_USER, "-P", MQTT_PASSWORD], capture_output=True, text=True)
    check(p.returncode == 0, f"MQTT QoS 1 publish as {MQTT_USER} ({p.stderr.strip()})")
    reading = {
        "device_id": DEVICE, "ts_device": 1771156800000,
        "readings": [
            {"sensor_hw_id": "28FF4C3A91160457", "raw_celsius": 3.5, "offset_c": -0.25,
             "celsius": 3.25},
            {"sensor_hw_id": "28FF4C3A91160458", "raw_celsius": -18.0625, "offset_c": 0.0,
             "celsius": -18.0625},
        ],
    }
    status, body = request("POST", f"{base}/api/telemetry", json.dumps(reading).encode(),
                        {"content-type": "application/json", "x-api-key": DEVICE_KEY})
    check(status == 200 and json.loads(body).get("inserted") == 2,
          f"/api/telemetry with the device key stores 2 readings ({body!r})")
    status, _ = request("POST", f"{base}/api/telemetry", json.dumps(reading).encode(),
                     {"content-type": "application/json", "x-api-key": "not-a-key-0123456789"})
    check(status == 401, "/api/telemetry with an unknown key is refused (401)")
    wait_for("both messages at the fake Slack", 120,
             lambda: "http message from the boot test" in slack.all_text()
             and "mqtt message from the boot test" in slack.all_text())
    log("ok: the /notify and the MQTT message reached the fake Slack")

    # Broker state the power cut must not take: a retained message, and a persistent session
    # (MQTT 3.1.1 Clean Session 0) with a QoS 1 message queued while its client is away.
    auth = ["-u", MQTT_USER, "-P", MQTT_PASSWORD]
    mqtt = ["-h", "127.0.0.1", "-p", str(mqtt_port)] + auth
    p = subprocess.run(["mosquitto_pub"] + mqtt + ["-q", "1", "-r", "-t", "state/door",
                        "-m", "retained before the power cut"], capture_output=True, text=True)
    check(p.returncode == 0, f"retained QoS 1 publish ({p.stderr.strip()})")
    p = subprocess.run(["mosquitto_sub"] + mqtt + ["-c", "-i", "boot-keeper", "-q", "1",
                        "-t", "inbox/#", "-E"], capture_output=True, text=True, timeout=60)
    check(p.returncode == 0, f"persistent session subscribed and left ({p.stderr.strip()})")
    p = subprocess.run(["mosquitto_pub"] + mqtt + ["-q", "1", "-t", "inbox/x",
                        "-m", "queued before the power cut"], capture_output=True, text=True)
    check(p.returncode == 0, f"QoS 1 publish for the absent session ({p.stderr.strip()})")

    log("write burst, then a hard power-off in the middle of it")
    acked = burst(base, 6, vm)
    figures["acknowledged in the burst before the power cut"] = len(acked)
    check(len(acked) > 0, f"{len(acked)} burst messages acknowledged before the power cut")

    # --- second boot ------------------------------------------------------------------------
    bundle_maker.join()
    check("failed" not in bundles, "the v2 and tampered bundles were made")
    log("second boot after the power cut, with a tampered update bundle on the boot partition")
    card.fat_put(bundles["tampered"], "genba-update.raucb")
    vm = Vm(work, card, http_port, mqtt_port, "boot2")
    ready, seconds = vm.wait_ready(args.timeout)
    figures["boot to ready after the power cut (s)"] = round(seconds, 1)
    log(ready)
    check("genba-broker=active" in ready and "genba-bridge=active" in ready,
          "broker and bridge active again")
    status, _ = notify(base, "kitchen/door", "after the power cut")
    check(status == 200, "/notify works after the power cut")
    p = subprocess.run(["mosquitto_sub"] + mqtt + ["-t", "state/door", "-C", "1", "-W", "30"],
                       capture_output=True, text=True, timeout=60)
    check(p.stdout.strip() == "retained before the power cut",
          f"the retained message survived the power cut ({p.stdout.strip()!r} {p.stderr.strip()})")
    p = subprocess.run(["mosquitto_sub"] + mqtt + ["-c", "-i", "boot-keeper", "-q", "1",
                        "-t", "inbox/#", "-C", "1", "-W", "30"],
                       capture_output=True, text=True, timeout=60)
    check(p.stdout.strip() == "queued before the power cut",
          f"the persistent session and its queued message survived the power cut "
          f"({p.stdout.strip()!r} {p.stderr.strip()})")
    wait_for("every acknowledged burst message at the fake Slack", 300,
             lambda: all(m in slack.all_text() for m in acked + ["after the power cut"]))
    log(f"ok: all {len(acked)} acknowledged burst messages reached the fake Slack")
    refused = vm.wait_console(r"genba-update: refused genba-update\.raucb[^\r\n]*", 600)
    log(refused)
    check(re.search(r"refused genba-update\.raucb: \S", refused) is not None,
          "RAUC's reason is on the console line")

    # --- A/B update -------------------------------------------------------------------------
    update_ab(work, card, vm, bundles, http_port, mqtt_port, mqtt, figures, args.timeout)

    # --- the card, read on the host ---------------------------------------------------------
    log("reading the card on the host")
    files = card.fat_files()
    check("genba-settings.toml" not in files and "genba-settings-error.txt" not in files,
          "the settings file is gone from the boot partition")
    parts = card.partitions()
    check(parts[DATA][1] > parts0[DATA][1] + (GROW_MIB - 8) * 1024 * 1024,
          f"the data partition grew from {parts0[DATA][1] >> 20} to {parts[DATA][1] >> 20} MiB")
    slots = card.fat_read("genba-slot.txt")
    check("os_prefix=slot-b/" in slots and "# primary=B" in slots and "# state.B=good" in slots
          and "# state.A=bad" in slots,
          f"genba-slot.txt: slot B boots, primary and good; A bad ({slots!r})")
    results = card.fat_read("genba-update-result.txt")
    log("genba-update-result.txt:\n" + results)
    check("refused genba-update.raucb" in results and "slot B (0.1.0 boot-test-v2) is ready and kept"
          in results and "failed: Genba on slot A (0.1.0 boot-test-broken)" in results,
          "genba-update-result.txt on the card tells the refusal, the kept update and the failed one")
    data = os.path.join(work, "data.ext4")
    card.extract(DATA, data)
    fsck = run("e2fsck", "-fy", data, ok_codes=range(256))
    check(fsck.returncode in (0, 1),
          f"data file system consistent after its journal replay (e2fsck exit {fsck.returncode}: "
          f"{fsck.stdout.strip().splitlines()[-1:]})")
    header = run("dumpe2fs", "-h", data).stdout
    fs_bytes = (int(re.search(r"Block count:\s+(\d+)", header).group(1))
                * int(re.search(r"Block size:\s+(\d+)", header).group(1)))
    check(fs_bytes > (64 + GROW_MIB // 2) * 1024 * 1024,
          f"the data file system grew to {fs_bytes >> 20} MiB")
    stat = run("debugfs", "-R", "stat /genba/secrets.toml", data).stdout
    check(re.search(r"Mode:\s+0600", stat) is not None, "secrets.toml has mode 600")
    dbdir = os.path.join(work, "db")
    os.mkdir(dbdir)
    ls = run("debugfs", "-R", "ls -p /genba", data).stdout
    for name in ("genba.sqlite3", "genba.sqlite3-wal"):
        if f"/{name}/" in ls:
            run("debugfs", "-R", f"dump /genba/{name} {os.path.join(dbdir, name)}", data)
    db = sqlite3.connect(os.path.join(dbdir, "genba.sqlite3"))
    check(db.execute("PRAGMA integrity_check").fetchone()[0] == "ok",
          "the guest's SQLite database passes integrity_check")
    payloads = [r[0] if isinstance(r[0], str) else bytes(r[0]).decode("utf-8", "replace")
                for r in db.execute("SELECT payload FROM journal")]
    counts = {}
    for p in payloads:
        counts[p] = counts.get(p, 0) + 1
    missing = [m for m in acked if counts.get(m, 0) != 1]
    check(not missing, f"every acknowledged burst message is in the journal exactly once "
                       f"({len(acked)} acknowledged, {len(missing)} missing or duplicated)")
    for m in ("http message from the boot test", "mqtt message from the boot test",
              "after the power cut", "after the update", "after the rollback"):
        check(counts.get(m) == 1, f"journal holds {m!r}")
    rows = db.execute("SELECT COUNT(*) FROM readings WHERE device_id = ?", (DEVICE,)).fetchone()[0]
    check(rows == 2, f"the guest's readings table holds the {rows} readings of {DEVICE}")
    figures["journal rows"] = len(payloads)

    # --- the same image under the Pi 3 model ------------------------------------------------
    pi3_model_boot(work, args.image, figures, args.timeout)

    log("figures: " + json.dumps(figures))
    if args.keep:
        log(f"kept {work}")
    else:
        shutil.rmtree(work)
    log("boot test passed")


if __name__ == "__main__":
    main()
