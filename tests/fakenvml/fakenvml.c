/*
 * A fake libnvidia-ml.so.1 for gpuledger's tests.
 *
 * It exports the NVML entry points that the real `pynvml` (nvidia-ml-py) calls for
 * gpuledger's collector, with the signatures and struct layouts of nvml.h, so the
 * tests exercise the real bindings end to end without a GPU. Its state comes from a
 * small text file that the test writes (see tests/fakenvml/__init__.py for the
 * format); the file is re-read when `fakenvml_reload()` is called, on nvmlInit, and
 * when its modification time changes (checked at most every 100 ms, so a recorder
 * running in a subprocess sees changes the test makes mid-run).
 *
 * Only what the collector needs is modelled, but each call follows NVML's documented
 * protocol: size queries with NULL buffers, INSUFFICIENT_SIZE, NOT_FOUND when a
 * sampling buffer holds nothing newer than the last-seen timestamp, NOT_SUPPORTED for
 * utilisation on MIG devices and on GPUs in MIG mode, GPU_IS_LOST for a lost GPU.
 */

#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <sys/time.h>
#include <time.h>

typedef int nvmlReturn_t;
enum {
    NVML_SUCCESS = 0,
    NVML_ERROR_UNINITIALIZED = 1,
    NVML_ERROR_INVALID_ARGUMENT = 2,
    NVML_ERROR_NOT_SUPPORTED = 3,
    NVML_ERROR_NOT_FOUND = 6,
    NVML_ERROR_INSUFFICIENT_SIZE = 7,
    NVML_ERROR_DRIVER_NOT_LOADED = 9,
    NVML_ERROR_GPU_IS_LOST = 15,
    NVML_ERROR_UNKNOWN = 999,
};

#define NVML_VALUE_TYPE_UNSIGNED_INT 1
#define NVML_GPU_UTILIZATION_SAMPLES 1

typedef struct { unsigned long long total, free, used; } nvmlMemory_t;
typedef struct { unsigned int version; unsigned long long total, reserved, free, used; } nvmlMemory_v2_t;
typedef struct { unsigned int gpu, memory; } nvmlUtilization_t;
typedef union {
    double dVal; unsigned int uiVal; unsigned long ulVal; unsigned long long ullVal;
    long long sllVal; int siVal; unsigned short usVal;
} nvmlValue_t;
typedef struct { unsigned long long timeStamp; nvmlValue_t sampleValue; } nvmlSample_t;
typedef struct {
    unsigned int pid; unsigned long long usedGpuMemory; unsigned int gpuInstanceId, computeInstanceId;
} nvmlProcessInfo_t; /* v2 == v3 layout */
typedef struct {
    unsigned int pid; unsigned long long timeStamp; unsigned int smUtil, memUtil, encUtil, decUtil;
} nvmlProcessUtilizationSample_t;

#define MAX_GPUS 16
#define MAX_MIGS 8
#define MAX_SAMPLES 128
#define MAX_PROCS 32
#define MAX_ERRS 64
#define STR 96

typedef struct { unsigned int pid; unsigned long long mem; int sm; int exited; } proc_t; /* exited: in utilisation samples only */
typedef struct { unsigned long long ts; unsigned int val; } sample_t;

typedef struct device {
    int present, is_mig, slot, mig_slot;
    struct device *parent;
    char uuid[STR], name[STR];
    unsigned long long mem_total, mem_used;
    long long power_mw;          /* < 0: NOT_SUPPORTED */
    int util;                    /* < 0: NOT_SUPPORTED */
    int mig_capable, mig_mode, max_mig, lost, proc_util;
    long long sample_period_us;  /* synthetic utilisation samples at this period */
    int nsamples; sample_t samples[MAX_SAMPLES];
    int nprocs; proc_t procs[MAX_PROCS];
} device_t;

typedef struct { device_t *dev; char fn[64]; int code; int times; } err_t;

static device_t gpus[MAX_GPUS];
static device_t migs[MAX_GPUS][MAX_MIGS];
static err_t errs[MAX_ERRS];
static int nerrs;
static int init_fail_code, init_fail_times;
static long long frozen_clock_us;
static unsigned long long calls;
static char state_path[4096];
static time_t state_mtime; static long state_mtime_ns; static off_t state_size;
static long long last_check_ms;

