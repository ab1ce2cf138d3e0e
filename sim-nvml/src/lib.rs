//! Simulated NVML (work in progress).
