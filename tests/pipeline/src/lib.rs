//! Whole-pipeline tests live in `tests/`; this library is empty. Run them after
//! `cargo build --workspace --bins` (as `make test` does): they start the built binaries.
