#!/usr/bin/env bash
# train_distributed's jobs done by hand with the engines' own CLIs, as fast as a skilled user would
# type them: the floor the DAG's orchestration overhead is measured against.
#
# The same jobs on the same cluster shapes as the DAG (ci-cpu): a Spark master and 2 workers of
# 1 core / 2 GiB (no Connect server, as in the DAG), the ETL through spark-submit, Spark down; a Ray
# head (0 CPUs) and 2 workers of 1 CPU, the two DDP trials one after the other, the evaluation of
# trial 0.02 as Ray jobs, Ray down. How it differs from the DAG, each time to be faster:
# - Every node of a cluster starts at once (Spark workers the moment the master's port opens:
#   a worker that finds no master retries only 5-15 s later), and the first job is submitted
#   without waiting for the cluster to be ready: spark-submit right after the workers are
#   started (the application waits for executors itself), the first trial as soon as the head's
#   Jobs API answers (Ray Train waits for the workers itself). The DAG waits until every worker
#   is ALIVE / every node is alive before its first job.
# - No Airflow: no scheduler, task processes, XCom, readiness polling or run report; no
#   spark.authenticate secret or Ray token; nodes are SIGKILLed, not stopped gracefully.
#   Spark's master and workers get the backend's fast-start JVM flags, as in the DAG.
# - The evaluation takes trial 0.02's model instead of picking the best trial, and no model is
#   registered afterwards.
#
# Usage: bench/by_hand.sh ARTIFACT_ROOT
#   BYHAND_PORT  first of 160 free ports (default: a free block picked by bench/baseline.py)
#   BYHAND_MARK  marker put in every node's environment as EPHEMERAL_CLUSTER_UID, so whatever
#                outlives this script (killed by a timeout) is found by it (bench_pipeline.py)
# Nodes run on 127.0.201.x, each in its own session; on exit every session and every marked
# process is SIGKILLed and checked gone, and the temporary folder is removed.
set -euo pipefail
ROOT=$(cd "$(dirname "$0")/.." && pwd)
BIN=$(dirname "$(command -v python)")
ART=$1
RUN=byhand/$(date +%s)
SH=$(python -c 'from pyspark.find_spark_home import _find_spark_home as f; print(f())')
P=${BYHAND_PORT:-$(cd "$ROOT/bench" && python -c 'import baseline; print(baseline.port_block(160))')}
MARK=${BYHAND_MARK:-byhand-$$}
T=$(mktemp -d /tmp/byhand-XXXX)
IP=127.0.201
SESSIONS=()
START=$EPOCHREALTIME
phase() { echo "by hand: $(awk -v a="$START" -v b="$EPOCHREALTIME" 'BEGIN {printf "%6.1f", b - a}')s $*"; }

