//! Criterion benchmarks for ferrobeam (`cargo bench`), one group per component, named
//! `<component>/<operation>/<size>`. The benchmarks live in `benches/benches/`; this library is
//! empty on purpose and must stay so: benchmarks measure the real crates, never copies of them.
