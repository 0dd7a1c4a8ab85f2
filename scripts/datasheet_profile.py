#!/usr/bin/env python3
"""Writes reference machine profiles (source = datasheet) for deployment
machines this project has not measured, from vendor datasheet figures only.

Every figure is a peak from the datasheet, entered once as one sample, so
these profiles are optimistic bounds, not measurements: expert times are
rooflines (max of weight bytes / memory bandwidth and FLOPs / dense tensor
rate), link rates are the PCIe payload rate of the slot. Replace a file
with `moe-profile` output as soon as such a machine is measured.

    python3 scripts/datasheet_profile.py profiles/machines
"""
import os
import sys

# (hidden, inter) of the real models' experts (../shared/models).
SHAPES = [(2048, 1408), (2048, 768), (2048, 1024), (3584, 2560), (4096, 14336)]
MS = [1, 2, 4, 8, 16, 32, 64, 128, 256, 512]
SIZES = [1 << 20, 4 << 20, 16 << 20, 64 << 20]


def pcie_gbps(gt_per_s, lanes):
    """Payload rate of a PCIe 3.0+ link: 128b/130b line coding."""
    return gt_per_s * lanes * 128 / 130 / 8


# Intel Xeon Platinum 8480+ (Sapphire Rapids): 56 cores, 8 channels of
# DDR5-4800 per socket (8 x 4800 MT/s x 8 bytes = 307.2 GB/s), 105 MB L3;
# 4 UPI 2.0 links at 16 GT/s between the sockets (about 4 x 32 GB/s
# per direction; a socket reading the other's memory is also bounded
# by that memory's channels).
#
# Its expert compute rate (bf16, per socket): the AMX peak, 1024 bf16
# FLOP per cycle per core x 56 cores x 2.0 GHz (all-core AMX clock) =
# 114.7 TFLOP/s, times the fraction of its own AMX peak moerun's CPU engine
# reached on the dev machine (1.50 TFLOP/s on 2 cores at m = 512, 2048x1408,
# profiles/machines/dev-2core-xeon-amx.txt, against 2 x 1024 x 2.2 GHz =
# 4.5 TFLOP/s: 0.33). Without it a CPU expert would cost the same at any
# token count, and prefill would be simulated on an infinitely fast CPU.
XEON_8480 = dict(cpu_model="reference: 2 x Intel Xeon Platinum 8480+", packages=2, nodes=2, cores=112,
                 pus=224, l3=2 * 105 << 20, memory=1024 << 30, local_gbps=307.2,
                 remote_gbps=min(4 * 32.0, 307.2), features="avx2 avx512f avx512_bf16 avx512_vnni amx",
                 socket_tflops=1024 * 56 * 2.0e9 / 1e12 * 0.33)

MACHINES = {
    # NVIDIA H100 PCIe 80GB: HBM2e 2.0 TB/s, 756 dense BF16 tensor TFLOPS,
    # PCIe 5.0 x16 (32 GT/s); compute capability 9.0.
    "ref-h100-pcie5-2s-xeon8480.txt": dict(
        host=XEON_8480, gpu=dict(name="NVIDIA H100 PCIe", cc="9.0", total=80 << 30, mem_gbps=2000.0,
                                 tflops=756.0, link=pcie_gbps(32, 16), numa_node=0)),
    # NVIDIA GeForce RTX 4090: GDDR6X 1008 GB/s, 82.6 dense BF16 tensor
    # TFLOPS with FP32 accumulation (what cuBLAS uses), PCIe 4.0 x16
    # (16 GT/s); compute capability 8.9.
    "ref-rtx4090-pcie4-2s-xeon8480.txt": dict(
        host=XEON_8480, gpu=dict(name="NVIDIA GeForce RTX 4090", cc="8.9", total=24 << 30, mem_gbps=1008.0,
                                 tflops=82.6, link=pcie_gbps(16, 16), numa_node=0)),
}


def stat(v):
    return f"n=1 sum={v!r} sumsq={v * v!r}"


def write(path, m):
    h, g = m["host"], m["gpu"]
    out = ["# moerun-profile 1",
           "# A REFERENCE profile from vendor datasheets (scripts/datasheet_profile.py), not",
           "# a measurement: peaks entered as single samples, so every figure is an",
           "# optimistic bound. Use it to plan or simulate (--any-host); replace it",
           "# with moe-profile output from a real machine.", "",
           "[host]", "hostname = reference", f"cpu_model = {h['cpu_model']}", "moerun_version = 0.1.0",
           "onednn_version = 2.6.3", "created = 2026-11-23T00:00:00Z", "source = datasheet",
           f"threads = {h['cores']}", "",
           "[topology]", f"packages = {h['packages']}", f"numa_nodes = {h['nodes']}", f"cores = {h['cores']}",
           f"pus = {h['pus']}", f"l3_bytes = {h['l3']}", f"memory_bytes = {h['memory']}",
           f"features = {h['features']}"]
    for n in range(h["nodes"]):
        out += [f"node{n}.os_index = {n}", f"node{n}.cores = {h['cores'] // h['nodes']}"]
    out += ["", "[bandwidth]"]
    for i in range(h["nodes"]):
        for j in range(h["nodes"]):
            out.append(f"read_gbps.node{i}.from{j} = {stat(h['local_gbps'] if i == j else h['remote_gbps'])}")
    out += ["", "[cpu-expert]"]
    for n in range(h["nodes"]):
        for hd, it in SHAPES:
            weight_bytes = 3 * hd * it * 2  # bf16
            for mm in MS:
                us = max(weight_bytes / (h["local_gbps"] * 1e3), 6.0 * mm * hd * it / (h["socket_tflops"] * 1e6))
                out.append(f"{hd}x{it}.bf16.node{n}.m{mm}.time_us = {stat(us)}")
    out += ["", "[gpu]",
            f"gpu0.name = {g['name']}", f"gpu0.compute_capability = {g['cc']}",
            f"gpu0.total_bytes = {g['total']}", f"gpu0.free_bytes = {g['total']}",
            f"gpu0.numa_node = {g['numa_node']}"]
    for hd, it in SHAPES:
        weight_bytes = 3 * hd * it * 2  # bf16
        for mm in MS:
            us = max(weight_bytes / (g["mem_gbps"] * 1e3), 6.0 * mm * hd * it / (g["tflops"] * 1e6))
            out.append(f"gpu0.{hd}x{it}.bf16.m{mm}.time_us = {stat(us)}")
    out += ["", "[link]"]
    for direction in ("h2d_pinned", "d2h_pinned"):
        for s in SIZES:
            out.append(f"gpu0.{direction}.{s}_bytes.gbps = {stat(round(g['link'], 3))}")
    out += ["", "[tuning]", ""]
    with open(path, "w") as f:
        f.write("\n".join(out))


def main():
    d = sys.argv[1] if len(sys.argv) > 1 else "profiles/machines"
    os.makedirs(d, exist_ok=True)
    for name, m in MACHINES.items():
        write(os.path.join(d, name), m)
        print(os.path.join(d, name))


if __name__ == "__main__":
    main()
