// Streams and events through the CUDA runtime: four streams each copy a
// chunk in, scale it and copy it back asynchronously from pinned memory,
// with an event per stream and a cross-stream wait; checked on the host.
#include <cstdio>
#include <cuda_runtime.h>

#define CHECK(x) do { cudaError_t e_ = (x); if (e_ != cudaSuccess) { \
    printf("FAIL %s: %s\n", #x, cudaGetErrorName(e_)); return 1; } } while (0)

__global__ void scale(float *x, float f, int n, int spin) {
    int i = blockIdx.x * blockDim.x + threadIdx.x;
    if (i < n) {
        float v = x[i];
        for (int k = 0; k < spin; k++) v = v * 1.0000001f;  // some work, result kept exact below
        x[i] = x[i] * f + (v - v);
    }
}

int main() {
    const int S = 4, n = 1 << 20;
    float *h, *d;
    CHECK(cudaMallocHost(&h, S * n * sizeof(float)));
    CHECK(cudaMalloc(&d, S * n * sizeof(float)));
    for (int i = 0; i < S * n; i++) h[i] = (float)(i % 4096);
    cudaStream_t st[S];
    cudaEvent_t done[S], t0, t1;
    CHECK(cudaEventCreate(&t0)); CHECK(cudaEventCreate(&t1));
    for (int s = 0; s < S; s++) { CHECK(cudaStreamCreateWithFlags(&st[s], cudaStreamNonBlocking)); CHECK(cudaEventCreateWithFlags(&done[s], cudaEventDisableTiming)); }
    CHECK(cudaEventRecord(t0, st[0]));
    for (int s = 0; s < S; s++) {
        float *hs = h + s * n, *ds = d + s * n;
        CHECK(cudaMemcpyAsync(ds, hs, n * sizeof(float), cudaMemcpyHostToDevice, st[s]));
        scale<<<(n + 255) / 256, 256, 0, st[s]>>>(ds, (float)(s + 2), n, 200);
        CHECK(cudaMemcpyAsync(hs, ds, n * sizeof(float), cudaMemcpyDeviceToHost, st[s]));
        CHECK(cudaEventRecord(done[s], st[s]));
    }
    // Stream 0 finishes only after every other stream did.
    for (int s = 1; s < S; s++) CHECK(cudaStreamWaitEvent(st[0], done[s], 0));
    CHECK(cudaEventRecord(t1, st[0]));
    CHECK(cudaEventSynchronize(t1));
    float ms = 0;
    CHECK(cudaEventElapsedTime(&ms, t0, t1));
    int bad = 0;
    for (int s = 0; s < S; s++)
        for (int i = 0; i < n; i++)
            if (h[s * n + i] != (float)((s * n + i) % 4096) * (float)(s + 2)) bad++;
    for (int s = 0; s < S; s++) { CHECK(cudaStreamQuery(st[s])); CHECK(cudaStreamDestroy(st[s])); CHECK(cudaEventDestroy(done[s])); }
    printf("streams streams=%d n=%d mismatches=%d\n", S, n, bad);
    printf("TIME streams %.3f ms\n", ms);
    CHECK(cudaFreeHost(h)); CHECK(cudaFree(d));
    printf("%s\n", bad ? "FAIL" : "PASS");
    return bad != 0;
}
