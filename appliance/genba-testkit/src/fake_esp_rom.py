#!/usr/bin/env python3
"""A stand-in for an ESP32-C3's ROM serial loader on a pseudo-terminal, for tests of
`genba devices provision --write` (no board can be plugged into this machine).

It follows the serial protocol as Espressif documents it for esptool ("Serial Protocol":
SLIP framing, command and response packets, ROM status bytes, the flash commands with and
without compression, SPI_FLASH_MD5 in ASCII hex, GET_SECURITY_INFO) and keeps a 4 MB flash
in memory. Flash reads of the SPI peripheral answer a 4 MB chip's JEDEC id.

Usage: fake_esp_rom.py DUMP [--silent]
Prints the pty's path on the first line of stdout, then serves until killed. After every
completed write (and every MD5 request) the whole flash is saved to DUMP. With --silent it
answers nothing (a port with no loader behind it).
"""

import os
import struct
import sys
import tty
import zlib
import hashlib

FLASH_LEN = 0x400000
CHIP_ID_ESP32C3 = 5
SPI_BASE = 0x60002000  # SPI1 of the ESP32-C3
SPI_CMD, SPI_USR2, SPI_W0 = SPI_BASE, SPI_BASE + 0x20, SPI_BASE + 0x58
SPI_CMD_USR = 1 << 18
JEDEC_READ_ID = 0x9F
JEDEC_ID_4MB = 0x1640EF  # Winbond W25Q32: manufacturer 0xEF, type 0x40, 2^0x16 bytes

# command opcodes
FLASH_BEGIN, FLASH_DATA, FLASH_END = 0x02, 0x03, 0x04
SYNC, WRITE_REG, READ_REG = 0x08, 0x09, 0x0A
SPI_SET_PARAMS, SPI_ATTACH, CHANGE_BAUDRATE = 0x0B, 0x0D, 0x0F
FLASH_DEFL_BEGIN, FLASH_DEFL_DATA, FLASH_DEFL_END = 0x10, 0x11, 0x12
SPI_FLASH_MD5, GET_SECURITY_INFO = 0x13, 0x14

# ROM error codes (the second status byte)
ERR_INVALID_MESSAGE, ERR_BAD_CHECKSUM, ERR_BAD_DATA_LEN = 0x05, 0x06, 0x07
ERR_DEFLATE = 0xC9


def slip(frame):
    body = frame.replace(b"\xdb", b"\xdb\xdd").replace(b"\xc0", b"\xdb\xdc")
    return b"\xc0" + body + b"\xc0"


def unslip(body):
    return body.replace(b"\xdb\xdc", b"\xc0").replace(b"\xdb\xdd", b"\xdb")


class Rom:
    def __init__(self, dump):
        self.dump = dump
        self.flash = bytearray(b"\xff" * FLASH_LEN)
        self.regs = {}
        self.write = None  # (position, bytes left, decompressor or None)

    def save(self):
        tmp = self.dump + ".tmp"
        with open(tmp, "wb") as f:
            f.write(self.flash)
        os.replace(tmp, self.dump)

    def handle(self, packet):
        """The response to one command packet: (value, payload, error or 0)."""
        if len(packet) < 8 or packet[0] != 0:
            return None
        op, size, checksum = packet[1], *struct.unpack_from("<HI", packet, 2)
        data = packet[8:]
        if len(data) != size:
            return op, 0, b"", ERR_BAD_DATA_LEN
        words = [struct.unpack_from("<I", data, i)[0] for i in range(0, len(data) - len(data) % 4, 4)]
        if op == SYNC:
            return op, 0, b"", 0
        if op == READ_REG:
            addr = words[0]
            value = 0 if addr == SPI_CMD else self.regs.get(addr, 0)
            return op, value, b"", 0
        if op == WRITE_REG:
            for i in range(0, len(words) - 3, 4):
                addr, value = words[i], words[i + 1]
                self.regs[addr] = value
                if addr == SPI_CMD and value & SPI_CMD_USR:
                    if self.regs.get(SPI_USR2, 0) & 0xFFFF == JEDEC_READ_ID:
                        self.regs[SPI_W0] = JEDEC_ID_4MB
            return op, 0, b"", 0
        if op in (SPI_SET_PARAMS, SPI_ATTACH, CHANGE_BAUDRATE):
            return op, 0, b"", 0
        if op == GET_SECURITY_INFO:
            info = struct.pack("<IB7sII", 0, 0, bytes(7), CHIP_ID_ESP32C3, 0)
            return op, 0, info, 0
        if op in (FLASH_BEGIN, FLASH_DEFL_BEGIN):
            size, _blocks, _block_size, offset = words[:4]
            if offset + size > FLASH_LEN:
                return op, 0, b"", ERR_INVALID_MESSAGE
            # erase what will be written
            self.flash[offset:offset + size] = b"\xff" * size
            inflate = zlib.decompressobj() if op == FLASH_DEFL_BEGIN else None
            self.write = [offset, size, inflate]
            return op, 0, b"", 0
        if op in (FLASH_DATA, FLASH_DEFL_DATA):
            length = words[0]
            block = data[16:16 + length]
            expected = 0xEF
            for b in block:
                expected ^= b
            if expected != checksum or self.write is None:
                return op, 0, b"", ERR_BAD_CHECKSUM
            pos, left, inflate = self.write
            if inflate is not None:
                try:
                    block = inflate.decompress(block)
                except zlib.error:
                    return op, 0, b"", ERR_DEFLATE
            block = block[:left]
            self.flash[pos:pos + len(block)] = block
            self.write = [pos + len(block), left - len(block), inflate]
            if left - len(block) == 0:
                self.save()
            return op, 0, b"", 0
        if op in (FLASH_END, FLASH_DEFL_END):
            self.write = None
            self.save()
            return op, 0, b"", 0
        if op == SPI_FLASH_MD5:
            addr, size = words[0], words[1]
            self.save()
            digest = hashlib.md5(self.flash[addr:addr + size]).hexdigest().encode()
            return op, 0, digest, 0
        return op, 0, b"", ERR_INVALID_MESSAGE


def main():
    dump = sys.argv[1]
    silent = "--silent" in sys.argv[2:]
    debug = bool(os.environ.get("FAKE_ROM_DEBUG"))  # each command and its error code on stderr
    master, slave = os.openpty()
    tty.setraw(slave)  # no echo, no line editing, before anyone opens it
    print(os.ttyname(slave), flush=True)
    rom = Rom(dump)
    pending = b""
    while True:
        try:
            chunk = os.read(master, 65536)
        except OSError:
            continue
        if silent:
            continue
        pending += chunk
        while True:
            start = pending.find(b"\xc0")
            if start < 0:
                pending = b""
                break
            end = pending.find(b"\xc0", start + 1)
            if end < 0:
                pending = pending[start:]
                break
            body, pending = pending[start + 1:end], pending[end:]
            if not body:
                continue  # two delimiters in a row: the second starts the next frame
            answer = rom.handle(unslip(body))
            if debug:
                print("command", body[:2].hex(), "->", answer and answer[3], file=sys.stderr)
            if answer is None:
                continue
            op, value, payload, error = answer
            status = bytes([1 if error else 0, error, 0, 0])
            out = payload + status
            frame = slip(struct.pack("<BBHI", 1, op, len(out), value) + out)
            # the ROM answers a SYNC eight times
            os.write(master, frame * (8 if op == SYNC else 1))


if __name__ == "__main__":
    main()
