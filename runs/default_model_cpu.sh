#!/usr/bin/env bash
# Reproduce Reverie's default model on a 2-core CPU (how the shipped engine/assets/default.safetensors was made).
#
#   bash runs/default_model_cpu.sh [WORKDIR]
#
# Stages: record (train: seeds 0..39, more scripted play from seed 3000, held out: seeds from 1000000), autoencoder
# and inverse-dynamics model side by side on one core each, world model (time-limited), a fine-tune of it on
# scripted + random-agent play, a second, third and fourth with the action read by the head only
# (--backbone-actions off), a fifth that adds the second scripted set, then two against long-horizon drift (the loss
# weighted toward the tokens that change, half the windows on the model's own rollouts), the decoder again on whole
# frames, eval on the held-out episodes (which writes WORKDIR/default_v3.safetensors: float16 weights, eval metrics
# and the evaluated sampling steps / guidance in its metadata), and last a "soup": a fine-tune of that model that
# samples windows where the avatar and an enemy meet and keeps an average of its weights (--focus --ema), averaged
# half and half with the model it started from, plus (in the backbone's input layers and first three blocks only) the
# difference between a fine-tune on the model's own rollouts alone and one with the same flags at the usual half (two
# 35-minute runs beside the soup's fine-tune), evaluated into the shipped file WORKDIR/default.safetensors. About 10
# hours on 2 cores.
set -euo pipefail
W=${1:-runs/default_cpu}
WM_MINUTES=${WM_MINUTES:-65}
MIX_MINUTES=${MIX_MINUTES:-70}
FINAL_MINUTES=${FINAL_MINUTES:-60}
POLISH_MINUTES=${POLISH_MINUTES:-40}
POLISH2_MINUTES=${POLISH2_MINUTES:-70}
POLISH3_MINUTES=${POLISH3_MINUTES:-75}
DRIFT_MINUTES=${DRIFT_MINUTES:-22}
DRIFT2_MINUTES=${DRIFT2_MINUTES:-60}
SOUP_MINUTES=${SOUP_MINUTES:-70}
OWN_MINUTES=${OWN_MINUTES:-35}
ROLLOUT_ITERS=${ROLLOUT_ITERS:-0}   # > 0: also train on the model's own rollouts (see README)
STEPS=${STEPS:-1}
GUIDANCE=${GUIDANCE:-1.75}
mkdir -p "$W"
t0=$(date +%s)
log() { echo "[$(( $(date +%s) - t0 ))s] $*"; }

log "record"
reverie record --env builtin:gems --agent scripted --episodes 40 --steps 1000 --size 64 --out "$W/data/train" \
  --seed 0 --workers 2 --no-progress --overwrite
reverie record --env builtin:gems --agent scripted --episodes 8 --steps 1000 --size 64 --out "$W/data/heldout" \
  --seed 1000000 --workers 2 --no-progress --overwrite
reverie record --env builtin:gems --agent random --episodes 100 --steps 1000 --size 64 --out "$W/data/random" \
  --seed 2000 --workers 2 --no-progress --overwrite
reverie record --env builtin:gems --agent scripted --episodes 40 --steps 1000 --size 64 --out "$W/data/train2" \
  --seed 3000 --workers 2 --no-progress --overwrite