/* --------------------------------------------------------------- state file */

static void reset(void) {
    memset(gpus, 0, sizeof gpus);
    memset(migs, 0, sizeof migs);
    nerrs = 0; init_fail_code = 0; init_fail_times = 0; frozen_clock_us = 0;
    for (int g = 0; g < MAX_GPUS; g++) {
        gpus[g].slot = g;
        for (int m = 0; m < MAX_MIGS; m++) { migs[g][m].slot = g; migs[g][m].mig_slot = m; migs[g][m].is_mig = 1; migs[g][m].parent = &gpus[g]; }
    }
}

static device_t *device_ref(const char *ref) {
    int g = -1, m = -1;
    if (sscanf(ref, "%d.%d", &g, &m) < 1 || g < 0 || g >= MAX_GPUS) return NULL;
    if (m >= MAX_MIGS) return NULL;
    return m >= 0 ? &migs[g][m] : &gpus[g];
}

/* key=value pairs; `name=` takes the rest of the line */
static void apply_pairs(device_t *d, char *rest) {
    char *name = strstr(rest, "name=");
    if (name) { snprintf(d->name, STR, "%s", name + 5); *name = 0; }
    for (char *tok = strtok(rest, " \t"); tok; tok = strtok(NULL, " \t")) {
        char *eq = strchr(tok, '='); if (!eq) continue; *eq = 0; const char *v = eq + 1;
        if (!strcmp(tok, "uuid")) snprintf(d->uuid, STR, "%s", v);
        else if (!strcmp(tok, "mem_total")) d->mem_total = strtoull(v, NULL, 10);
        else if (!strcmp(tok, "mem_used")) d->mem_used = strtoull(v, NULL, 10);
        else if (!strcmp(tok, "power_mw")) d->power_mw = strtoll(v, NULL, 10);
        else if (!strcmp(tok, "util")) d->util = atoi(v);
        else if (!strcmp(tok, "mig_capable")) d->mig_capable = atoi(v);
        else if (!strcmp(tok, "mig")) d->mig_mode = atoi(v);
        else if (!strcmp(tok, "max_mig")) d->max_mig = atoi(v);
        else if (!strcmp(tok, "lost")) d->lost = atoi(v);
        else if (!strcmp(tok, "proc_util")) d->proc_util = atoi(v);
        else if (!strcmp(tok, "sample_period_us")) d->sample_period_us = strtoll(v, NULL, 10);
    }
}

static void load_state(void) {
    reset();
    if (!state_path[0]) return;
    FILE *f = fopen(state_path, "r");
    if (!f) return;
    struct stat st;
    if (fstat(fileno(f), &st) == 0) { state_mtime = st.st_mtim.tv_sec; state_mtime_ns = st.st_mtim.tv_nsec; state_size = st.st_size; }
    char line[1024];
    while (fgets(line, sizeof line, f)) {
        line[strcspn(line, "\r\n")] = 0;
        char cmd[32], ref[32]; int off = 0;
        if (sscanf(line, "%31s %n", cmd, &off) < 1 || cmd[0] == '#') continue;
        char *rest = line + off;
        if (!strcmp(cmd, "init_fail")) { sscanf(rest, "%d %d", &init_fail_code, &init_fail_times); continue; }
        if (!strcmp(cmd, "clock")) { frozen_clock_us = strtoll(rest, NULL, 10); continue; }
        if (sscanf(rest, "%31s %n", ref, &off) < 1) continue;
        device_t *d = device_ref(ref);
        if (!d) continue;
        rest += off;
        if (!strcmp(cmd, "gpu") || !strcmp(cmd, "mig")) {
            d->present = 1; d->power_mw = d->is_mig ? -1 : 0; d->util = d->is_mig ? -1 : 0;
            d->proc_util = !d->is_mig; d->sample_period_us = 166667;
            apply_pairs(d, rest);
        } else if (!strcmp(cmd, "sample") && d->nsamples < MAX_SAMPLES) {
            sscanf(rest, "%llu %u", &d->samples[d->nsamples].ts, &d->samples[d->nsamples].val);
            d->nsamples++;
        } else if (!strcmp(cmd, "proc") && d->nprocs < MAX_PROCS) {
            proc_t *p = &d->procs[d->nprocs++];
            p->sm = -1;
            sscanf(rest, "%u %llu %d %d", &p->pid, &p->mem, &p->sm, &p->exited);
        } else if (!strcmp(cmd, "err") && nerrs < MAX_ERRS) {
            err_t *e = &errs[nerrs++];
            e->dev = d; e->times = -1;
            sscanf(rest, "%63s %d %d", e->fn, &e->code, &e->times);
        }
    }
    fclose(f);
}

