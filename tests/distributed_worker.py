"""One process of the 2-process jax.distributed test (tests/test_train.py).

usage: python distributed_worker.py COORDINATOR_ADDRESS PROCESS_ID WORKDIR
"""

import os
import sys

import jax


def main():
  address, process_id, workdir = sys.argv[1], int(sys.argv[2]), sys.argv[3]
  try:
    jax.config.update('jax_cpu_collectives_implementation', 'gloo')
    jax.distributed.initialize(address, num_processes=2, process_id=process_id)
  except Exception as e:  # pylint: disable=broad-except
    print('UNSUPPORTED', type(e).__name__, e, flush=True)
    return
  sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
  from test_train import CountingIterator, ToyTask, toy_settings  # pylint: disable=g-import-not-at-top
  from patronus_jax import config as config_lib  # pylint: disable=g-import-not-at-top
  from patronus_jax.core import sharding  # pylint: disable=g-import-not-at-top
  from patronus_jax.core import training as training_lib  # pylint: disable=g-import-not-at-top

  mesh = sharding.make_mesh(config_lib.mesh_config())
  settings = toy_settings(num_steps=4, checkpoint_every=4)

  class LocalRows(CountingIterator):
    """This process's half of each global batch."""

    def __next__(self):
      batch = super().__next__()
      return {k: v[process_id * 4:(process_id + 1) * 4] for k, v in batch.items()}

  state = training_lib.run_training(ToyTask(), settings, workdir, lambda: LocalRows(batch=8), seed=0, mesh=mesh)
  step = int(state.step.addressable_data(0))
  print(f'DONE step={step} processes={jax.process_count()} devices={jax.device_count()}', flush=True)


if __name__ == '__main__':
  main()
