"""One process of the 2-process jax.distributed test (tests/test_train_mesh.py).

usage: python distributed_worker.py COORDINATOR_ADDRESS PROCESS_ID WORKDIR OVERRIDES_JSON

Stage 1 of configs/shapes.py:tiny (with the overrides) through `patronus_jax.main.run`, as every
host of a pod runs it: `config.mesh.distributed` makes it call `sharding.initialize_distributed`,
and the data pipeline gives this process its own share of each global batch. A failure to
initialise is printed as one `INIT FAILED` line and exits with status 3.
"""

import json
import os
import sys
import traceback

import jax

from patronus_jax import config as config_lib
from patronus_jax import main as main_lib
from patronus_jax.core import sharding

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def main():
  address, process_id, workdir, overrides = sys.argv[1], int(sys.argv[2]), sys.argv[3], json.loads(sys.argv[4])
  config = config_lib.load(os.path.join(ROOT, 'configs', 'shapes.py') + ':tiny', dict(
      overrides, **{'mesh.distributed': True, 'mesh.coordinator_address': address, 'mesh.num_processes': 2,
                    'mesh.process_id': process_id}))
  try:
    sharding.initialize_distributed(config.mesh)
    assert (jax.process_count(), jax.process_index(), jax.device_count()) == (2, process_id, 4), (
        f'after initialisation: process {jax.process_index()} of {jax.process_count()}, '
        f'{jax.device_count()} devices; expected process {process_id} of 2, 4 devices')
  except Exception as e:  # pylint: disable=broad-except
    print(f'INIT FAILED process {process_id}: {type(e).__name__}: {e}\n{traceback.format_exc()}', flush=True)
    sys.exit(3)
  main_lib.run(config, workdir, mode='train')  # initialize_distributed again: a no-op once initialised
  print(f'DONE process={jax.process_index()} of {jax.process_count()} devices={jax.device_count()}', flush=True)


if __name__ == '__main__':
  main()