static long long mono_ms(void) {
    struct timespec ts; clock_gettime(CLOCK_MONOTONIC, &ts);
    return (long long)ts.tv_sec * 1000 + ts.tv_nsec / 1000000;
}

/* Re-read the state file when it changed; cheap enough to run on every call. */
static void maybe_reload(void) {
    calls++;
    if (!state_path[0]) return;
    long long now = mono_ms();
    if (now - last_check_ms < 100) return;
    last_check_ms = now;
    struct stat st;
    if (stat(state_path, &st) != 0) return;
    if (st.st_mtim.tv_sec != state_mtime || st.st_mtim.tv_nsec != state_mtime_ns || st.st_size != state_size) load_state();
}

static unsigned long long now_us(void) {
    if (frozen_clock_us) return (unsigned long long)frozen_clock_us;
    struct timeval tv; gettimeofday(&tv, NULL);
    return (unsigned long long)tv.tv_sec * 1000000ULL + tv.tv_usec;
}

/* An error injected for (device, function): `times` < 0 means every call. */
static int injected(device_t *d, const char *fn) {
    for (int i = 0; i < nerrs; i++) {
        err_t *e = &errs[i];
        if (e->dev == d && e->times != 0 && !strcmp(e->fn, fn)) {
            if (e->times > 0) e->times--;
            return e->code;
        }
    }
    return 0;
}

static int initialized, loaded;

#define ENTER(dev, fn) \
    maybe_reload(); \
    if (!initialized) return NVML_ERROR_UNINITIALIZED; \
    device_t *d = (device_t *)(dev); \
    if (!d) return NVML_ERROR_INVALID_ARGUMENT; \
    if (!d->present) return NVML_ERROR_NOT_FOUND; \
    if (d->lost || (d->parent && d->parent->lost)) return NVML_ERROR_GPU_IS_LOST; \
    { int _e = injected(d, fn); if (_e) return _e; }

/* ----------------------------------------------------------- test controls */

void fakenvml_set_state_path(const char *path) { snprintf(state_path, sizeof state_path, "%s", path ? path : ""); loaded = 1; load_state(); }
void fakenvml_reload(void) { load_state(); }
void fakenvml_set_clock(long long us) { frozen_clock_us = us; }
unsigned long long fakenvml_calls(void) { return calls; }

/* ------------------------------------------------------------------- NVML */

static void init_state_path(void) {
    if (!state_path[0]) {
        const char *env = getenv("FAKE_NVML_STATE");
        if (env) snprintf(state_path, sizeof state_path, "%s", env);
    }
}

nvmlReturn_t nvmlInitWithFlags(unsigned int flags) {
    (void)flags;
    init_state_path();
    if (!loaded) { loaded = 1; load_state(); }
    else { last_check_ms = 0; maybe_reload(); }
    calls++;
    if (init_fail_code && init_fail_times != 0) {
        if (init_fail_times > 0) init_fail_times--;
        return init_fail_code;
    }
    initialized++;
    return NVML_SUCCESS;
}
nvmlReturn_t nvmlInit_v2(void) { return nvmlInitWithFlags(0); }
nvmlReturn_t nvmlInit(void) { return nvmlInitWithFlags(0); }

nvmlReturn_t nvmlShutdown(void) {
    calls++;
    if (!initialized) return NVML_ERROR_UNINITIALIZED;
    initialized--;
    return NVML_SUCCESS;
}

