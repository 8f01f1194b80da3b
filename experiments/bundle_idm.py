"""Put a newly trained inverse-dynamics model into a world-model checkpoint (the judge eval uses), keeping every
other part, the config, action spec, run-time defaults and metrics; records where the IDM came from in `extra`.

    python experiments/bundle_idm.py MODEL.safetensors IDM.safetensors OUT.safetensors
"""

from __future__ import annotations

import json
import sys

from engine.checkpoint import CheckpointError, load_checkpoint, save_checkpoint


def main(model: str, idm: str, out: str) -> None:
    ck, judge = load_checkpoint(model), load_checkpoint(idm)
    if not judge.has("idm"):
        raise CheckpointError(f"{idm}: holds no inverse-dynamics weights ('reverie train idm' writes idm.safetensors)")
    if not judge.action_spec.compatible(ck.action_spec):
        raise CheckpointError(f"{idm}: an IDM of {judge.action_spec.game!r}, the model plays {ck.action_spec.game!r}")
    parts = {**ck.tensors, "idm": judge.tensors["idm"]}
    extra = {**ck.extra, "idm": {"from": str(idm), "data": judge.data, "metrics": judge.metrics}}
    save_checkpoint(out, kind=ck.kind, config=ck.config, action_spec=ck.action_spec, parts=parts, data=ck.data,
                    metrics=ck.metrics, extra=extra, half=True)
    print(json.dumps({"wrote": out, "idm_train_metrics": judge.metrics}, indent=1))


if __name__ == "__main__":
    if len(sys.argv) != 4:
        sys.exit(__doc__.strip().splitlines()[-1].strip())
    main(*sys.argv[1:])
