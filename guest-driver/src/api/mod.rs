//! The exported CUDA driver API (being written).