mkdir -p "$W/data/mix" "$W/data/mix2"
ln -f "$W"/data/train/*.episode "$W"/data/random/*.episode "$W/data/mix/"
ln -f "$W"/data/mix/*.episode "$W"/data/train2/*.episode "$W/data/mix2/"

log "train ae (32x32 crops) and idm, one thread each"
reverie train idm --data "$W/data/train" --out "$W/idm" --steps 400 --batch 64 --lr 1e-3 --threads 1 \
  --log-every 50 --save-every 200 --no-progress > "$W/idm.log" 2>&1 &
idm_pid=$!
reverie train ae --data "$W/data/train" --out "$W/ae" --preset tiny --crop 32 --steps 3000 --batch 32 --lr 1e-3 \
  --threads 1 --log-every 50 --save-every 500
wait $idm_pid
tail -n 1 "$W/idm.log"

log "train wm: data-parallel over the 2 cores (2 processes x 1 thread, gloo), batch 8 per rank"
OMP_NUM_THREADS=1 torchrun --standalone --nproc-per-node 2 -m reverie_cli train wm --data "$W/data/train" \
  --ae "$W/ae/ae.safetensors" --idm "$W/idm/idm.safetensors" --out "$W/wm" --preset tiny --steps 6000 --batch 16 \
  --lr 5e-4 --time-limit $((WM_MINUTES * 60)) --threads 1 --log-every 50 --save-every 250 --sample-every 1000 --half

# fine_tune OUT INIT LR WARMUP MINUTES [flags...]: a data-parallel fine-tune of the world model on scripted +
# random-agent play ($MIX, default data/mix), warm-started from INIT
fine_tune() {
  local out=$1 init=$2 lr=$3 warmup=$4 minutes=$5
  shift 5
  OMP_NUM_THREADS=1 torchrun --standalone --nproc-per-node 2 -m reverie_cli train wm --data "$W/data/${MIX:-mix}" \
    --ae "$W/ae/ae.safetensors" --idm "$W/idm/idm.safetensors" --out "$out" --preset tiny --steps 8000 \
    --batch 16 --lr "$lr" --warmup "$warmup" --time-limit $((minutes * 60)) --threads 1 --log-every 25 \
    --save-every 250 --sample-every 1000 --half --init "$init" --rollout-iters "$ROLLOUT_ITERS" "$@"
}

log "fine-tune wm on scripted + random-agent play: the random agent changes its action every 2-10 frames, which"
log "teaches the head to read the new action instead of extrapolating the last one"
fine_tune "$W/wm_mix" "$W/wm/model.safetensors" 3e-4 50 "$MIX_MINUTES"

log "fine-tune again with the action at the head only: the backbone no longer offers the last action, which the"
log "head copied whenever the player held a key and got wrong exactly when the action changed"
fine_tune "$W/wm_final" "$W/wm_mix/state" 3e-4 50 "$FINAL_MINUTES" --backbone-actions off
log "and once more at a third of the learning rate"
fine_tune "$W/wm_polish" "$W/wm_final/state" 1e-4 20 "$POLISH_MINUTES" --backbone-actions off
log "and a last warm restart at the same rate (every eval number still improved in the previous one)"
fine_tune "$W/wm_polish2" "$W/wm_polish/state" 1e-4 20 "$POLISH2_MINUTES" --backbone-actions off
log "and a warm restart with 40 more scripted episodes in the mix (training samples scored 1-2 dB above the held-out"
log "sets: more data against that gap)"
MIX=mix2 fine_tune "$W/wm_polish3" "$W/wm_polish2/state" 1e-4 20 "$POLISH3_MINUTES" --backbone-actions off

log "against drift in long play: the loss weighted toward the tokens that change from the last frame (the avatar, the"
log "enemies, a gem that is taken) and half the windows on the model's own 2-pass rollout as context; first one process"
log "(batch 8, as in the ablation that chose it), then data-parallel"
DRIFT_FLAGS=(--backbone-actions off --rollout-iters 2 --change-weight 1)
reverie train wm --data "$W/data/mix" --ae "$W/ae/ae.safetensors" --idm "$W/idm/idm.safetensors" --out "$W/wm_drift" \
  --preset tiny --steps 3000 --batch 8 --lr 1e-4 --warmup 20 --time-limit $((DRIFT_MINUTES * 60)) --threads 1 \
  --log-every 25 --save-every 250 --sample-every 0 --half --init "$W/wm_polish3/model.safetensors" "${DRIFT_FLAGS[@]}"
OMP_NUM_THREADS=1 torchrun --standalone --nproc-per-node 2 -m reverie_cli train wm --data "$W/data/mix" \
  --ae "$W/ae/ae.safetensors" --idm "$W/idm/idm.safetensors" --out "$W/wm_drift2" --preset tiny --steps 6000 \
  --batch 16 --lr 1e-4 --warmup 20 --time-limit $((DRIFT2_MINUTES * 60)) --threads 1 --log-every 25 \
  --save-every 250 --sample-every 0 --half --init "$W/wm_drift/model.safetensors" "${DRIFT_FLAGS[@]}"

log "the decoder trained again, alone, on whole frames (the encoder, and so every latent, stays as it is): the"
log "autoencoder above trained on 32x32 crops, whose decoder draws small sprites with a halo (README: 'Long play')"
reverie train ae --data "$W/data/mix" --out "$W/ae_decoder" --preset tiny --crop 0 --steps 2000 --batch 32 \
  --lr 1e-3 --threads 2 --log-every 50 --save-every 500 --init "$W/ae/ae.safetensors" --freeze-encoder

log "eval at the shipped settings with that decoder (written into the model with its run-time defaults)"
reverie eval --model "$W/wm_drift2/model.safetensors" --ae "$W/ae_decoder/ae.safetensors" --data "$W/data/heldout" \
  --horizon 16 --steps "$STEPS" --guidance "$GUIDANCE" --threads 2 --json "$W/eval.json" \
  --write-model "$W/default_v3.safetensors" --half

log "the soup: a fine-tune of that model on windows where the avatar and an enemy meet in one token (three in four"
log "windows), with an exponential average of its weights, then half of it and half of the model it started from"
log "(README 'Long play': the avatar and the enemies stay on screen for minutes of play where the model alone loses them)."
log "Beside it, on the other core, two fine-tunes of the same model with the drift flags, one after the other: every window"
log "on the model's own rollout (--rollout-fraction 1.0), and the same at the usual half; their difference, added to the"
log "input layers and first three blocks of the soup's backbone, halves the soup's second avatars (README 'Long play',"
log "'A task vector from the model's own rollouts')"
V3=(--init "$W/default_v3.safetensors" --ae "$W/default_v3.safetensors" --idm "$W/default_v3.safetensors")
reverie train wm --data "$W/data/mix" "${V3[@]}" --out "$W/wm_focus_ema" --batch 8 --lr 1.5e-4 --warmup 20 --steps 20000 \
  --time-limit $((SOUP_MINUTES * 60)) --threads 1 --log-every 50 --save-every 250 --sample-every 0 --half \
  "${DRIFT_FLAGS[@]}" --ema 0.999 --focus avatar,enemies --focus-share 0.75 --no-progress &
FOCUS_PID=$!
for arm in own own_control; do
  reverie train wm --data "$W/data/mix" "${V3[@]}" --out "$W/wm_$arm" --batch 8 --lr 1.5e-4 --warmup 20 --steps 20000 \
    --time-limit $((OWN_MINUTES * 60)) --threads 1 --log-every 50 --save-every 250 --sample-every 0 --half \
    "${DRIFT_FLAGS[@]}" $([[ $arm == own ]] && echo --rollout-fraction 1.0)
done
wait $FOCUS_PID
python3 "$(dirname "${BASH_SOURCE[0]}")/average_models.py" "$W/soup.safetensors" \
  "$W/default_v3.safetensors:0.5" "$W/wm_focus_ema/model.safetensors:0.5" \
  --add "$W/wm_own/model.safetensors" "$W/wm_own_control/model.safetensors" 1.0 \
  --parts backbone.token_in,backbone.level_in,backbone.blocks.0,backbone.blocks.1,backbone.blocks.2
log "eval the soup at the same settings; it writes the shipped file with the soup's own metrics"
reverie eval --model "$W/soup.safetensors" --data "$W/data/heldout" --horizon 16 --steps "$STEPS" \
  --guidance "$GUIDANCE" --threads 2 --json "$W/eval_soup.json" --write-model "$W/default.safetensors" --half
log "done"
