"""The device mesh and the placement of parameters and batches through logical axis names.

Model code names logical axes ("embed", "heads", "activation_batch", ...); the config's
`logical_axis_rules` map them to the mesh axes below. Flax applies the first rule whose mesh
axis is still free, so later rules act as fallbacks.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Callable, Sequence
from typing import Any

import flax.linen as nn
import jax
import numpy as np
from jax.sharding import Mesh, NamedSharding, PartitionSpec

from transformer.config import MeshConfig
from transformer.errors import UserError

MESH_AXES = ("data", "fsdp", "tensor")
Rules = Sequence[tuple[str, Any]]
# Logical names of the activations' axes (parameters name theirs where they are created).
BATCH, LENGTH, EMBED = "activation_batch", "activation_length", "activation_embed"
HEADS, MLP, VOCAB = "activation_heads", "activation_mlp", "activation_vocab"


def constrain(x: jax.Array, names: tuple[str | None, ...]) -> jax.Array:
    """Annotates activation `x` with logical axis names (a no-op outside a mesh)."""
    return nn.with_logical_constraint(x, names)


class MeshError(UserError):
    """The configured mesh does not fit the devices this run sees."""


def mesh_shape(config: MeshConfig, num_devices: int) -> tuple[int, ...]:
    """Axis sizes in MESH_AXES order, with a -1 axis taking the remaining devices."""
    sizes = dataclasses.asdict(config)
    known = math.prod(s for s in sizes.values() if s != -1)
    for axis, size in sizes.items():
        if size == -1:
            if num_devices % known:
                raise MeshError(
                    f"mesh: {num_devices} devices do not divide by the fixed axes ({known})."
                )
            sizes[axis] = num_devices // known
    shape = tuple(sizes[a] for a in MESH_AXES)
    if math.prod(shape) != num_devices:
        raise MeshError(
            f"mesh {dict(zip(MESH_AXES, shape, strict=True))} needs {math.prod(shape)} devices; "
            f"{num_devices} are available. Set one axis to -1 to fill the rest."
        )
    return shape


def make_mesh(config: MeshConfig, devices: Sequence[jax.Device] | None = None) -> Mesh:
    """A (data, fsdp, tensor) mesh over `devices` (default: all devices of all hosts).
    MeshError, naming the platform, where the mesh needs more devices than there are."""
    devices = jax.devices() if devices is None else list(devices)
    try:
        shape = mesh_shape(config, len(devices))
    except MeshError as e:
        platform = devices[0].platform
        hint = (
            " Without JAX's CUDA or TPU build an accelerator host runs on its CPU: "
            "pip install -e '.[gpu]' or '.[tpu]' (README, 'On a GPU or TPU host')."
        )
        found = f" They are {platform} devices ({devices[0].device_kind})."
        fixed = math.prod(s for s in dataclasses.asdict(config).values() if s != -1)
        too_few = platform == "cpu" and fixed > len(devices)
        raise MeshError(f"{e}{found}{hint if too_few else ''}") from None
    return Mesh(np.asarray(devices).reshape(shape), MESH_AXES)


def logical_shardings(logical_specs: Any, mesh: Mesh, rules: Rules) -> Any:
    """Tree of logical PartitionSpecs -> tree of NamedShardings on `mesh`."""
    return nn.logical_to_mesh_sharding(logical_specs, mesh, list(rules))


def batch_sharding(mesh: Mesh, rules: Rules) -> NamedSharding:
    """Sharding of a [batch, length] input array: batch over the data-parallel axes."""
    spec = nn.logical_to_mesh_axes(("activation_batch", None), list(rules))
    return NamedSharding(mesh, spec)


def batch_shards(mesh: Mesh, rules: Rules) -> int:
    """How many pieces the batch dimension is split into (the data-parallel degree)."""
    return num_shards(batch_sharding(mesh, rules), dim=0)


def num_shards(named: NamedSharding, dim: int) -> int:
    """How many pieces `named` cuts array dimension `dim` into."""
    axes = named.spec[dim] if dim < len(named.spec) else None
    if axes is None:
        return 1
    axes = (axes,) if isinstance(axes, str) else axes
    return math.prod(named.mesh.shape[a] for a in axes)


def replicated(mesh: Mesh) -> NamedSharding:
    return NamedSharding(mesh, PartitionSpec())


def global_batch(local: dict[str, np.ndarray], sharding: NamedSharding) -> dict[str, jax.Array]:
    """Assembles each process's rows into global arrays sharded over the mesh."""
    return {k: jax.make_array_from_process_local_data(sharding, v) for k, v in local.items()}


def map_rows(fn: Callable[[Any, jax.Array], jax.Array], rows: NamedSharding) -> Callable:
    """jit of `fn(params, batch)` run by every device on its own rows of the batch.

    `rows` shards the batch's first dimension (the other dimensions stay whole); `params`
    must be replicated. Each device runs `fn` alone under `jax.shard_map` with no logical
    axis rules (its arrays are its own), so nothing crosses devices: for decoding, a device never
    waits for another inside the loop, and each stops when its own rows are done. On a CPU
    split into one device per core it also runs the small ops of several batches at once."""

    def own_rows(params: Any, batch: jax.Array) -> jax.Array:
        with nn.logical_axis_rules(()):
            return fn(params, batch)

    spec = PartitionSpec(rows.spec[0])
    # The loops carry per-device values only and nothing is reduced: no replication to check.
    mapped = jax.shard_map(
        own_rows, mesh=rows.mesh, in_specs=(PartitionSpec(), spec), out_specs=spec, check_vma=False
    )
    return jax.jit(mapped)
