#!/usr/bin/env bash
# train_distributed's jobs done by hand with the engines' own CLIs, as fast as a skilled user would
# type them: the floor the DAG's orchestration overhead is measured against.
#
# The same jobs on the same cluster shapes as the DAG (ci-cpu): a Spark master and 2 workers of
# 1 core / 2 GiB (no Connect server, as in the DAG), the ETL through spark-submit, Spark down; a Ray
# head (0 CPUs) and 2 workers of 1 CPU, the two DDP trials, the evaluation (and, when the DAG has
# it, the Ray Serve latency job) as Ray jobs, Ray down. The clusters come one after the other, as
# in the DAG (Ray's raylets give up after 30 s on a busy 2-core machine: starting Ray during the
# ETL would fail more often than it would gain). How it differs from the DAG, each time to be faster:
# - Every node of a cluster starts at once (Spark workers the moment the master's port opens:
#   a worker that finds no master retries only 5-15 s later), and the first job is submitted
#   without waiting for the cluster to be ready: spark-submit right after the workers are
#   started (the application waits for executors itself), the trials as soon as the head's
#   Jobs API answers (Ray Train waits for the workers itself). The DAG waits until every worker
#   is ALIVE / every node is alive before its first job.
# - Both trials are submitted at once (Ray starts the second the moment the first frees the
#   workers), and the evaluation of trial 0.02 starts when that trial ends, beside trial 0.1 (its
#   driver runs on the head). The DAG runs one job per task, each after the one before, and
#   evaluates the best trial once both ended.
# - No Airflow: no scheduler, task processes, XCom, readiness polling or run report; no
#   spark.authenticate secret or Ray token. (Nodes are SIGKILLed, as the backend's are.)
#   Spark's master, workers, spark-submit's launcher and the ETL's driver get the fast-start JVM
#   flags (ephemeral.jobs.spark_jobs.FAST_START_JVM), as the DAG's do.
# - Slower than the DAG in one way: its JVMs do not map the class-data-sharing archives the
#   local backend builds at setup (ephemeral.backends.local.jvm_share), which nobody types by
#   hand; the DAG's masters, workers and drivers start with about half the CPU.
# - No model is registered afterwards.
#
# Usage: bench/by_hand.sh ARTIFACT_ROOT
#   BYHAND_PORT  first of 160 free ports (default: a free block picked by bench/baseline.py)
#   BYHAND_MARK  marker put in every node's environment as EPHEMERAL_CLUSTER_UID, so whatever
#                outlives this script (killed by a timeout) is found by it (bench_pipeline.py)
#   BYHAND_KEEP  a folder to copy the nodes' and jobs' logs to at the end (default: none)
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
cd "$T"  # spark-submit's driver makes a spark-warehouse folder in its working directory
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
cleanup() { stop_all; [ -n "${BYHAND_KEEP:-}" ] && cp -r "$T" "$BYHAND_KEEP"; rm -rf "$T"; }
trap cleanup EXIT

# --- Spark -----------------------------------------------------------------------------------
# The JVM flags the backend gives its daemons and spark_submit its drivers (FAST_START_JVM): the
# floor has the best tuning there is, so the comparison is about orchestration.
FAST=$(python -c 'from ephemeral.jobs.spark_jobs import FAST_START_JVM as f; print(f)')
export SPARK_DAEMON_JAVA_OPTS=$FAST SPARK_LAUNCHER_OPTS=$FAST
node "$SH/bin/spark-class" org.apache.spark.deploy.master.Master --host $IP.2 --port "$P" \
  --webui-port $((P + 1)) >"$T/master.log" 2>&1
wait_port $IP.2 "$P"
phase "Spark master listens"
for i in 1 2; do
  node "$SH/bin/spark-class" org.apache.spark.deploy.worker.Worker --host $IP.$((i + 2)) \
    --port $((P + 2 * i)) --webui-port $((P + 2 * i + 1)) --cores 1 --memory 2048m \
    --work-dir "$T/w$i" spark://$IP.2:"$P" >"$T/worker$i.log" 2>&1
done
PYSPARK_PYTHON=$BIN/python SPARK_LOCAL_IP=127.0.0.1 EPHEMERAL_CLUSTER_UID=$MARK \
  "$SH/bin/spark-submit" --master spark://$IP.2:"$P" --conf spark.driver.extraJavaOptions="$FAST" \
  "$ROOT/jobs/etl_features.py" --run "$RUN" \
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
job() {  # a name, then the job's command: submitted and followed in the background
  local name=$1; shift
  submit "$@" >"$T/$name.log" 2>&1 &
  JOBS[$name]=$!
}
finish() {  # wait for a job started by `job`; its log's tail when it failed
  wait "${JOBS[$1]}" || { tail -30 "$T/$1.log" "$T"/rayw*.log; exit 1; }
  phase "$1 done"
}
declare -A JOBS
for lr in 0.02 0.1; do
  job "trial-$lr" python train_ddp.py --run "$RUN/trial-$lr" --lr $lr --steps 300 \
    --data-uri "$FEATURES/train" --num-workers 2 --gpus-per-worker 0 --cpus-per-worker 1 \
    --checkpoint-every 100
done
finish trial-0.02
MODEL="${ART%/}/$RUN/trial-0.02/model/model.pt"
job evaluation python evaluate.py --model-uri "$MODEL" --data-uri "$FEATURES/validation"
finish trial-0.1
finish evaluation
if grep -q serve_latency.py "$ROOT/dags/train_distributed.py"; then  # the DAG's gate job
  read -r REQ CONC WARM < <(python -c 'import sys, yaml
load = yaml.safe_load(open(sys.argv[1]))["load"]
print(load["requests"], load["concurrency"], load["warmup"])' "$ROOT/gates/train_distributed.yaml")
  job serve-latency python serve_latency.py --model-uri "$MODEL" \
    --data-uri "$FEATURES/validation" --requests "$REQ" --concurrency "$CONC" --warmup "$WARM"
  finish serve-latency
fi
for pid in "${WORKERS[@]}"; do wait "$pid"; done  # they were up, or no trial could have run
stop_all
phase "done"
