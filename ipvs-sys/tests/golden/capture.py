#!/usr/bin/env python3
"""Captures the IPVS netlink messages of real ipvsadm runs, as golden files.

Run it under a kernel with IPVS, as root, from the checkout:

    cargo xtask vm -- python3 ipvs-sys/tests/golden/capture.py

Each ipvsadm command below runs under `strace -e write=all -e read=all` in a
fresh network namespace; the netlink messages of the IPVS family it sent and
received are written to ipvs-sys/tests/golden/NAME.txt as hex, one message per
line (`>` sent by ipvsadm, `<` sent by the kernel), under a header that names the
command. The golden test decodes every message and re-encodes it to the same
bytes.
"""

import os
import re
import subprocess
import sys

HERE = os.path.dirname(os.path.abspath(__file__))
NETNS = "ipvs-golden"

# (file name, setup commands not captured, the captured ipvsadm arguments)
CASES = [
    ("add_service_tcp_rr", [], "-A -t 10.10.0.200:80 -s rr"),
    ("add_dest_masq", [], "-a -t 10.10.0.200:80 -r 10.10.0.21:30080 -m -w 1"),
    ("edit_dest_weight", [], "-e -t 10.10.0.200:80 -r 10.10.0.21:30080 -m -w 5"),
    ("add_dest_tunnel_gue", [], "-a -t 10.10.0.200:80 -r 10.10.0.22:30080 -i --tun-type gue --tun-port 6080 --tun-csum -w 3"),
    ("add_service_udp_sh_persistent", [], "-A -u 10.10.0.201:53 -s sh -b sh-fallback,sh-port -p 300 -M 255.255.255.0"),
    ("edit_service_scheduler", [], "-E -u 10.10.0.201:53 -s wrr"),
    ("add_service_fwmark", [], "-A -f 7 -s wlc"),
    ("add_service_v6_mh", [], "-A -t [fd10:10::200]:443 -s mh -b mh-port -p 60"),
    ("add_dest_v6_route_thresholds", [], "-a -t [fd10:10::200]:443 -r [fd10:10::21]:443 -g -w 2 -x 100 -y 10"),
    ("list", [], "-Ln --stats"),
    ("set_timeouts", [], "--set 900 120 300"),
    ("get_timeouts", [], "-L --timeout"),
    ("start_daemon", ["ip link add sync0 type dummy", "ip link set sync0 up multicast on"],
     "--start-daemon master --mcast-interface sync0 --syncid 5"),
    ("list_daemons", [], "-L --daemon"),
    ("stop_daemon", [], "--stop-daemon master"),
    ("del_dest", [], "-d -t 10.10.0.200:80 -r 10.10.0.21:30080"),
    ("zero", [], "-Z"),
    ("del_service", [], "-D -t 10.10.0.200:80"),
    ("error_no_such_scheduler", [], "-A -t 10.10.0.202:80 -s nosuch"),
    ("error_exists", [], "-A -u 10.10.0.201:53 -s rr"),
    ("flush", [], "-C"),
]

# strace's hex dump: " | 00010  03 01 00 00 09 00 02 00  49 50 56 53 00 00 00 00  ascii |"
DUMP_LINE = re.compile(r"^ \| [0-9a-f]{5}  (.{49})")
NLCTRL = 0x10
NLMSG_ERROR = 2
NLMSG_DONE = 3


def run(cmd):
    subprocess.run(cmd, shell=True, check=True)


def messages(blob):
    """Splits a buffer into netlink messages."""
    out = []
    i = 0
    while i + 16 <= len(blob):
        length = int.from_bytes(blob[i:i + 4], "little")
        if length < 16:
            break
        out.append(blob[i:i + length])
        i += (length + 3) & ~3
    return out


def capture(args):
    """Runs ipvsadm under strace; the (direction, bytes) of each IPVS message."""
    proc = subprocess.run(
        f"ip netns exec {NETNS} strace -e trace=sendmsg,recvmsg,sendto,recvfrom -e write=all -e read=all ipvsadm {args}",
        shell=True, capture_output=True, text=True)
    calls = []
    current = None
    for line in proc.stderr.splitlines():
        if line.startswith(("sendmsg(", "recvmsg(", "sendto(", "recvfrom(")):
            peek = "MSG_PEEK" in line
            current = None if peek else (">" if line.startswith("send") else "<", bytearray())
            if current is not None:
                calls.append(current)
            continue
        m = DUMP_LINE.match(line)
        if m and current is not None:
            current[1].extend(bytes.fromhex(m.group(1).replace(" ", "")))
    family = None
    out = []
    for direction, blob in calls:
        for msg in messages(bytes(blob)):
            kind = int.from_bytes(msg[4:6], "little")
            if kind == NLCTRL:
                continue
            if kind in (NLMSG_ERROR, NLMSG_DONE):
                if family is not None:
                    out.append((direction, msg))
                continue
            family = kind
            out.append((direction, msg))
    return proc.returncode, out


def main():
    run("modprobe ip_vs")
    for sched in ["rr", "wrr", "wlc", "sh", "mh"]:
        run(f"modprobe ip_vs_{sched}")
    kernel = os.uname().release
    version = subprocess.run("ipvsadm --version", shell=True, capture_output=True, text=True).stdout.strip()
    run(f"ip netns add {NETNS}")
    try:
        run(f"ip netns exec {NETNS} ip link set lo up")
        for name, setup, args in CASES:
            for cmd in setup:
                run(f"ip netns exec {NETNS} {cmd}")
            code, msgs = capture(args)
            path = os.path.join(HERE, f"{name}.txt")
            with open(path, "w") as f:
                f.write(f"# ipvsadm {args}\n")
                f.write(f"# exit code {code}; kernel {kernel}; {version}\n")
                f.write("# captured by ipvs-sys/tests/golden/capture.py (strace of the netlink socket)\n")
                for direction, msg in msgs:
                    f.write(f"{direction} {msg.hex()}\n")
            print(f"{name}: {len(msgs)} messages, ipvsadm exit {code}")
    finally:
        run(f"ip netns del {NETNS}")


if __name__ == "__main__":
    sys.exit(main())
