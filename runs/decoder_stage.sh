# Sourced by runs/breakout.sh and runs/doom.sh: dec_stage OUT STEPS LR trains the decoder alone on whole frames for
# STEPS more steps (encoder frozen, so the latents and any world model on them stay as they are), from the decoder in
# $W/$DECODER, into $W/OUT, and makes OUT the newest decoder ($DECODER); STEPS 0 skips it. Uses the recipe's W and
# AE_CHANGE_WEIGHT.
DECODER=ae
dec_stage() {
  local out=$1 steps=$2 lr=$3
  if [ "$steps" -le 0 ]; then return 0; fi
  reverie train ae --data "$W/data/train" --out "$W/$out" --preset tiny --crop 0 --steps "$steps" --batch 32 \
    --lr "$lr" --threads 2 --log-every 100 --save-every 1000 --change-weight "$AE_CHANGE_WEIGHT" \
    --init "$W/$DECODER/ae.safetensors" --freeze-encoder --no-progress
  DECODER=$out
}
