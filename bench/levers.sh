#!/bin/bash
# Issue 14: each capacity lever alone, same run, one after another on a quiet machine: every lever off, then each
# lever on by itself, then all on; each run ramps to STREAMS (default 3,6: below saturation, so the slope between
# the two loads is the marginal CPU per stream). Results: bench/results/ingest-lever-NAME.md/json.
#   bench/levers.sh            STREAMS=4,8 HOLD=30 bench/levers.sh
set -euo pipefail
cd "$(dirname "$0")/.."
STREAMS=${STREAMS:-3,6}
HOLD=${HOLD:-25}
OFF_PHONE="--set PHONE_ADAPTIVE=false"
OFF_AUDIO="--set VOICE_GATE_DBFS=off --set AUDIO_DECODER=pyav"
OFF_RTP="--set RTP_FAST_PATH=false"
OFF_FACES="--set FACES_FULL_RANGE_INTERVAL_S=0 --set IDENTITY_STABLE_INTERVAL_S=5"
OFF_MISC="--set ANALYSIS_NICE=0 --set MEDIA_MALLOC_ARENAS=0"
run() {
  name=$1; shift
  echo "== $name $(date +%T)"
  # shellcheck disable=SC2068
  .venv/bin/python -m bench.ingest --steps "$STREAMS" --hold "$HOLD" --reloads 0 --every-step --out "lever-$name" $@ \
    2>&1 | grep '^{'
}
run baseline --layers off $OFF_PHONE $OFF_AUDIO $OFF_RTP $OFF_FACES $OFF_MISC
run layers --layers on $OFF_PHONE $OFF_AUDIO $OFF_RTP $OFF_FACES $OFF_MISC
run phone --layers off $OFF_AUDIO $OFF_RTP $OFF_FACES $OFF_MISC
run audio --layers off $OFF_PHONE $OFF_RTP $OFF_FACES $OFF_MISC
run rtp --layers off $OFF_PHONE $OFF_AUDIO $OFF_FACES $OFF_MISC
run faces_identity --layers off $OFF_PHONE $OFF_AUDIO $OFF_RTP $OFF_MISC
run all --layers on
echo "== done $(date +%T)"
