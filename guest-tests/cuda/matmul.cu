// Tiled single-precision matrix multiply through the CUDA runtime, with
// shared memory and events, checked against the CPU on sampled entries.
#include <cmath>
#include <cstdio>
#include <cstdlib>
#include <cuda_runtime.h>

#define CHECK(x) do { cudaError_t e_ = (x); if (e_ != cudaSuccess) { \
    printf("FAIL %s: %s\n", #x, cudaGetErrorName(e_)); return 1; } } while (0)
#define TILE 32

__global__ void matmul(const float *A, const float *B, float *C, int n) {
    __shared__ float As[TILE][TILE], Bs[TILE][TILE];
    int row = blockIdx.y * TILE + threadIdx.y, col = blockIdx.x * TILE + threadIdx.x;
    float acc = 0.f;
    for (int t = 0; t < n / TILE; t++) {
        As[threadIdx.y][threadIdx.x] = A[row * n + t * TILE + threadIdx.x];
        Bs[threadIdx.y][threadIdx.x] = B[(t * TILE + threadIdx.y) * n + col];
        __syncthreads();
        for (int k = 0; k < TILE; k++) acc += As[threadIdx.y][k] * Bs[k][threadIdx.x];
        __syncthreads();
    }
    C[row * n + col] = acc;
}

int main() {
    const int n = 1024;
    size_t bytes = (size_t)n * n * sizeof(float);
    float *A = (float *)malloc(bytes), *B = (float *)malloc(bytes), *C = (float *)malloc(bytes);
    for (int i = 0; i < n * n; i++) { A[i] = (float)((i * 7) % 13) / 13.f; B[i] = (float)((i * 3) % 11) / 11.f; }
    float *dA, *dB, *dC;
    CHECK(cudaMalloc(&dA, bytes)); CHECK(cudaMalloc(&dB, bytes)); CHECK(cudaMalloc(&dC, bytes));
    CHECK(cudaMemcpy(dA, A, bytes, cudaMemcpyHostToDevice));
    CHECK(cudaMemcpy(dB, B, bytes, cudaMemcpyHostToDevice));
    cudaEvent_t start, stop;
    CHECK(cudaEventCreate(&start)); CHECK(cudaEventCreate(&stop));
    dim3 block(TILE, TILE), grid(n / TILE, n / TILE);
    matmul<<<grid, block>>>(dA, dB, dC, n);  // warm-up
    CHECK(cudaEventRecord(start));
    const int reps = 10;
    for (int r = 0; r < reps; r++) matmul<<<grid, block>>>(dA, dB, dC, n);
    CHECK(cudaEventRecord(stop));
    CHECK(cudaEventSynchronize(stop));
    float ms = 0;
    CHECK(cudaEventElapsedTime(&ms, start, stop));
    CHECK(cudaMemcpy(C, dC, bytes, cudaMemcpyDeviceToHost));
    int bad = 0;
    for (int s = 0; s < 4096; s++) {
        int i = (s * 2654435761u) % n, j = (s * 40503u + 17) % n;
        double ref = 0;
        for (int k = 0; k < n; k++) ref += (double)A[i * n + k] * B[k * n + j];
        if (fabs(ref - C[i * n + j]) > 1e-3 * fabs(ref) + 1e-3) bad++;
    }
    printf("matmul n=%d sampled=4096 mismatches=%d\n", n, bad);
    printf("TIME matmul %.3f ms per product, %.1f GFLOP/s\n", ms / reps, 2.0 * n * n * n / (ms / reps * 1e6));
    printf("%s\n", bad ? "FAIL" : "PASS");
    return bad != 0;
}