const char *nvmlErrorString(nvmlReturn_t r) {
    switch (r) {
    case NVML_SUCCESS: return "Success";
    case NVML_ERROR_UNINITIALIZED: return "Uninitialized";
    case NVML_ERROR_INVALID_ARGUMENT: return "Invalid Argument";
    case NVML_ERROR_NOT_SUPPORTED: return "Not Supported";
    case NVML_ERROR_NOT_FOUND: return "Not Found";
    case NVML_ERROR_INSUFFICIENT_SIZE: return "Insufficient Size";
    case NVML_ERROR_DRIVER_NOT_LOADED: return "Driver Not Loaded";
    case NVML_ERROR_GPU_IS_LOST: return "GPU is lost";
    default: return "Unknown Error";
    }
}

nvmlReturn_t nvmlDeviceGetCount_v2(unsigned int *count) {
    maybe_reload();
    if (!initialized) return NVML_ERROR_UNINITIALIZED;
    unsigned int n = 0;
    for (int g = 0; g < MAX_GPUS; g++) if (gpus[g].present) n = g + 1;
    *count = n;
    return NVML_SUCCESS;
}

nvmlReturn_t nvmlDeviceGetHandleByIndex_v2(unsigned int index, device_t **out) {
    maybe_reload();
    if (!initialized) return NVML_ERROR_UNINITIALIZED;
    if (index >= MAX_GPUS || !gpus[index].present) return NVML_ERROR_INVALID_ARGUMENT;
    if (gpus[index].lost) return NVML_ERROR_GPU_IS_LOST;
    { int e = injected(&gpus[index], "nvmlDeviceGetHandleByIndex_v2"); if (e) return e; }
    *out = &gpus[index];
    return NVML_SUCCESS;
}

nvmlReturn_t nvmlDeviceGetName(device_t *dev, char *name, unsigned int length) {
    ENTER(dev, "nvmlDeviceGetName");
    if (strlen(d->name) + 1 > length) return NVML_ERROR_INSUFFICIENT_SIZE;
    strcpy(name, d->name);
    return NVML_SUCCESS;
}

nvmlReturn_t nvmlDeviceGetUUID(device_t *dev, char *uuid, unsigned int length) {
    ENTER(dev, "nvmlDeviceGetUUID");
    if (strlen(d->uuid) + 1 > length) return NVML_ERROR_INSUFFICIENT_SIZE;
    strcpy(uuid, d->uuid);
    return NVML_SUCCESS;
}

nvmlReturn_t nvmlDeviceGetIndex(device_t *dev, unsigned int *index) {
    ENTER(dev, "nvmlDeviceGetIndex");
    if (d->is_mig) return NVML_ERROR_NOT_SUPPORTED;
    *index = d->slot;
    return NVML_SUCCESS;
}

nvmlReturn_t nvmlDeviceGetMemoryInfo(device_t *dev, nvmlMemory_t *mem) {
    ENTER(dev, "nvmlDeviceGetMemoryInfo");
    mem->total = d->mem_total; mem->used = d->mem_used;
    mem->free = d->mem_total > d->mem_used ? d->mem_total - d->mem_used : 0;
    return NVML_SUCCESS;
}

nvmlReturn_t nvmlDeviceGetMemoryInfo_v2(device_t *dev, nvmlMemory_v2_t *mem) {
    ENTER(dev, "nvmlDeviceGetMemoryInfo_v2");
    mem->total = d->mem_total; mem->used = d->mem_used; mem->reserved = 0;
    mem->free = d->mem_total > d->mem_used ? d->mem_total - d->mem_used : 0;
    return NVML_SUCCESS;
}

static int util_supported(device_t *d) { return !d->is_mig && !d->mig_mode && d->util >= 0; }

nvmlReturn_t nvmlDeviceGetUtilizationRates(device_t *dev, nvmlUtilization_t *u) {
    ENTER(dev, "nvmlDeviceGetUtilizationRates");
    if (!util_supported(d)) return NVML_ERROR_NOT_SUPPORTED;
    u->gpu = d->nsamples ? d->samples[d->nsamples - 1].val : (unsigned)d->util;
    u->memory = 0;
    return NVML_SUCCESS;
}

