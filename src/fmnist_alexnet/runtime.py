"""Device, precision and process-group facts for a run, resolved once."""

from __future__ import annotations

import contextlib
import os
from dataclasses import dataclass
from typing import TYPE_CHECKING

import torch
import torch.distributed as dist

if TYPE_CHECKING:
    from torch._C._distributed_c10d import Store

from fmnist_alexnet.denormals import flush_denormals
from fmnist_alexnet.errors import FmnistError
from fmnist_alexnet.malloc import keep_freed_memory

DEVICES = ("auto", "cpu", "cuda")
PRECISIONS = ("auto", "bf16", "fp32")


def resolve_device(name: str, local_rank: int = 0) -> torch.device:
    if name == "auto":
        name = "cuda" if torch.cuda.is_available() else "cpu"
    if name == "cuda":
        if not torch.cuda.is_available():
            raise FmnistError("--device cuda: no CUDA device is available; use --device cpu")
        return torch.device("cuda", local_rank % torch.cuda.device_count())
    return torch.device("cpu")


BF16_FLAGS = {"avx512_bf16", "amx_bf16", "bf16"}  # x86's two, Arm's one (/proc/cpuinfo)


def cpu_has_native_bf16() -> bool:
    """Whether the CPU itself computes in bfloat16. oneDNN's own check also says yes on an
    AVX-512 CPU without these instructions, where it emulates bf16 at well under float32's
    speed (an Ice Lake Xeon trained 2.5x slower in bf16 than in float32), so the flags the
    kernel lists decide; without /proc/cpuinfo, oneDNN's check."""
    flags = cpu_flags()
    if flags:
        return bool(flags & BF16_FLAGS)
    try:
        return bool(torch.ops.mkldnn._is_mkldnn_bf16_supported())
    except (AttributeError, RuntimeError):
        return False


def resolve_precision(precision: str, device: torch.device) -> str:
    """``auto`` is bf16 autocast on CUDA with bf16 and on CPUs with native bf16, else fp32."""
    if precision != "auto":
        if precision == "bf16" and device.type == "cuda" and not torch.cuda.is_bf16_supported():
            raise FmnistError("--precision bf16: this GPU does not support bfloat16; use fp32")
        return precision
    if device.type == "cuda":
        return "bf16" if torch.cuda.is_bf16_supported() else "fp32"
    return "bf16" if cpu_has_native_bf16() else "fp32"


def autocast(device: torch.device, precision: str) -> contextlib.AbstractContextManager[object]:
    if precision == "bf16":
        return torch.autocast(device.type, dtype=torch.bfloat16)
    return contextlib.nullcontext()


CPUINFO = "/proc/cpuinfo"


def device_name(device: torch.device) -> str:
    """What a person would call the device: the GPU's name, or the CPU model with its family
    and model numbers (one "AMD EPYC" name covers CPUs several times apart in speed), cores
    and threads."""
    if device.type == "cuda":
        return torch.cuda.get_device_name(device)
    cores = f"{os.cpu_count()} cores, {torch.get_num_threads()} threads"
    fields = _cpuinfo()
    if "model name" not in fields:
        return f"cpu ({cores})"
    family = fields.get("cpu family", "?")
    return f"{fields['model name']} (family {family} model {fields.get('model', '?')}, {cores})"


def cpu_flags() -> set[str]:
    """The CPU's feature flags as Linux lists them (x86's ``flags``: ``avx2``,
    ``avx512_vnni``...; Arm's ``Features``); empty where /proc/cpuinfo is not there."""
    fields = _cpuinfo()
    return set(fields.get("flags", fields.get("Features", "")).split())


def _cpuinfo() -> dict[str, str]:
    """The first processor's fields in /proc/cpuinfo; empty where it cannot be read."""
    fields: dict[str, str] = {}
    try:
        with open(CPUINFO, encoding="utf-8") as handle:
            for line in handle:
                if ":" in line:
                    key, value = line.split(":", 1)
                    fields.setdefault(key.strip(), value.strip())
    except OSError:
        return {}
    return fields


def synchronize(device: torch.device) -> None:
    """Wait for the device's queued work, so a wall-clock reading covers it (CUDA only)."""
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def configure_backends(device: torch.device, requested_precision: str = "auto") -> None:
    """An explicit ``--precision fp32`` keeps CUDA's matmuls and convolutions in true
    float32, as the flag promises; otherwise TF32 speeds up what autocast leaves in float32."""
    tf32 = requested_precision != "fp32"
    if device.type == "cpu":
        flush_denormals()  # AdamW's moments turn denormal late in a run
        keep_freed_memory()  # big tensors reuse their pages instead of re-faulting each step
    if device.type == "cuda":
        torch.backends.cudnn.benchmark = True
        torch.backends.cuda.matmul.allow_tf32 = tf32
        torch.backends.cudnn.allow_tf32 = tf32


@dataclass(frozen=True)
class Distributed:
    """This process's place in a torchrun job (rank 0 of 1 when not under torchrun)."""

    rank: int = 0
    world_size: int = 1
    local_rank: int = 0

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    @property
    def enabled(self) -> bool:
        return self.world_size > 1

    def all_reduce_sum(self, tensor: torch.Tensor) -> torch.Tensor:
        if self.enabled:
            dist.all_reduce(tensor, op=dist.ReduceOp.SUM)
        return tensor

    def mean(self, values: list[float]) -> list[float]:
        """Each value averaged over the ranks (float64), so every rank decides alike."""
        total = self.all_reduce_sum(torch.tensor(values, dtype=torch.float64))
        return (total / self.world_size).tolist()

    def barrier(self) -> None:
        if self.enabled:
            dist.barrier()


def init_distributed(device_name: str) -> Distributed:
    """Join the process group torchrun describes in the environment (NCCL on CUDA, else Gloo)."""
    world_size = int(os.environ.get("WORLD_SIZE", "1"))
    if world_size <= 1:
        return Distributed()
    if dist.is_initialized():
        return Distributed(dist.get_rank(), dist.get_world_size(), int(os.environ["LOCAL_RANK"]))
    local_rank = int(os.environ.get("LOCAL_RANK", "0"))
    device = resolve_device(device_name, local_rank)
    if device.type == "cuda":
        torch.cuda.set_device(device)
    backend = "nccl" if device.type == "cuda" else "gloo"
    store = _restart_store()
    if store is None:
        dist.init_process_group(backend=backend)
    else:
        rank = int(os.environ["RANK"])
        dist.init_process_group(backend=backend, store=store, rank=rank, world_size=world_size)
    return Distributed(dist.get_rank(), dist.get_world_size(), local_rank)


def _restart_store() -> Store | None:
    """After an elastic restart (``torchrun --max-restarts``), the group's store under a key
    prefix of that restart; None otherwise (the environment's own). torchrun's agent keeps
    its store across restarts with the old group's keys in it, each rank's Gloo address
    among them: a restarted rank read a killed peer's address and failed to connect."""
    restart = os.environ.get("TORCHELASTIC_RESTART_COUNT", "0")
    if restart == "0" or os.environ.get("TORCHELASTIC_USE_AGENT_STORE") != "True":
        return None
    from torch._C._distributed_c10d import PrefixStore, TCPStore

    agent = TCPStore(os.environ["MASTER_ADDR"], int(os.environ["MASTER_PORT"]), is_master=False)
    return PrefixStore(f"fmnist-alexnet/restart-{restart}", agent)


def shutdown_distributed() -> None:
    if dist.is_initialized():
        dist.destroy_process_group()
