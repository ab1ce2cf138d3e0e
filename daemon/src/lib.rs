//! gpuvisord (work in progress).
