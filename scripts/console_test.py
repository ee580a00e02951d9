#!/usr/bin/python3
"""The web console in a real browser: Debian's headless Chromium driven by Selenium through
chromedriver, against `genba up` with real users, real readings (HTTP and MQTT) and a rule.

Checks: login (wrong password refused, roles), device cards and their states, a value that
changes live after a reading is posted (no reload), the connection-lost banner, a chart with
the expected number of points, acknowledging an alarm with a note, the HACCP record (print
layout, Japanese, CSV rows), the send form's answer page, adding a thermometer (its config
file drives a simulated device; a board plugged into the Pi is written, here a stand-in for the
ESP32-C3's ROM loader on a pty), a 390 px phone layout, labels, contrast and keyboard focus,
and the weight of every page (gzip). Screenshots go to
$SCREENSHOT_DIR (default target/console-screenshots).

Run by scripts/test-console; prints 'console: N passed, N failed' last.
"""

import base64
import datetime
import gzip
import hashlib
import json
import struct
import os
import signal
import subprocess
import sys
import tempfile
import time
import traceback
import urllib.error
import urllib.request

from selenium import webdriver
from selenium.webdriver.chrome.service import Service as ChromeService
from selenium.webdriver.common.by import By
from selenium.webdriver.common.keys import Keys
from selenium.webdriver.support.ui import Select, WebDriverWait

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
GENBA = os.environ.get("GENBA_BIN", os.path.join(ROOT, "target", "debug", "genba"))
SHOTS = os.environ.get("SCREENSHOT_DIR", os.path.join(ROOT, "target", "console-screenshots"))
PAGE_BUDGET = 150 * 1024
PROBE = "28FF4C3A91160457"
FAKE_ROM = os.path.join(ROOT, "appliance", "genba-testkit", "src", "fake_esp_rom.py")
CONFIG_AT, CONFIG_LEN = 0x3F0000, 16384

results = []


def check(name):
    def wrap(fn):
        def run(*args):
            started = time.time()
            try:
                fn(*args)
                results.append((name, True))
                print(f"ok   {name} ({time.time() - started:.1f} s)", flush=True)
            except Exception:  # a failed check is reported, the others still run
                results.append((name, False))
                print(f"FAIL {name}", flush=True)
                traceback.print_exc()
        return run
    return wrap


def genba(*args, stdin=None, data_dir=None, config=None):
    cmd = [GENBA, *args]
    if config:
        cmd += ["--config", config]
    if data_dir:
        cmd += ["--data-dir", data_dir]
    out = subprocess.run(cmd, input=stdin, capture_output=True, text=True, timeout=60)
    if out.returncode != 0:
        raise RuntimeError(f"genba {' '.join(args)}: {out.stdout}{out.stderr}")
    return out.stdout.strip()