/* The samples newer than `last`: the explicit ones, or synthetic ones every
 * sample_period_us over the last 10 s of the clock, valued `util`. */
static int collect_samples(device_t *d, unsigned long long last, sample_t *out, int cap) {
    int n = 0;
    if (d->nsamples) {
        for (int i = 0; i < d->nsamples; i++)
            if (d->samples[i].ts > last) { if (out && n < cap) out[n] = d->samples[i]; n++; }
        return n;
    }
    unsigned long long now = now_us(), period = d->sample_period_us > 0 ? d->sample_period_us : 166667;
    unsigned long long newest = now - now % period, oldest = now > 10000000ULL ? now - 10000000ULL : 0;
    for (unsigned long long t = newest; t > oldest && t > last; t -= period) {
        if (out && n < cap) { out[n].ts = t; out[n].val = (unsigned)d->util; }
        n++;
        if (t < period) break;
    }
    return n;
}

nvmlReturn_t nvmlDeviceGetSamples(device_t *dev, int type, unsigned long long last,
                                  int *valueType, unsigned int *count, nvmlSample_t *samples) {
    ENTER(dev, "nvmlDeviceGetSamples");
    if (type != NVML_GPU_UTILIZATION_SAMPLES) return NVML_ERROR_NOT_SUPPORTED;
    if (!util_supported(d)) return NVML_ERROR_NOT_SUPPORTED;
    sample_t buf[MAX_SAMPLES];
    int n = collect_samples(d, last, buf, MAX_SAMPLES);
    if (n > MAX_SAMPLES) n = MAX_SAMPLES;
    if (n == 0) return NVML_ERROR_NOT_FOUND;
    *valueType = NVML_VALUE_TYPE_UNSIGNED_INT;
    if (!samples) { *count = n; return NVML_SUCCESS; }
    if (*count < (unsigned)n) n = *count;
    for (int i = 0; i < n; i++) { samples[i].timeStamp = buf[i].ts; samples[i].sampleValue.ullVal = 0; samples[i].sampleValue.uiVal = buf[i].val; }
    *count = n;
    return NVML_SUCCESS;
}

nvmlReturn_t nvmlDeviceGetPowerUsage(device_t *dev, unsigned int *mw) {
    ENTER(dev, "nvmlDeviceGetPowerUsage");
    if (d->power_mw < 0) return NVML_ERROR_NOT_SUPPORTED;
    *mw = (unsigned int)d->power_mw;
    return NVML_SUCCESS;
}

static unsigned int live(const device_t *d) {
    unsigned int n = 0;
    for (int i = 0; i < d->nprocs; i++) n += !d->procs[i].exited;
    return n;
}

static nvmlReturn_t running_processes(device_t *d, unsigned int *count, nvmlProcessInfo_t *infos) {
    unsigned int n = live(d);
    /* a GPU in MIG mode lists the processes of all its MIG devices */
    if (!d->is_mig && d->mig_mode)
        for (int m = 0; m < MAX_MIGS; m++) if (migs[d->slot][m].present) n += live(&migs[d->slot][m]);
    if (!infos || *count < n) { unsigned int had = infos ? *count : 0; *count = n; return (n == 0 && !had) ? NVML_SUCCESS : NVML_ERROR_INSUFFICIENT_SIZE; }
    unsigned int k = 0;
    for (int i = 0; i < d->nprocs; i++) {
        if (d->procs[i].exited) continue;
        infos[k].pid = d->procs[i].pid; infos[k].usedGpuMemory = d->procs[i].mem;
        infos[k].gpuInstanceId = d->is_mig ? (unsigned)d->mig_slot : 0xFFFFFFFFu; infos[k].computeInstanceId = d->is_mig ? 0u : 0xFFFFFFFFu;
        k++;
    }
    if (!d->is_mig && d->mig_mode)
        for (int m = 0; m < MAX_MIGS; m++) {
            device_t *x = &migs[d->slot][m];
            if (!x->present) continue;
            for (int i = 0; i < x->nprocs; i++) {
                if (x->procs[i].exited) continue;
                infos[k].pid = x->procs[i].pid; infos[k].usedGpuMemory = x->procs[i].mem;
                infos[k].gpuInstanceId = (unsigned)m; infos[k].computeInstanceId = 0;
                k++;
            }
        }
    *count = n;
    return NVML_SUCCESS;
}

