// Copy bandwidth through the CUDA runtime: pageable and pinned host memory
// to and from the device, and device to device, each checked for content.
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <cuda_runtime.h>

#define CHECK(x) do { cudaError_t e_ = (x); if (e_ != cudaSuccess) { \
    printf("FAIL %s: %s\n", #x, cudaGetErrorName(e_)); return 1; } } while (0)

static float time_copy(void *dst, const void *src, size_t bytes, cudaMemcpyKind kind, int reps) {
    cudaEvent_t a, b;
    cudaEventCreate(&a); cudaEventCreate(&b);
    cudaMemcpy(dst, src, bytes, kind);
    cudaEventRecord(a);
    for (int i = 0; i < reps; i++) cudaMemcpyAsync(dst, src, bytes, kind, 0);
    cudaEventRecord(b);
    cudaEventSynchronize(b);
    float ms = 0;
    cudaEventElapsedTime(&ms, a, b);
    cudaEventDestroy(a); cudaEventDestroy(b);
    return ms / reps;
}

int main() {
    const size_t bytes = 256u << 20;
    const int reps = 10;
    unsigned char *pageable = (unsigned char *)malloc(bytes), *back = (unsigned char *)malloc(bytes);
    unsigned char *pinned, *d1, *d2;
    CHECK(cudaMallocHost(&pinned, bytes));
    CHECK(cudaMalloc(&d1, bytes)); CHECK(cudaMalloc(&d2, bytes));
    for (size_t i = 0; i < bytes; i++) pageable[i] = (unsigned char)(i * 31 + 7);
    memcpy(pinned, pageable, bytes);
    struct { const char *name; void *dst; const void *src; cudaMemcpyKind kind; } runs[] = {
        {"htod_pageable", d1, pageable, cudaMemcpyHostToDevice},
        {"htod_pinned", d1, pinned, cudaMemcpyHostToDevice},
        {"dtod", d2, d1, cudaMemcpyDeviceToDevice},
        {"dtoh_pinned", pinned, d2, cudaMemcpyDeviceToHost},
        {"dtoh_pageable", back, d2, cudaMemcpyDeviceToHost},
    };
    for (auto &r : runs) {
        float ms = time_copy(r.dst, r.src, bytes, r.kind, reps);
        CHECK(cudaGetLastError());
        printf("TIME %s %.1f GB/s\n", r.name, bytes / (ms * 1e6));
    }
    int bad = memcmp(back, pageable, bytes) != 0 || memcmp(pinned, pageable, bytes) != 0;
    printf("bandwidth bytes=%zu content=%s\n", bytes, bad ? "differs" : "same");
    CHECK(cudaFreeHost(pinned)); CHECK(cudaFree(d1)); CHECK(cudaFree(d2));
    printf("%s\n", bad ? "FAIL" : "PASS");
    return bad;
}
