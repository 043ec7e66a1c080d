"""Joining the processes of a multi-host run through JAX's own runtime, `jax.distributed`.

Every host runs the same command. With no coordinator given, `jax.distributed.initialize()`
finds the cluster itself (SLURM, Cloud TPU VMs, GKE/Kubernetes, Open MPI); otherwise the
coordinator address, process count and this process's id are given explicitly.
"""

from __future__ import annotations

import re

import jax

from transformer.errors import UserError


class LaunchError(UserError):
    """The multi-host launch flags do not describe a valid set of processes."""


def initialize(coordinator_address: str, num_processes: int, process_id: int) -> None:
    """Connects this process to the others; afterwards jax.devices() lists every host's
    devices and jax.process_index() is this host's place among them.

    coordinator_address "auto": cluster auto-detection; "" (with num_processes 1): a single
    process, nothing to join; "host:port": explicit, with num_processes and process_id.
    """
    if num_processes < 1:
        raise LaunchError(f"--num_processes={num_processes} must be at least 1.")
    if coordinator_address == "auto":
        try:
            jax.distributed.initialize()
        except ValueError as e:  # JAX found no cluster to take the missing settings from.
            raise LaunchError(
                f"--coordinator_address=auto found no cluster to join (JAX: {e}) It detects "
                "SLURM, Cloud TPU VMs, GKE/Kubernetes and Open MPI; elsewhere give host:port "
                "of process 0 with --num_processes and --process_id, or leave it empty for "
                "one process."
            ) from None
    elif coordinator_address:
        if not re.fullmatch(r".+:\d+", coordinator_address):
            raise LaunchError(
                f"--coordinator_address={coordinator_address} must be host:port of process 0 "
                "(or 'auto' to detect the cluster)."
            )
        if not 0 <= process_id < num_processes:
            raise LaunchError(
                f"--process_id={process_id} must be in [0, --num_processes={num_processes})."
            )
        jax.distributed.initialize(coordinator_address, num_processes, process_id)
    elif num_processes != 1:
        raise LaunchError(
            f"--num_processes={num_processes} needs --coordinator_address "
            "(host:port of process 0, or 'auto' to detect the cluster)."
        )
