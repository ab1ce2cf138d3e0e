//! The scheduling policy of one GPU (work in progress).