class Appliance:
    def __init__(self):
        self.dir = tempfile.mkdtemp(prefix="genba-console-")
        self.data = os.path.join(self.dir, "data")
        # "a board plugged into the Pi": the ROM loader's stand-in on a pty, offered by the form
        self.board_flash = os.path.join(self.dir, "board.flash")
        self.board = subprocess.Popen(["/usr/bin/python3", FAKE_ROM, self.board_flash],
                                      stdout=subprocess.PIPE, text=True)
        self.board_port = self.board.stdout.readline().strip()
        hashes = {u: genba("passwd", stdin=f"{u}-password\n") for u in ("admin", "cook", "guest")}
        users = "".join(
            f'[[http.users]]\nname = "{u}"\npassword_hash = "{h}"\n' for u, h in hashes.items()
        )
        self.config = os.path.join(self.dir, "genba.toml")
        with open(self.config, "w") as f:
            f.write(
                '[mqtt]\nlisten = "127.0.0.1:0"\n[http]\nlisten = "127.0.0.1:0"\n'
                + users
                + '[console]\nadmins = ["admin"]\noperators = ["cook"]\n'
                + f'board_ports = ["{self.board_port}"]\n'
                + '[devices]\nauto_provision = "all"\n'
                + f'[[rules]]\nname = "fridge-warm"\ndevice = "fridge-1"\nstream = "{PROBE}"\n'
                + 'condition = "above"\nthreshold = 8.0\nhysteresis = 0.5\nseverity = "critical"\n'
            )
        self.key = json.loads(genba("keys", "add", "--device", "fridge-1", "--json",
                                    config=self.config, data_dir=self.data))["key"]
        self.log = open(os.path.join(self.dir, "genba.log"), "w")
        self.proc = subprocess.Popen([GENBA, "up", "--config", self.config, "--data-dir", self.data],
                                     stdout=subprocess.DEVNULL, stderr=self.log)
        endpoints = os.path.join(self.data, "run", "endpoints.json")
        deadline = time.time() + 60
        while True:
            try:
                with open(endpoints) as f:
                    e = json.load(f)
                if e.get("pid") == self.proc.pid:
                    break
            except (OSError, ValueError):
                pass
            if time.time() > deadline or self.proc.poll() is not None:
                raise RuntimeError("genba up did not start; see " + self.log.name)
            time.sleep(0.1)
        self.http = "http://" + e["http"]
        self.mqtt_port = e["mqtt"].rsplit(":", 1)[1]

    def post_reading(self, ts_ms, celsius, fw="1.0.0"):
        at = datetime.datetime.fromtimestamp(ts_ms / 1000, datetime.timezone.utc)
        body = {
            "device_id": "fridge-1",
            "recorded_at": at.strftime("%Y-%m-%dT%H:%M:%SZ"),
            "ts_device": ts_ms,
            "rssi": -60,
            "fw": fw,
            "readings": [{"sensor_hw_id": PROBE, "raw_celsius": celsius, "offset_c": 0.0, "celsius": celsius}],
        }
        req = urllib.request.Request(self.http + "/api/telemetry", data=json.dumps(body).encode(),
                                     headers={"Content-Type": "application/json", "X-API-Key": self.key})
        with urllib.request.urlopen(req, timeout=10) as r:
            assert r.status == 200, r.status

    def mqtt(self, device, payload):
        subprocess.run(["mosquitto_pub", "-h", "127.0.0.1", "-p", self.mqtt_port, "-q", "1",
                        "-t", f"devices/{device}/telemetry", "-m", json.dumps(payload)],
                       check=True, timeout=30)

    def stop(self):
        self.board.kill()
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout=20)
            except subprocess.TimeoutExpired:
                self.proc.kill()


def esp32c3_image(version):
    """A small well-formed ESP32-C3 app image as `genba firmware add` takes it (esptool's
    layout: a 24-byte header with chip id 5, one segment that starts with the app descriptor,
    padding to 16 with the checksum byte, then the appended SHA-256 of all of it)."""
    desc = bytearray(256)
    desc[0:4] = struct.pack("<I", 0xABCD5432)
    desc[16:16 + len(version)] = version.encode()
    desc[48:48 + 16] = b"genba-fw-esp32c3"
    segment = bytes(desc) + b"\x5a" * 100
    out = bytearray([0xE9, 1, 2, 0x20]) + struct.pack("<I", 0x42000000) + bytes([0xEE, 0, 0, 0])
    out += struct.pack("<H", 5) + bytes([0, 0, 0, 0xFF, 0xFF, 0, 0, 0, 0, 1])
    out += struct.pack("<II", 0x3C000020, len(segment)) + segment
    while len(out) % 16 != 15:
        out.append(0)
    out.append(0xEF)
    return bytes(out) + hashlib.sha256(out).digest()


def board_image(app):
    """A whole-flash (4 MB) board image around `app`, laid out as
    firmware/esp32c3/partitions.csv says: a bootloader stub at 0, the partition table at
    0x8000 (32-byte entries: magic AA 50, type, subtype, offset, size, label), the app at
    0x10000 (ota_0), the rest erased."""
    board = bytearray(b"\xff" * 0x400000)
    board[0:4] = bytes([0xE9, 3, 2, 0x20])
    table = [("nvs", 1, 2, 0x9000, 0x4000), ("otadata", 1, 0, 0xD000, 0x2000),
             ("phy_init", 1, 1, 0xF000, 0x1000), ("ota_0", 0, 0x10, 0x10000, 0x1F0000),
             ("ota_1", 0, 0x11, 0x200000, 0x1F0000), ("config", 1, 6, 0x3F0000, 0x4000)]
    for i, (label, kind, sub, offset, size) in enumerate(table):
        entry = bytes([0xAA, 0x50, kind, sub]) + struct.pack("<II", offset, size)
        entry += label.encode().ljust(16, b"\0") + b"\0" * 4
        board[0x8000 + 32 * i:0x8000 + 32 * (i + 1)] = entry
    board[0x10000:0x10000 + len(app)] = app
    return bytes(board)


