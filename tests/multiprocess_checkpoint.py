"""Run by tests/test_multihost_checkpoints.py as two processes of 4 CPU devices each: checksums of arrays sharded across
processes, a mismatch that only one process can see, and a fallback that both processes agree on. With
`taken`, a file takes the name of the folder that rejected checkpoints go to: setting one aside fails.

Usage: python tests/multiprocess_checkpoint.py PORT PROCESS_ID DIRECTORY [taken]
"""

import json
import os
import pathlib
import sys

os.environ["XLA_FLAGS"] = "--xla_force_host_platform_device_count=4"
os.environ["JAX_PLATFORMS"] = "cpu"

import jax  # noqa: E402
import jax.numpy as jnp  # noqa: E402
import numpy as np  # noqa: E402
from jax.experimental import multihost_utils  # noqa: E402

port, process_id, directory = int(sys.argv[1]), int(sys.argv[2]), pathlib.Path(sys.argv[3])
taken = sys.argv[4:] == ["taken"]
jax.distributed.initialize(coordinator_address=f"127.0.0.1:{port}", num_processes=2, process_id=process_id)

from absl import flags  # noqa: E402

from lm import checkpointing, distributed  # noqa: E402

# As main.py runs: absl flags parsed, so Orbax's barriers are coordination-service barriers. Left as device
# collectives, those that Orbax's save threads run could interleave with this thread's collectives in a
# different order on each process (gloo pairs collectives by order alone).
flags.FLAGS(["multiprocess_checkpoint.py"])
distributed._use_timed_orbax_barriers()

mesh = jax.make_mesh((8,), ("data",), axis_types=(jax.sharding.AxisType.Auto,))
sharded = jax.sharding.NamedSharding(mesh, jax.sharding.PartitionSpec("data"))
replicated = jax.sharding.NamedSharding(mesh, jax.sharding.PartitionSpec())


def state(step: int) -> dict:
    weights = np.random.default_rng(step).normal(size=(64, 64)).astype(np.float32)
    return {"w": jax.make_array_from_callback(weights.shape, sharded, lambda index: weights[index]),
            "step": jax.device_put(jnp.int32(step), replicated)}


ckpt = checkpointing.Checkpointer(str(directory / "checkpoints"), keep=3)
for step in (1, 2):
    ckpt.save(step, state(step), {"step": step}, force=True)
ckpt.wait()
ckpt.close()
multihost_utils.sync_global_devices("saved")
if process_id == 0:  # Alter the recorded digest of a shard that only process 1 holds (rows 48:56 on device 6).
    path = directory / "checkpoints" / "2" / "checksums" / "metadata"
    checksums = json.loads(path.read_text())
    checksums["w"]["48:56,0:64"] = "0" * 64
    path.write_text(json.dumps(checksums))
    if taken:
        (directory / "checkpoints_rejected").write_text("")
multihost_utils.sync_global_devices("corrupted")

ckpt = checkpointing.Checkpointer(str(directory / "checkpoints"), keep=3)
abstract = jax.tree.map(lambda a: jax.ShapeDtypeStruct(a.shape, a.dtype, sharding=a.sharding), state(0))
restored, _, step = ckpt.restore_latest(abstract)
expected = state(1)["w"]
same = all(np.array_equal(a.data, b.data) for a, b in zip(restored["w"].addressable_shards,
                                                         expected.addressable_shards))
ckpt.close()
print(f"process {process_id}: restored step {step}, equal {same}, steps {ckpt.all_steps()}", flush=True)
