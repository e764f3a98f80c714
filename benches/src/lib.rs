//! Benchmarks live in this package's `benches` targets; the library is empty.
