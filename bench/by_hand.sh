#!/usr/bin/env bash
# The steps of train_distributed done by hand with the engines' own CLIs, as a baseline for the
# orchestration overhead: Spark master + 2 workers (the DAG's ETL cluster runs no Connect
# server), the ETL, Spark down; Ray head + 2 workers, two DDP trials and the evaluation as Ray
# jobs, Ray down.
# Usage: bench/by_hand.sh ARTIFACT_ROOT   (uses 127.0.201.x and ports 9300-9399)
set -euo pipefail
ROOT=$(cd "$(dirname "$0")/.." && pwd)
BIN=$(dirname "$(command -v python)")
ART=$1
RUN=byhand/$(date +%s)
SH=$(python -c 'from pyspark.find_spark_home import _find_spark_home as f; print(f())')
T=$(mktemp -d /tmp/byhand-XXXX)
IP=127.0.201
PIDS=()

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
stop_all() {  # kill each started session (never `ray stop`: it kills every Ray on the host)
  for pid in "${PIDS[@]}"; do pkill -KILL -s "$pid" 2>/dev/null || true; done
  PIDS=()
}
trap stop_all EXIT

# --- Spark -----------------------------------------------------------------------------------
setsid "$SH/bin/spark-class" org.apache.spark.deploy.master.Master --host $IP.2 --port 9300 \
  --webui-port 9301 >"$T/master.log" 2>&1 & PIDS+=($!)
wait_port $IP.2 9300
for i in 1 2; do
  setsid "$SH/bin/spark-class" org.apache.spark.deploy.worker.Worker --host $IP.$((i + 2)) \
    --port $((9302 + 2 * i)) --webui-port $((9303 + 2 * i)) --cores 1 --memory 2048m \
    --work-dir "$T/w$i" spark://$IP.2:9300 >"$T/worker$i.log" 2>&1 & PIDS+=($!)
done
until [ "$(curl -s http://$IP.2:9301/json/ | grep -o '"state" *: *"ALIVE"' | wc -l)" -ge 2 ]; do
  sleep 0.1
done
PYSPARK_PYTHON=$BIN/python SPARK_LOCAL_IP=127.0.0.1 "$SH/bin/spark-submit" \
  --master spark://$IP.2:9300 "$ROOT/jobs/etl_features.py" --run "$RUN" --rows 5000 \
  --artifact-root "$ART" >"$T/etl.log" 2>&1
stop_all

# --- Ray -------------------------------------------------------------------------------------
RAY=(--disable-usage-stats --log-style=record)
setsid timeout 180 "$BIN/ray" start --head --node-ip-address=$IP.2 --port=9320 --dashboard-host=$IP.2 \
  --dashboard-port=9321 --num-cpus=0 --temp-dir="$T/r0" "${RAY[@]}" >"$T/head.log" 2>&1 &
PIDS+=($!)
for i in 1 2; do
  setsid timeout 180 "$BIN/ray" start --address=$IP.2:9320 --node-ip-address=$IP.$((i + 2)) --num-cpus=1 \
    --temp-dir="$T/r$i" "${RAY[@]}" >"$T/rayw$i.log" 2>&1 & PIDS+=($!)
done
wait
FEATURES="file://${ART#file://}/$RUN/features"
submit() { "$BIN/ray" job submit --address http://$IP.2:9321 --working-dir "$ROOT/jobs" \
  --runtime-env-json "{\"env_vars\": {\"EPHEMERAL_ARTIFACT_ROOT\": \"$ART\"}}" -- "$@"; }
for lr in 0.02 0.1; do
  submit python train_ddp.py --run "$RUN/trial-$lr" --lr $lr --steps 300 \
    --data-uri "$FEATURES/train" --num-workers 2 --checkpoint-every 100 >"$T/trial-$lr.log" 2>&1
done
submit python evaluate.py --model-uri "${ART%/}/$RUN/trial-0.02/model/model.pt" \
  --data-uri "$FEATURES/validation" >"$T/eval.log" 2>&1
stop_all
echo "by hand: done ($T)"