nvmlReturn_t nvmlDeviceGetComputeRunningProcesses_v3(device_t *dev, unsigned int *count, nvmlProcessInfo_t *infos) {
    ENTER(dev, "nvmlDeviceGetComputeRunningProcesses_v3");
    return running_processes(d, count, infos);
}
nvmlReturn_t nvmlDeviceGetComputeRunningProcesses_v2(device_t *dev, unsigned int *count, nvmlProcessInfo_t *infos) {
    ENTER(dev, "nvmlDeviceGetComputeRunningProcesses_v2");
    return running_processes(d, count, infos);
}

nvmlReturn_t nvmlDeviceGetProcessUtilization(device_t *dev, nvmlProcessUtilizationSample_t *out,
                                             unsigned int *count, unsigned long long last) {
    ENTER(dev, "nvmlDeviceGetProcessUtilization");
    if (d->is_mig || d->mig_mode || !d->proc_util) return NVML_ERROR_NOT_SUPPORTED;
    unsigned long long ts = now_us();
    unsigned int n = 0;
    for (int i = 0; i < d->nprocs; i++) if (d->procs[i].sm >= 0 && ts > last) n++;
    if (n == 0) return NVML_ERROR_NOT_FOUND;
    if (!out || *count < n) { *count = n; return NVML_ERROR_INSUFFICIENT_SIZE; }
    unsigned int k = 0;
    for (int i = 0; i < d->nprocs; i++) {
        if (d->procs[i].sm < 0) continue;
        out[k].pid = d->procs[i].pid; out[k].timeStamp = ts; out[k].smUtil = d->procs[i].sm;
        out[k].memUtil = 0; out[k].encUtil = 0; out[k].decUtil = 0; k++;
    }
    *count = n;
    return NVML_SUCCESS;
}

nvmlReturn_t nvmlDeviceGetMigMode(device_t *dev, unsigned int *current, unsigned int *pending) {
    ENTER(dev, "nvmlDeviceGetMigMode");
    if (d->is_mig || !d->mig_capable) return NVML_ERROR_NOT_SUPPORTED;
    *current = d->mig_mode; *pending = d->mig_mode;
    return NVML_SUCCESS;
}

nvmlReturn_t nvmlDeviceGetMaxMigDeviceCount(device_t *dev, unsigned int *count) {
    ENTER(dev, "nvmlDeviceGetMaxMigDeviceCount");
    if (d->is_mig || !d->mig_capable) return NVML_ERROR_NOT_SUPPORTED;
    *count = d->max_mig ? d->max_mig : 7;
    return NVML_SUCCESS;
}

nvmlReturn_t nvmlDeviceGetMigDeviceHandleByIndex(device_t *dev, unsigned int index, device_t **out) {
    ENTER(dev, "nvmlDeviceGetMigDeviceHandleByIndex");
    if (d->is_mig || !d->mig_capable) return NVML_ERROR_NOT_SUPPORTED;
    if (!d->mig_mode) return NVML_ERROR_INVALID_ARGUMENT;
    if (index >= MAX_MIGS || !migs[d->slot][index].present) return NVML_ERROR_NOT_FOUND;
    *out = &migs[d->slot][index];
    return NVML_SUCCESS;
}

nvmlReturn_t nvmlDeviceGetDeviceHandleFromMigDeviceHandle(device_t *dev, device_t **out) {
    ENTER(dev, "nvmlDeviceGetDeviceHandleFromMigDeviceHandle");
    if (!d->is_mig) return NVML_ERROR_INVALID_ARGUMENT;
    *out = d->parent;
    return NVML_SUCCESS;
}

nvmlReturn_t nvmlDeviceIsMigDeviceHandle(device_t *dev, unsigned int *is_mig) {
    ENTER(dev, "nvmlDeviceIsMigDeviceHandle");
    *is_mig = d->is_mig;
    return NVML_SUCCESS;
}
