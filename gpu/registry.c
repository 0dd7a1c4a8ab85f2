/* registry.c - the device kinds this build has (device.h): CUDA where the
 * build has it, the simulated GPU always. Physical kinds come first, so
 * whoever walks the table meets real devices before modeled ones. */
#include "device.h"
#include "sim_device.h"
#ifdef MOE_HAVE_CUDA
#include "cuda_device.h"
#endif

static const moe_dev_reg *const registry[] = {
#ifdef MOE_HAVE_CUDA
    &moe_cuda_reg,
#endif
    &moe_sim_reg,
};

size_t moe_dev_registry(const moe_dev_reg *const **out) {
    *out = registry;
    return sizeof registry / sizeof registry[0];
}

const moe_dev_reg *moe_dev_find(moe_device_kind kind) {
    for (size_t i = 0; i < sizeof registry / sizeof registry[0]; i++)
        if (registry[i]->kind == kind) return registry[i];
    return NULL;
}