wait_port() { python - "$1" "$2" <<'EOF'
import socket, sys, time
end = time.time() + 120
while time.time() < end:
    try:
        socket.create_connection((sys.argv[1], int(sys.argv[2])), timeout=0.5).close(); sys.exit(0)
    except OSError:
        time.sleep(0.05)
sys.exit(1)
EOF
}
# A node: its own session (its pid is the session id), the marker in its environment.
node() { setsid env EPHEMERAL_CLUSTER_UID="$MARK" "$@" & SESSIONS+=($!); }
marked() { grep -lsxz "EPHEMERAL_CLUSTER_UID=$MARK" /proc/[0-9]*/environ | cut -d/ -f3 || true; }
stop_all() {  # never `ray stop`: it kills every Ray on the host
  for sid in "${SESSIONS[@]}"; do pkill -KILL -s "$sid" 2>/dev/null || true; done
  SESSIONS=()
  local left=()
  for _ in $(seq 50); do
    mapfile -t left < <(marked)
    [ ${#left[@]} -eq 0 ] && return 0
    kill -KILL "${left[@]}" 2>/dev/null || true
    sleep 0.1
  done
  echo "by hand: processes left: ${left[*]}" >&2
  return 1
}
cleanup() { stop_all; rm -rf "$T"; }
trap cleanup EXIT

# --- Spark -----------------------------------------------------------------------------------
# The JVM flags the backend gives its daemons (spark_nodes.FAST_START_JVM): the floor has the
# same tuning, so the comparison is about orchestration, not JVM flags.
FAST=$(python -c 'from ephemeral.backends.local.spark_nodes import FAST_START_JVM as f; print(f)')
export SPARK_DAEMON_JAVA_OPTS=$FAST SPARK_LAUNCHER_OPTS=$FAST
node "$SH/bin/spark-class" org.apache.spark.deploy.master.Master --host $IP.2 --port "$P" \
  --webui-port $((P + 1)) >"$T/master.log" 2>&1
wait_port $IP.2 "$P"
for i in 1 2; do
  node "$SH/bin/spark-class" org.apache.spark.deploy.worker.Worker --host $IP.$((i + 2)) \
    --port $((P + 2 * i)) --webui-port $((P + 2 * i + 1)) --cores 1 --memory 2048m \
    --work-dir "$T/w$i" spark://$IP.2:"$P" >"$T/worker$i.log" 2>&1
done
PYSPARK_PYTHON=$BIN/python SPARK_LOCAL_IP=127.0.0.1 EPHEMERAL_CLUSTER_UID=$MARK \
  "$SH/bin/spark-submit" --master spark://$IP.2:"$P" "$ROOT/jobs/etl_features.py" --run "$RUN" \
  --rows 5000 --artifact-root "$ART" >"$T/etl.log" 2>&1 || { tail -30 "$T/etl.log"; exit 1; }
phase "ETL done"
stop_all

# --- Ray -------------------------------------------------------------------------------------
R=$((P + 10))
RAY=(--disable-usage-stats --log-style=record --log-color=false)
node timeout 180 "$BIN/ray" start --head --node-ip-address=$IP.2 --port=$R \
  --dashboard-host=$IP.2 --dashboard-port=$((R + 1)) --ray-client-server-port=$((R + 2)) \
  --dashboard-agent-listen-port=$((R + 3)) --min-worker-port=$((P + 40)) \
  --max-worker-port=$((P + 79)) --num-cpus=0 --temp-dir="$T/r0" "${RAY[@]}" >"$T/head.log" 2>&1
HEAD=$!
WORKERS=()
for i in 1 2; do
  node timeout 180 "$BIN/ray" start --address=$IP.2:$R --node-ip-address=$IP.$((i + 2)) \
    --num-cpus=1 --dashboard-agent-listen-port=$((R + 3 + i)) \
    --min-worker-port=$((P + 40 + 40 * i)) --max-worker-port=$((P + 79 + 40 * i)) \
    --temp-dir="$T/r$i" "${RAY[@]}" >"$T/rayw$i.log" 2>&1
  WORKERS+=($!)
done
wait "$HEAD" || { tail -30 "$T/head.log"; exit 1; }
until curl -sf -o /dev/null http://$IP.2:$((R + 1))/api/jobs/; do sleep 0.1; done
phase "Ray head's Jobs API answers"
FEATURES="file://${ART#file://}/$RUN/features"
submit() {
  EPHEMERAL_CLUSTER_UID=$MARK "$BIN/ray" job submit --address http://$IP.2:$((R + 1)) \
    --working-dir "$ROOT/jobs" \
    --runtime-env-json "{\"env_vars\": {\"EPHEMERAL_ARTIFACT_ROOT\": \"$ART\"}}" -- "$@"
}
for lr in 0.02 0.1; do
  submit python train_ddp.py --run "$RUN/trial-$lr" --lr $lr --steps 300 \
    --data-uri "$FEATURES/train" --num-workers 2 --checkpoint-every 100 >"$T/trial-$lr.log" 2>&1 \
    || { tail -30 "$T/trial-$lr.log" "$T"/rayw*.log; exit 1; }
  phase "trial $lr done"
done
for pid in "${WORKERS[@]}"; do wait "$pid"; done  # they were up, or no trial could have run
submit python evaluate.py --model-uri "${ART%/}/$RUN/trial-0.02/model/model.pt" \
  --data-uri "$FEATURES/validation" >"$T/eval.log" 2>&1 || { tail -30 "$T/eval.log"; exit 1; }
phase "evaluation done"
stop_all
phase "done"
