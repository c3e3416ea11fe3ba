#!/bin/sh
# /init of the migsafe test guest (busybox sh, PID 1). See test/guest/README.md.
export PATH=/bin:/sbin
mount -t proc proc /proc
mount -t sysfs sysfs /sys
mount -t devtmpfs devtmpfs /dev 2>/dev/null
[ -c /dev/ttyS0 ] && exec </dev/ttyS0 >/dev/ttyS0 2>&1

WL=idle IP= GW= PEER= MODULES=1
for arg in $(cat /proc/cmdline); do
  case "$arg" in
    migsafe.workload=*) WL="${arg#*=}" ;;
    migsafe.ip=*) IP="${arg#*=}" ;;
    migsafe.gw=*) GW="${arg#*=}" ;;
    migsafe.peer=*) PEER="${arg#*=}" ;;
    migsafe.modules=*) MODULES="${arg#*=}" ;;
  esac
done

# Keep every page where it is: no THP collapsing, no compaction of locked pages
# (a moved page would leave a stale copy of the progress record behind).
echo never >/sys/kernel/mm/transparent_hugepage/enabled 2>/dev/null
echo never >/sys/kernel/mm/transparent_hugepage/defrag 2>/dev/null
echo 0 >/proc/sys/vm/compact_unevictable_allowed 2>/dev/null
echo 1 >/proc/sys/kernel/printk 2>/dev/null

KVER=$(uname -r)
read -r UP _ </proc/uptime
echo "MIGSAFE boot workload=$WL kernel=$KVER uptime=$UP"

if [ "$MODULES" != 0 ]; then
  while read -r m; do
    [ -n "$m" ] || continue
    insmod "/lib/modules/$KVER/$m" 2>/dev/null ||
      echo "MIGSAFE ERROR workload=init counter=0 kind=insmod module=$m"
  done </lib/modules/migsafe-load-order
fi

ip link set lo up 2>/dev/null
if [ -n "$IP" ]; then
  i=0
  while [ ! -e /sys/class/net/eth0 ] && [ $i -lt 50 ]; do sleep 0.1; i=$((i + 1)); done
  if ip link set eth0 up && ip addr add "$IP" dev eth0; then
    [ -n "$GW" ] && ip route add default via "$GW"
    MAC=$(cat /sys/class/net/eth0/address)
    echo "MIGSAFE net iface=eth0 ip=$IP mac=$MAC peer=${PEER:-none}"
  else
    echo "MIGSAFE ERROR workload=init counter=0 kind=net msg=cannot-configure-eth0"
  fi
fi

read -r UP _ </proc/uptime
echo "MIGSAFE start workload=$WL uptime=$UP"
/bin/migsafe-wl "$WL"
echo "MIGSAFE exit workload=$WL status=$?"
while :; do sleep 3600; done
