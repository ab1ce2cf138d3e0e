/* cuBLAS's host side on the guest driver: handle creation, then an SGEMM
 * and an HGEMM (half inputs and output, single-precision compute: the path
 * through cuBLASLt's half-precision heuristics that PyTorch takes). Prints
 * one line of CUDA and cuBLAS status codes:
 *   CUBLAS create=N sgemm=N sgemm_sync=N hgemm=N hgemm_sync=N
 * On the sim engine the kernels cannot run (their images are compressed),
 * so the GEMMs end at their launch; what matters there is that every call
 * returns. Declares what it uses itself: cuBLAS's headers are not needed. */
#include <stdio.h>
#include <stddef.h>

typedef void *cublasHandle_t;
int cudaMalloc(void **p, size_t n);
int cudaDeviceSynchronize(void);
int cudaGetLastError(void);
int cublasCreate_v2(cublasHandle_t *h);
int cublasDestroy_v2(cublasHandle_t h);
int cublasSgemm_v2(cublasHandle_t h, int ta, int tb, int m, int n, int k, const float *alpha, const float *a, int lda,
                   const float *b, int ldb, const float *beta, float *c, int ldc);
int cublasGemmEx(cublasHandle_t h, int ta, int tb, int m, int n, int k, const void *alpha, const void *a, int atype,
                 int lda, const void *b, int btype, int ldb, const void *beta, void *c, int ctype, int ldc,
                 int compute, int algo);

enum { OP_N = 0, R_16F = 2, COMPUTE_32F = 68, GEMM_DEFAULT_TENSOR_OP = 99 };

int main(void) {
    const int n = 256;
    void *a = NULL, *b = NULL, *c = NULL;
    if (cudaMalloc(&a, (size_t)n * n * 4) || cudaMalloc(&b, (size_t)n * n * 4) || cudaMalloc(&c, (size_t)n * n * 4)) {
        printf("CUBLAS cudaMalloc failed\n");
        return 1;
    }
    cublasHandle_t h = NULL;
    int create = cublasCreate_v2(&h);
    const float one = 1, zero = 0;
    int sgemm = -1, sgemm_sync = -1, hgemm = -1, hgemm_sync = -1;
    if (create == 0) {
        sgemm = cublasSgemm_v2(h, OP_N, OP_N, n, n, n, &one, a, n, b, n, &zero, c, n);
        sgemm_sync = cudaDeviceSynchronize();
        cudaGetLastError();
        hgemm = cublasGemmEx(h, OP_N, OP_N, n, n, n, &one, a, R_16F, n, b, R_16F, n, &zero, c, R_16F, n, COMPUTE_32F,
                             GEMM_DEFAULT_TENSOR_OP);
        hgemm_sync = cudaDeviceSynchronize();
        cublasDestroy_v2(h);
    }
    printf("CUBLAS create=%d sgemm=%d sgemm_sync=%d hgemm=%d hgemm_sync=%d\n", create, sgemm, sgemm_sync, hgemm,
           hgemm_sync);
    return 0;
}