def browser():
    opts = webdriver.ChromeOptions()
    for a in ("--headless=new", "--no-sandbox", "--disable-gpu", "--window-size=1280,1000",
              "--disable-dev-shm-usage", "--lang=en-US"):
        opts.add_argument(a)
    opts.binary_location = "/usr/bin/chromium"
    service = ChromeService(executable_path="/usr/bin/chromedriver")
    return webdriver.Chrome(options=opts, service=service)


def wait(d, cond, timeout=20):
    return WebDriverWait(d, timeout, poll_frequency=0.2).until(lambda _: cond())


def shot(d, name):
    os.makedirs(SHOTS, exist_ok=True)
    height = d.execute_script("return document.documentElement.scrollHeight")
    width = d.get_window_size()["width"]
    d.set_window_size(width, min(max(height + 120, 600), 4000))
    d.save_screenshot(os.path.join(SHOTS, name + ".png"))


def login(d, base, user, password):
    """Logs in and waits for the answer (the redirect, or the login page's refusal)."""
    d.delete_all_cookies()
    d.get(base + "/login")
    d.find_element(By.ID, "user").send_keys(user)
    d.find_element(By.ID, "password").send_keys(password)
    d.find_element(By.CSS_SELECTOR, "form button[type=submit]").click()
    wait(d, lambda: "/login" not in d.current_url or "banner error" in d.page_source
         or d.find_elements(By.CSS_SELECTOR, ".banner.error"))


def session_cookie(d):
    c = d.get_cookie("genba_session")
    return f"genba_session={c['value']}" if c else ""


def fetch(url, cookie="", accept_status=(200,)):
    req = urllib.request.Request(url, headers={"Cookie": cookie, "Accept-Language": "en"})
    try:
        with urllib.request.urlopen(req, timeout=20) as r:
            return r.status, r.read(), r.headers
    except urllib.error.HTTPError as e:
        if e.code in accept_status:
            return e.code, e.read(), e.headers
        raise


def luminance(rgb):
    def chan(c):
        c = c / 255
        return c / 12.92 if c <= 0.03928 else ((c + 0.055) / 1.055) ** 2.4
    r, g, b = (chan(x) for x in rgb)
    return 0.2126 * r + 0.7152 * g + 0.0722 * b


def contrast(a, b):
    la, lb = sorted((luminance(a), luminance(b)), reverse=True)
    return (la + 0.05) / (lb + 0.05)


def rgb_of(css):
    inner = css[css.index("(") + 1:css.index(")")]
    return tuple(int(float(x)) for x in inner.split(",")[:3])


def main():
    a = Appliance()
    now = int(time.time() * 1000)
    # A fridge probe every 30 minutes for 6 hours, one value over 8 °C (raises the rule's alarm).
    values = [3.5, 3.8, 4.1, 3.9, 4.4, 3.6, 4.0, 3.7, 3.9, 4.2, 3.8, 4.0, 9.5]
    start = now - (len(values) - 1) * 30 * 60_000
    for i, c in enumerate(values):
        a.post_reading(start + i * 30 * 60_000, c)
    a.mqtt("line-3", {"temp": 21.5, "humidity": 40})
    d = browser()
    base = a.http
    try:
        run_checks(d, a, base, len(values))
    finally:
        d.quit()
        a.stop()
    passed = sum(1 for _, ok in results if ok)
    failed = len(results) - passed
    print(f"console: {passed} passed, {failed} failed")
    return 0 if failed == 0 else 1


