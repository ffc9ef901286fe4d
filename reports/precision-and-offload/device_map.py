"""Where accelerate puts a model's modules under lm-eval's big-model args (``parallelize=True``, ``max_cpu_memory``,
``offload_folder``): loads it exactly as ``falsedemo sweep`` does (lm-eval's registry) and writes its
``hf_device_map`` with the blocks per device.

  python device_map.py --model_args pretrained=gemma-3-270m,dtype=float32,parallelize=True,max_cpu_memory=900MB,offload_folder=/tmp/offload \
      --output runs/offload/device_map.json
"""

from __future__ import annotations

import argparse
import collections
import re
import sys

from lm_eval.utils import simple_parse_args_string

from lm_eval_false_demos.core import files as results_io
from lm_eval_false_demos.integrations import loading

BLOCK = re.compile(r"\.layers\.(\d+)$")


def split(device_map: dict) -> dict:
    blocks = collections.defaultdict(list)
    other = collections.defaultdict(list)
    for module, device in device_map.items():
        match = BLOCK.search(module)
        (blocks[str(device)].append(int(match.group(1))) if match else other[str(device)].append(module))
    return {"blocks": {device: sorted(numbers) for device, numbers in blocks.items()},
            "other_modules": dict(other)}


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model_args", required=True)
    parser.add_argument("--output")
    args = parser.parse_args(argv)
    model_args = simple_parse_args_string(args.model_args)
    lm = loading.create_model("hf", loading.resolve_embedded(model_args), 1, "cpu")
    device_map = {module: str(device) for module, device in lm.model.hf_device_map.items()}
    result = {"model_args": args.model_args, "hf_device_map": device_map, **split(device_map)}
    if args.output:
        results_io.write_json_atomic(args.output, result, overwrite=True)
    print({device: len(numbers) for device, numbers in result["blocks"].items()}, result["other_modules"])
    return 0


if __name__ == "__main__":
    sys.exit(main())
