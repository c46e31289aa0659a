#!/usr/bin/env bash
# The Debian 12 host image of `cargo xtask test-deploy`: what a director host
# looks like before Ansible touches it, plus what the role would otherwise
# download (nftables, conntrackd), so that the VMs need no mirror.
#
# Usage: image.sh OUT_DIR MIRROR
# Leaves in OUT_DIR: image.raw (ext4, the root file system), vmlinuz,
# initrd.img, id_ed25519(.pub) (root's SSH key in the image). The caller keys
# OUT_DIR by this file's contents: any change here builds a new image.
set -euo pipefail

out=$1
mirror=$2
work="$out/build"
root="$work/root"

rm -rf "$work"
mkdir -p "$root"

cleanup() {
  for m in dev/pts dev proc sys; do
    umountpoint="$root/$m"
    if mountpoint -q "$umountpoint" 2>/dev/null; then umount -l "$umountpoint" || true; fi
  done
}
trap cleanup EXIT

echo "image: debootstrap bookworm from $mirror"
debootstrap --variant=minbase \
  --include=systemd-sysv,udev,dbus,openssh-server,sudo,python3,python3-apt,iproute2,iputils-ping,kmod,procps,nftables,conntrackd,ipvsadm,curl,ca-certificates \
  bookworm "$root" "$mirror" >"$work/debootstrap.log" 2>&1 || {
  tail -n 30 "$work/debootstrap.log" >&2
  exit 1
}

mount -t proc proc "$root/proc"
mount -t sysfs sys "$root/sys"
mount --bind /dev "$root/dev"
mount --bind /dev/pts "$root/dev/pts"

echo "image: kernel and initramfs"
chroot "$root" env DEBIAN_FRONTEND=noninteractive apt-get install -y -q --no-install-recommends \
  linux-image-amd64 initramfs-tools >"$work/kernel.log" 2>&1 || {
  tail -n 30 "$work/kernel.log" >&2
  exit 1
}
chroot "$root" apt-get clean
cleanup

# conntrackd is started by the director when a nat service needs it, not at
# boot by its own unit.
rm -f "$root/etc/systemd/system/multi-user.target.wants/conntrackd.service"

# The LAN address and the hostname come from the kernel command line
# (lab.addr=A/N, systemd.hostname=NAME); the second NIC gets qemu's
# user-mode network by DHCP (the SSH port forwarded from the host).
mkdir -p "$root/etc/systemd/network" "$root/usr/local/sbin"
cat >"$root/usr/local/sbin/lab-net" <<'EOF'
#!/bin/sh
# Writes the LAN's .network file from lab.addr= on the kernel command line.
addr=$(tr ' ' '\n' </proc/cmdline | sed -n 's/^lab\.addr=//p')
mkdir -p /run/systemd/network
if [ -n "$addr" ]; then
  printf '[Match]\nName=eth0\n\n[Network]\nAddress=%s\nLinkLocalAddressing=no\nIPv6AcceptRA=no\n' "$addr" \
    >/run/systemd/network/10-lan.network
fi
EOF
chmod 0755 "$root/usr/local/sbin/lab-net"
cat >"$root/etc/systemd/system/lab-net.service" <<'EOF'
[Unit]
Description=LAN address from the kernel command line
DefaultDependencies=no
Before=systemd-networkd.service
After=local-fs.target

[Service]
Type=oneshot
ExecStart=/usr/local/sbin/lab-net

[Install]
WantedBy=sysinit.target
EOF
mkdir -p "$root/etc/systemd/system/sysinit.target.wants"
ln -sf /etc/systemd/system/lab-net.service "$root/etc/systemd/system/sysinit.target.wants/lab-net.service"
cat >"$root/etc/systemd/network/20-user.network" <<'EOF'
[Match]
Name=eth1

[Network]
DHCP=ipv4
LinkLocalAddressing=no
IPv6AcceptRA=no

[DHCPv4]
UseDNS=no
# The LAN is the way to the other directors; the user network only carries SSH.
RouteMetric=2048
EOF
ln -sf /lib/systemd/system/systemd-networkd.service "$root/etc/systemd/system/multi-user.target.wants/systemd-networkd.service"
mkdir -p "$root/etc/systemd/system/sockets.target.wants" "$root/etc/systemd/system/network-online.target.wants"
ln -sf /lib/systemd/system/systemd-networkd.socket "$root/etc/systemd/system/sockets.target.wants/systemd-networkd.socket"
ln -sf /lib/systemd/system/systemd-networkd-wait-online.service "$root/etc/systemd/system/network-online.target.wants/systemd-networkd-wait-online.service"
# Nothing on the LAN answers DNS; names of the test's hosts resolve locally.
printf '127.0.0.1 localhost\n' >"$root/etc/hosts"
: >"$root/etc/resolv.conf"
printf '/dev/vda / ext4 rw,relatime 0 1\n' >"$root/etc/fstab"
# Each VM makes its own machine id at its first boot.
: >"$root/etc/machine-id"
rm -f "$root/var/lib/dbus/machine-id"
# Root logs in on the serial console without a password (the console is a
# log file of the test); SSH takes the key below only.
chroot "$root" passwd -d root >/dev/null
# No getty: nothing reads the console.
ln -sf /dev/null "$root/etc/systemd/system/serial-getty@ttyS0.service"
# Timers that only cost CPU under emulation.
for t in apt-daily.timer apt-daily-upgrade.timer e2scrub_all.timer fstrim.timer; do
  ln -sf /dev/null "$root/etc/systemd/system/$t"
done

rm -f "$out/id_ed25519" "$out/id_ed25519.pub"
ssh-keygen -q -t ed25519 -N '' -C director-test-deploy -f "$out/id_ed25519"
install -d -m 0700 "$root/root/.ssh"
install -m 0600 "$out/id_ed25519.pub" "$root/root/.ssh/authorized_keys"
printf 'UseDNS no\n' >"$root/etc/ssh/sshd_config.d/lab.conf"

cp "$root"/boot/vmlinuz-* "$out/vmlinuz"
cp "$root"/boot/initrd.img-* "$out/initrd.img"
chmod 0644 "$out/vmlinuz" "$out/initrd.img"

echo "image: ext4 file system"
rm -f "$out/image.raw"
mkfs.ext4 -q -L director-root -d "$root" "$out/image.raw" 3G
rm -rf "$work"
echo "image: done"