def run_checks(d, a, base, n_values):
    @check("login: a page needs a login, a wrong password is refused, the right one lands on the page")
    def _():
        d.get(base + "/devices/fridge-1")
        wait(d, lambda: "/login" in d.current_url)
        login(d, base, "admin", "wrong")
        wait(d, lambda: "Wrong user name or password" in d.page_source)
        d.get(base + "/login?next=%2Fdevices%2Ffridge-1")
        d.find_element(By.ID, "user").send_keys("admin")
        d.find_element(By.ID, "password").send_keys("admin-password")
        d.find_element(By.CSS_SELECTOR, "form button[type=submit]").click()
        wait(d, lambda: d.current_url.endswith("/devices/fridge-1"))
        cookie = [c for c in d.get_cookies() if c["name"] == "genba_session"][0]
        assert cookie["httpOnly"] and cookie.get("sameSite") == "Strict", cookie
    _()

    @check("overview: one card per device, the one with an open alarm first and coloured")
    def _():
        wait(d, lambda: True)
        d.get(base + "/")
        wait(d, lambda: len(d.find_elements(By.CSS_SELECTOR, ".card")) == 2)
        cards = d.find_elements(By.CSS_SELECTOR, ".card")
        assert cards[0].get_attribute("id") == "device-fridge-1", [c.get_attribute("id") for c in cards]
        assert "alarm" in cards[0].get_attribute("class")
        assert "21.5" in d.find_element(By.ID, "device-line-3").text
        shot(d, "overview")
        d.set_window_size(1280, 1000)
    _()

    @check("live: a posted reading changes the card without a reload")
    def _():
        d.get(base + "/")
        d.execute_script("window.__noReload = 1")
        sel = '#device-line-3 [data-stream="temp"]'
        wait(d, lambda: d.find_element(By.CSS_SELECTOR, sel).text == "21.5")
        time.sleep(1.5)  # let the event stream connect
        a.mqtt("line-3", {"temp": 22.75, "humidity": 41})
        wait(d, lambda: d.find_element(By.CSS_SELECTOR, sel).text == "22.75", timeout=30)
        assert d.execute_script("return window.__noReload") == 1, "the page was reloaded"
    _()

    @check("device: a chart per stream with one point per reading, the threshold and the alarm")
    def _():
        d.get(base + "/devices/fridge-1")
        fig = d.find_element(By.CSS_SELECTOR, f'figure[data-stream="{PROBE}"]')
        assert fig.get_attribute("data-points") == str(n_values), fig.get_attribute("data-points")
        points = d.execute_script(
            "var p = arguments[0].querySelectorAll('polyline');"
            "return p[p.length - 1].getAttribute('points').trim().split(/\\s+/).length", fig)
        assert points == n_values, points
        assert len(fig.find_elements(By.CSS_SELECTOR, "rect[opacity], rect[fill-opacity]")) >= 1, "no alarm shading"
        shot(d, "device")
        d.set_window_size(1280, 1000)
    _()

    @check("alarms: acknowledge with a required corrective-action note, shown with who and when")
    def _():
        d.get(base + "/alarms")
        row = d.find_element(By.CSS_SELECTOR, "tr[data-state=raised]")
        note = row.find_element(By.TAG_NAME, "textarea")
        assert note.get_attribute("required") is not None
        row.find_element(By.CSS_SELECTOR, "button[type=submit]").click()
        assert "/alarms/" not in d.current_url, "an empty note was submitted"
        note.send_keys("moved stock to fridge 2; door seal replaced")
        row.find_element(By.CSS_SELECTOR, "button[type=submit]").click()
        wait(d, lambda: "acked=1" in d.current_url)
        row = d.find_element(By.CSS_SELECTOR, "tr[data-state=acknowledged]")
        assert "moved stock to fridge 2" in row.text and "admin" in row.text, row.text
        shot(d, "alarms")
        d.set_window_size(1280, 1000)
    _()

    today = datetime.datetime.now().strftime("%Y-%m-%d")

    @check("HACCP record: check slots per probe, the deviation with its action, sign-off, print layout")
    def _():
        d.get(base + f"/haccp?day={today}")
        table = d.find_elements(By.CSS_SELECTOR, "main table")[0]
        cells = [c.text for c in table.find_elements(By.CSS_SELECTOR, "td.num") if c.text]
        assert "9.5" in cells, cells
        assert "moved stock to fridge 2" in d.page_source
        assert d.find_element(By.CSS_SELECTOR, ".signoff").is_displayed()
        shot(d, "haccp")
        d.set_window_size(1280, 1000)
        d.execute_cdp_cmd("Emulation.setEmulatedMedia", {"media": "print"})
        try:
            assert not d.find_element(By.TAG_NAME, "header").is_displayed(), "navigation printed"
            assert not d.find_element(By.CSS_SELECTOR, "form.noprint").is_displayed()
            assert d.find_element(By.CSS_SELECTOR, ".signoff").is_displayed()
            shot(d, "haccp-print")
        finally:
            d.execute_cdp_cmd("Emulation.setEmulatedMedia", {"media": ""})
            d.set_window_size(1280, 1000)
    _()

    @check("HACCP record in Japanese, chosen on the page")
    def _():
        d.get(base + f"/haccp?day={today}&lang=ja")
        assert d.find_element(By.TAG_NAME, "h1").text == "HACCP記録"
        assert d.find_element(By.TAG_NAME, "html").get_attribute("lang") == "ja"
        shot(d, "haccp-ja")
        d.get(base + "/?lang=en")
        d.set_window_size(1280, 1000)
    _()

    @check("HACCP CSV: one row per check slot and one per deviation")
    def _():
        status, body, headers = fetch(base + f"/haccp.csv?day={today}", session_cookie(d))
        assert status == 200 and "text/csv" in headers["Content-Type"]
        rows = body.decode("utf-8-sig").strip().split("\r\n")
        assert rows[0].startswith("record,device,location,probe,check_time,celsius"), rows[0]
        checks = [r for r in rows[1:] if r.startswith("check,fridge-1,")]
        deviations = [r for r in rows[1:] if r.startswith("deviation,fridge-1,")]
        assert len(checks) >= 1 and all(r.split(",")[3] == PROBE for r in checks), checks
        assert len(deviations) == 1 and "moved stock to fridge 2" in deviations[0], deviations
    _()

    @check("send: the form answers with a page saying it was sent, not JSON")
    def _():
        d.get(base + "/send")
        d.find_element(By.ID, "message").send_keys("reception call")
        d.find_element(By.CSS_SELECTOR, "main form button[type=submit]").click()
        wait(d, lambda: "Sent." in d.page_source)
        assert "{\"ok\"" not in d.page_source
    _()

    @check("firmware: kept images, the version each device runs, an update queued from the page")
    def _():
        shas = {}
        for version in ("1.0.0", "1.1.0"):
            path = os.path.join(a.dir, f"fw-{version}.bin")
            with open(path, "wb") as f:
                f.write(esp32c3_image(version))
            added = json.loads(genba("firmware", "add", path, "--json", config=a.config, data_dir=a.data))
            shas[version] = added["image"]["sha256"]
        d.get(base + "/firmware")
        rows = {r.get_attribute("data-version"): [td.text for td in r.find_elements(By.TAG_NAME, "td")]
                for r in d.find_elements(By.CSS_SELECTOR, "#firmware-images tbody tr")}
        assert set(rows) == {"1.0.0", "1.1.0"}, rows
        assert rows["1.1.0"][3].startswith(shas["1.1.0"][:12]), rows
        # fridge-1's batches say 1.0.0; line-3 (MQTT JSON without fw) reports none.
        assert rows["1.0.0"][5] == "1" and rows["1.1.0"][5] == "0", rows
        assert d.find_element(By.CSS_SELECTOR, "#fw-fridge-1 .firmware").text == "1.0.0"
        assert d.find_element(By.CSS_SELECTOR, "#fw-line-3 .firmware").text == "not reported"
        sub = subprocess.Popen(["mosquitto_sub", "-h", "127.0.0.1", "-p", a.mqtt_port, "-q", "1",
                                "-t", "devices/fridge-1/commands", "-C", "1", "-W", "20"],
                               stdout=subprocess.PIPE, text=True)
        time.sleep(0.5)  # subscribed before the command is published
        row = d.find_element(By.ID, "fw-fridge-1")
        offered = {o.get_attribute("value"): o.get_attribute("disabled") is None
                   for o in row.find_elements(By.CSS_SELECTOR, "select option")}
        assert offered == {shas["1.0.0"]: False, shas["1.1.0"]: True}, offered  # not the one it runs
        row.find_element(By.CSS_SELECTOR, f"option[value='{shas['1.1.0']}']").click()
        row.find_element(By.CSS_SELECTOR, "button[type=submit]").click()
        wait(d, lambda: "Update queued for the device." in d.page_source)
        asked = lambda: d.find_element(By.CSS_SELECTOR, "#fw-fridge-1 .asked").text
        assert "1.1.0" in asked() and "admin" in asked() and "waiting for its next report" in asked(), asked()
        assert not d.find_elements(By.CSS_SELECTOR, "#fw-line-3 form"), "line-3 reports no Genba firmware"
        shot(d, "firmware")
        out, _err = sub.communicate(timeout=30)
        cmd = json.loads(out)
        assert cmd["cmd"] == "update" and cmd["version"] == "1.1.0" and cmd["sha256"] == shas["1.1.0"], cmd
        assert cmd["size"] == len(esp32c3_image("1.1.0")), cmd
        status, body, _h = fetch(base + f"/firmware/{shas['1.1.0']}.bin")
        assert status == 200 and hashlib.sha256(body).hexdigest() == shas["1.1.0"]
        # What the device reports next says whether it took the update.
        for fw, state in (("1.0.0", "reported since without it"), ("1.1.0", "running it")):
            a.post_reading(int(time.time() * 1000) + 1000, 4.0, fw=fw)
            wait(d, lambda: d.get(base + "/firmware") or state in asked())
        # The Pi's own update: the admin uploads a bundle through the page's form (the browser's
        # multipart post); it is kept whole for the image's installer.
        bundle = b"hsqs" + os.urandom(300_000)
        path = os.path.join(a.data, "upload-test.raucb")
        with open(path, "wb") as f:
            f.write(bundle)
        assert "not the SD-card image" in d.find_element(By.ID, "pi-running").text
        d.find_element(By.CSS_SELECTOR, "#pi-upload input[type=file]").send_keys(path)
        d.find_element(By.CSS_SELECTOR, "#pi-upload button[type=submit]").click()
        wait(d, lambda: "Update bundle received" in d.page_source)
        assert d.find_elements(By.ID, "pi-pending")
        with open(os.path.join(a.data, "updates", "genba-update.raucb"), "rb") as f:
            assert f.read() == bundle
    _()

    @check("add a thermometer: a refusal marks its field, then the device's config file comes once and a device made from it reports")
    def _():
        # the Pi keeps a board image (firmware 1.2.0): the answer offers it for a new board
        app = esp32c3_image("1.2.0")
        board = board_image(app)
        a.kept_board = board
        path = os.path.join(a.dir, "genba-fw-esp32c3-full-4MB.bin")
        with open(path, "wb") as f:
            f.write(board)
        added = json.loads(genba("firmware", "add", path, "--json", config=a.config, data_dir=a.data))
        assert added["image"]["board_size"] == len(board), added
        d.get(base + "/")
        d.find_element(By.ID, "add-device").click()
        wait(d, lambda: d.current_url.endswith("/provision"))
        d.find_element(By.ID, "id").send_keys("fridge-7")
        d.find_element(By.ID, "wifi_ssid").send_keys("shop-floor")
        d.find_element(By.ID, "wifi_pass").send_keys("short")
        # the browser reached the Pi on loopback, which a device cannot use: the form leaves it to us
        appliance = d.find_element(By.ID, "appliance")
        assert appliance.get_attribute("value") == "", appliance.get_attribute("value")
        appliance.send_keys("127.0.0.1")
        d.find_element(By.ID, "interval").clear()
        d.find_element(By.ID, "interval").send_keys("5")
        # a board is plugged into the Pi (the next check), but this one is written from a computer
        Select(d.find_element(By.ID, "write_port")).select_by_value("")
        shot(d, "provision-form")
        d.find_element(By.CSS_SELECTOR, "#provision button[type=submit]").click()
        wait(d, lambda: d.find_elements(By.CSS_SELECTOR, ".banner.error"))
        assert d.find_element(By.ID, "wifi_pass").get_attribute("aria-invalid") == "true"
        assert "wifi_pass" in d.find_element(By.CSS_SELECTOR, ".banner.error").text
        assert d.find_element(By.ID, "id").get_attribute("value") == "fridge-7", "typed values stay"
        status, _b, _h = fetch(base + "/devices/fridge-7", session_cookie(d), accept_status=(404,))
        assert status == 404, "a refused form registers nothing"
        d.find_element(By.ID, "wifi_pass").send_keys("a long pass phrase")
        d.find_element(By.CSS_SELECTOR, "#provision button[type=submit]").click()
        wait(d, lambda: d.find_elements(By.ID, "config-download"))
        link = d.find_element(By.ID, "config-download")
        assert link.get_attribute("download") == "fridge-7.genba-config.bin"
        assert d.find_element(By.ID, "flash-command").text == "espflash write-bin 0x3f0000 fridge-7.genba-config.bin"
        shot(d, "provision")
        board_link = d.find_element(By.CSS_SELECTOR, "#new-board a")
        assert board_link.get_attribute("download") == "genba-fw-1.2.0-board.bin"
        status, body, _h = fetch(board_link.get_attribute("href"))
        assert status == 200 and body == board, (status, len(body))
        assert "espflash write-bin 0x0 genba-fw-1.2.0-board.bin" in d.find_element(By.ID, "new-board").text
        # One image for a new board, made in the browser: the board image with this config
        # file at the config partition's offset, saved as a download.
        downloads = os.path.join(a.dir, "downloads")
        os.makedirs(downloads, exist_ok=True)
        d.execute_cdp_cmd("Browser.setDownloadBehavior", {"behavior": "allow", "downloadPath": downloads})
        assert d.find_element(By.ID, "whole").is_displayed(), "the script shows the one-image box"
        assert d.find_element(By.ID, "whole-command").text == "espflash write-bin 0x0 fridge-7.genba-board.bin"
        d.find_element(By.ID, "whole-image").click()
        whole_path = os.path.join(downloads, "fridge-7.genba-board.bin")
        wait(d, lambda: os.path.exists(whole_path) and os.path.getsize(whole_path) == len(board), timeout=30)
        with open(whole_path, "rb") as f:
            whole = f.read()
        config = base64.b64decode(link.get_attribute("href").split(",", 1)[1])
        expected = board[:0x3F0000] + config + board[0x3F0000 + len(config):]
        assert whole == expected, "the whole image is the board image with the config at 0x3f0000"
        href = link.get_attribute("href")
        prefix = "data:application/octet-stream;base64,"
        assert href.startswith(prefix), href[:60]
        path = os.path.join(a.dir, "fridge-7.genba-config.bin")
        with open(path, "wb") as f:
            f.write(base64.b64decode(href[len(prefix):]))
        # `genba simulate` plays the device this file describes: its id, its own key, this Pi.
        genba("simulate", "--device-config", path, "--batches", "1", "--interval", "0.2",
              config=a.config, data_dir=a.data)
        d.get(base + "/")
        wait(d, lambda: d.find_elements(By.ID, "device-fridge-7"))
        assert "ok" in d.find_element(By.CSS_SELECTOR, "#device-fridge-7 .state").get_attribute("class")
    _()

    @check("add a thermometer plugged into the Pi: the Pi writes the board image with the config, hands nothing over, and the board reports")
    def _():
        board = a.kept_board  # the board image the previous check added (firmware 1.2.0)
        d.get(base + "/provision")
        port = d.find_element(By.ID, "write_port")
        assert port.get_attribute("value") == a.board_port, "the one board plugged in is picked"
        d.find_element(By.ID, "id").send_keys("fridge-8")
        d.find_element(By.ID, "wifi_ssid").send_keys("shop-floor")
        d.find_element(By.ID, "wifi_pass").send_keys("a long pass phrase")
        d.find_element(By.ID, "appliance").send_keys("127.0.0.1")
        d.find_element(By.ID, "interval").clear()
        d.find_element(By.ID, "interval").send_keys("5")
        # the stand-in cannot be reset by the serial lines, as a board held in its loader
        d.find_element(By.ID, "no_reset").click()
        d.execute_script("document.getElementById('usb').scrollIntoView()")
        shot(d, "provision-usb-form")
        d.find_element(By.CSS_SELECTOR, "#provision button[type=submit]").click()
        wait(d, lambda: d.find_elements(By.ID, "written"), timeout=60)
        written = d.find_element(By.ID, "written").text
        assert a.board_port in written and "firmware 1.2.0 with the config" in written, written
        assert not d.find_elements(By.ID, "config-download"), "the secrets went to the board only"
        shot(d, "provision-usb")
        with open(a.board_flash, "rb") as f:
            flash = f.read()
        assert len(flash) == len(board)
        assert flash[:CONFIG_AT] == board[:CONFIG_AT], "the board image, up to the config partition"
        assert flash[CONFIG_AT + CONFIG_LEN:] == board[CONFIG_AT + CONFIG_LEN:]
        # the config the board got drives a simulated device: it reports to this Pi with its key
        path = os.path.join(a.dir, "fridge-8.from-board.bin")
        with open(path, "wb") as f:
            f.write(flash[CONFIG_AT:CONFIG_AT + CONFIG_LEN])
        genba("simulate", "--device-config", path, "--batches", "1", "--interval", "0.2",
              config=a.config, data_dir=a.data)
        d.get(base + "/")
        wait(d, lambda: d.find_elements(By.ID, "device-fridge-8"))
    _()

    @check("roles: a viewer sees alarms but cannot acknowledge or send commands")
    def _():
        login(d, base, "guest", "guest-password")
        wait(d, lambda: d.current_url.rstrip("/") == base)
        d.get(base + "/alarms")
        assert not d.find_elements(By.TAG_NAME, "textarea")
        d.get(base + "/devices/fridge-1")
        assert not d.find_elements(By.ID, "command")
        d.get(base + "/firmware")
        assert d.find_elements(By.ID, "fw-fridge-1") and not d.find_elements(By.CSS_SELECTOR, "#firmware-devices form")
        assert not d.find_elements(By.ID, "pi-upload"), "only admins upload an update of the Pi"
        d.get(base + "/")
        assert not d.find_elements(By.ID, "add-device"), "only admins add devices"
        status, _b, _h = fetch(base + "/provision", session_cookie(d), accept_status=(403,))
        assert status == 403, status
        login(d, base, "cook", "cook-password")
        d.get(base + "/devices/fridge-1")
        assert d.find_elements(By.ID, "command") and not d.find_elements(By.ID, "name")
        login(d, base, "admin", "admin-password")
        wait(d, lambda: d.current_url.rstrip("/") == base)
    _()

    @check("phone: 390 px wide without sideways scrolling")
    def _():
        d.set_window_size(390, 844)
        for path in ("/", "/devices/fridge-1", "/alarms", f"/haccp?day={today}", "/firmware", "/provision"):
            d.get(base + path)
            width = d.execute_script("return document.documentElement.scrollWidth")
            assert width <= 390, (path, width)
        d.get(base + "/firmware")
        d.save_screenshot(os.path.join(SHOTS, "firmware-phone.png"))
        d.get(base + "/")
        d.save_screenshot(os.path.join(SHOTS, "overview-phone.png"))
        d.set_window_size(1280, 1000)
    _()

    @check("accessibility: every field has a label, text contrast >= 4.5, keyboard focus visible")
    def _():
        for path in ("/", "/devices/fridge-1", "/alarms", f"/haccp?day={today}", "/firmware", "/send", "/provision"):
            d.get(base + path)
            unlabeled = d.execute_script(
                "return Array.from(document.querySelectorAll('input,textarea,select'))"
                ".filter(e => e.type !== 'hidden')"
                ".filter(e => !(e.id && document.querySelector('label[for=\"' + e.id + '\"]')) && !e.getAttribute('aria-label'))"
                ".map(e => e.name)")
            assert not unlabeled, (path, unlabeled)
        d.get(base + "/")
        pairs = d.execute_script(
            "function bg(e){while(e){var c=getComputedStyle(e).backgroundColor;"
            "if(c && c!=='rgba(0, 0, 0, 0)' && c!=='transparent')return c;e=e.parentElement}return 'rgb(255,255,255)'}"
            "return Array.from(document.querySelectorAll('h1,.card h3 span,.vals span,.seen,header a,.state,.banner'))"
            ".map(e => [e.tagName + '.' + e.className, getComputedStyle(e).color, bg(e)])")
        low = [(n, round(contrast(rgb_of(c), rgb_of(b)), 2)) for n, c, b in pairs if contrast(rgb_of(c), rgb_of(b)) < 4.5]
        assert not low, low
        body = d.find_element(By.TAG_NAME, "body")
        body.send_keys(Keys.TAB)
        focused = d.switch_to.active_element
        assert focused.tag_name == "a", focused.tag_name
        outline = focused.value_of_css_property("outline-style")
        assert outline not in ("none", ""), outline
    _()

    @check("page weight: every page with its CSS and JS under 150 KB gzip")
    def _():
        cookie = session_cookie(d)
        assets = sum(len(gzip.compress(fetch(base + p, cookie)[1])) for p in ("/assets/console.css", "/assets/console.js"))
        for path in ("/", "/devices/fridge-1?range=1y", "/alarms", f"/haccp?month={today[:7]}", "/delivery", "/firmware", "/send", "/provision"):
            html = fetch(base + path, cookie)[1]
            total = len(gzip.compress(html)) + assets
            print(f"     page weight {path}: {len(html)} B html, {total} B gzip with assets")
            assert total < PAGE_BUDGET, (path, total)
    _()

    @check("connection lost: the overview says so when the appliance stops")
    def _():
        d.get(base + "/")
        time.sleep(1.5)
        a.stop()
        wait(d, lambda: d.find_element(By.ID, "live-lost").is_displayed(), timeout=30)
        shot(d, "connection-lost")
    _()


if __name__ == "__main__":
    sys.exit(main())
