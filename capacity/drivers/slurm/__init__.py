"""The Slurm driver and the inventory read from Slurm. `SlurmDriver` is exported here because
PROVISIONING_DRIVER=capacity.drivers.slurm.SlurmDriver is the documented setting."""

from .driver import SlurmDriver

__all__ = ["SlurmDriver"]
