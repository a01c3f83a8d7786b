#!/usr/bin/env bash
# failover-many-groups.sh GROUPS PORT: three `tarn serve` processes on this
# machine, GROUPS quiet groups (group 1 plus 2..GROUPS), then kill -9 of node
# 1 and, from the survivors' logs, when the groups it led got new leaders
# (RUST_LOG lifts the INFO rate limit on role changes). Issue 17; see
# docs/dev-notes/issue-17.md. Build first: cargo build --release -p tarn-server
set -u
G=$1; P=$2; T=${TARN:-target/release/tarn}
D=$(mktemp -d /tmp/fo-XXXX)
CL="1=127.0.0.1:$((P+11)),2=127.0.0.1:$((P+12)),3=127.0.0.1:$((P+13))"
for i in 1 2 3; do
  RUST_LOG="info,tarn_io::driver::role_log=debug" $T serve --id $i --data-dir $D/d$i --client 127.0.0.1:$((P+i)) --peer 127.0.0.1:$((P+10+i)) --cluster $CL > $D/n$i.log 2>&1 &
  echo $! > $D/pid$i
done
EP="127.0.0.1:$((P+1)),127.0.0.1:$((P+2)),127.0.0.1:$((P+3))"
EP23="127.0.0.1:$((P+2)),127.0.0.1:$((P+3))"
sleep 3
t0=$(date +%s.%N)
$T --endpoints $EP --timeout-ms 1200000 group add 2..$G --voters 1,2,3 > $D/add.log 2>&1 || { echo "add failed"; tail -3 $D/add.log; }
echo "created $G groups in $(echo "$(date +%s.%N)-$t0"|bc) s"
sleep 40
led=$($T --endpoints 127.0.0.1:$((P+1)) status 2>&1 | grep -m1 "groups:" | grep -o "Leader [0-9]*" | awk '{print $2}')
echo "node 1 leads $led groups; killing it"
for i in 2 3; do wc -l < $D/n$i.log > $D/skip$i; done
k=$(date +%s.%N); kill -9 $(cat $D/pid1)
while true; do
  s=$($T --endpoints $EP23 status 2>&1)
  l2=$(echo "$s" | grep "groups:" | sed -n 1p | grep -o "Leader [0-9]*" | awk '{print $2}')
  l3=$(echo "$s" | grep "groups:" | sed -n 2p | grep -o "Leader [0-9]*" | awk '{print $2}')
  el=$(echo "$(date +%s.%N)-$k"|bc)
  echo "t=$el leaders on 2+3: $((${l2:-0}+${l3:-0}))"
  [ $((${l2:-0}+${l3:-0})) -ge $G ] && break
  [ $(echo "$el > 120"|bc) = 1 ] && break
  sleep 0.5
done
sleep 2
# New leaders on nodes 2 and 3 after the kill, by time since the kill.
for i in 2 3; do tail -n +$(( $(cat $D/skip$i) + 1 )) $D/n$i.log; done | sed 's/\x1b\[[0-9;]*m//g' | grep "role changed" | grep "role=Leader" \
  | awk -v k=$k '{ split($1,a,"T"); split(a[2],b,":"); s=b[1]*3600+b[2]*60+substr(b[3],1,length(b[3])-1); print s }' > $D/t.txt
kd=$(date -u -d @$k +%H:%M:%S.%N | awk -F: '{print $1*3600+$2*60+$3}')
sort -n $D/t.txt | awk -v k=$kd -v led=$led 'BEGIN{m[1]=int(led*0.5);m[2]=int(led*0.9);m[3]=int(led*0.99);m[4]=led} {n++; for(j=1;j<=4;j++) if(n==m[j]) printf "%d of %d new leaders after %.2f s\n", n, led, $1-k} END{printf "%d leader elections logged after the kill\n", n}'
grep -h "role changed" $D/n2.log $D/n3.log | tail -n +1 | grep -c "Candidate" | xargs echo "pre-candidate and candidate role changes logged on nodes 2 and 3 (whole run, creation included):"
for i in 2 3; do kill -INT $(cat $D/pid$i); done; sleep 3; for i in 2 3; do kill -9 $(cat $D/pid$i) 2>/dev/null; done
rm -rf $D
