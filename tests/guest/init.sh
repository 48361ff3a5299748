#!/bin/busybox sh
# /init of the test guest (busybox, Debian's kernel): loads virtio-blk and ext4, runs the
# workload named by guest.mode= on the kernel command line against /dev/vda, prints
# "GUEST-OK <mode>" or "GUEST-FAIL <mode>: <why>" on the serial console, powers off.
/bin/busybox mkdir -p /proc /sys /dev /mnt /tmp /bin /sbin
/bin/busybox --install -s /bin
mount -t proc proc /proc
mount -t sysfs sys /sys
mount -t devtmpfs dev /dev 2>/dev/null
for m in $(cat /etc/modules); do
  insmod "/lib/modules/$m.ko" || echo "GUEST: insmod $m failed"
done

arg() { sed -n "s/.*guest\.$1=\([^ ]*\).*/\1/p" /proc/cmdline; }
MODE=$(arg mode)
SEED=$(arg seed)
COUNT=$(arg count)
PAUSE=$(arg pause)
say() { echo "GUEST: $*"; }
ok() { echo "GUEST-OK $MODE"; poweroff -f; }
fail() { echo "GUEST-FAIL $MODE: $*"; poweroff -f; }

n=0
while [ ! -b /dev/vda ]; do
  n=$((n + 1)); [ $n -gt 200 ] && fail "no /dev/vda"; usleep 50000
done

# block N: 64 KiB of text naming the seed and the block number (at 64 KiB * N * 3)
expected() { yes "sheepdog seed $SEED block $1 " | head -c 65536 > /tmp/expected; }
write_block() {
  expected "$1"
  dd if=/tmp/expected of=/dev/vda bs=65536 seek=$(($1 * 3)) conv=notrunc,fsync 2>/tmp/dd \
    || fail "write of block $1: $(cat /tmp/dd)"
}
check_block() {
  expected "$1"
  dd if=/dev/vda of=/tmp/got bs=65536 skip=$(($1 * 3)) count=1 2>/tmp/dd \
    || fail "read of block $1: $(cat /tmp/dd)"
  cmp -s /tmp/got /tmp/expected || fail "block $1 differs from what was written"
}
fresh() { sync; echo 3 > /proc/sys/vm/drop_caches; }

case "$MODE" in
  raw-write)        # write COUNT blocks (each fsynced), then read them back from the disk
    i=0; while [ $i -lt "$COUNT" ]; do write_block $i; i=$((i + 1)); done
    fresh
    i=0; while [ $i -lt "$COUNT" ]; do check_block $i; i=$((i + 1)); done
    ok ;;
  raw-verify)       # the blocks of an earlier raw-write or loop, read on a fresh boot
    i=0; while [ $i -lt "$COUNT" ]; do check_block $i; i=$((i + 1)); done
    ok ;;
  loop)             # a disk workload that runs for a while (migration, restarts)
    i=0
    while [ $i -lt "$COUNT" ]; do
      write_block $i
      [ $i -gt 0 ] && { fresh; check_block $((i - 1)); }
      say "progress $i"
      [ -n "$PAUSE" ] && usleep "$PAUSE"
      i=$((i + 1))
    done
    fresh
    i=0; while [ $i -lt "$COUNT" ]; do check_block $i; i=$((i + 1)); done
    ok ;;
  ext4-write)       # files written and fsynced, their sums fsynced; then the power may go
    mount -t ext4 /dev/vda /mnt || fail "mount"
    i=0
    while [ $i -lt "$COUNT" ]; do
      dd if=/dev/urandom of=/mnt/f$i bs=4096 count=$((i % 13 + 1)) conv=fsync 2>/tmp/dd \
        || fail "file $i: $(cat /tmp/dd)"
      i=$((i + 1))
    done
    (cd /mnt && md5sum f* > SUMS.tmp) || fail "md5sum"
    dd if=/mnt/SUMS.tmp of=/mnt/SUMS conv=fsync 2>/dev/null || fail "SUMS"
    sync
    echo "GUEST-SYNCED"
    [ -n "$PAUSE" ] && { usleep "$PAUSE"; }   # the test may cut the power meanwhile
    umount /mnt || fail "umount"
    ok ;;
  ext4-verify)      # after a clean shutdown or a power cut: the journal replays, sums match
    mount -t ext4 /dev/vda /mnt || fail "mount"
    [ "$(wc -l < /mnt/SUMS)" -eq "$COUNT" ] || fail "SUMS has $(wc -l < /mnt/SUMS) lines"
    (cd /mnt && md5sum -c -s SUMS) || fail "checksums differ"
    umount /mnt || fail "umount"
    ok ;;
  *)
    fail "unknown mode '$MODE'" ;;
esac
